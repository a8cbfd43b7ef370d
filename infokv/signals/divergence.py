"""How far one next-token distribution is from a reference one, position by position.

For reference log-probabilities log p_t and compared log-probabilities log q_t over the vocabulary at
position t, and the token a_t that followed there:

    KL(p_t ‖ q_t) = Σ_v p_t(v) (log p_t(v) − log q_t(v))       (terms with p_t(v) = 0 count 0)
    agree_t       = [argmax_v q_t(v) = argmax_v p_t(v)]
    nll_t         = − log q_t(a_t)

Inputs are log-probabilities (``log_softmax`` of fp32 logits), so nothing here exponentiates an
unnormalised logit; the caller chooses how many positions to pass at once.
"""

from __future__ import annotations

import torch


def kl_divergence(reference_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension of (..., V) log-probabilities; (...,). A vocabulary entry the
    reference gives probability 0 adds nothing, even where ``log_probs`` is −inf there too."""
    probabilities = reference_log_probs.exp()
    terms = probabilities * (reference_log_probs - log_probs)
    return torch.where(probabilities > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def position_divergence(
    reference_log_probs: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KL(p_t ‖ q_t), argmax agreement and −log q_t(a_t) of (..., V) log-probabilities and (...) targets,
    each shaped (...)."""
    kl = kl_divergence(reference_log_probs, log_probs)
    agree = log_probs.argmax(dim=-1) == reference_log_probs.argmax(dim=-1)
    nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1)
    return kl, agree, nll
