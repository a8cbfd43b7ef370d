"""Expected Attention (Devoto et al. 2025): attention that future queries are expected to pay.

Pre-RoPE prompt queries of query head g, except the first ``sink`` tokens' queries, have mean μ and
covariance Σ (population, 1/n). Rotating them by RoPE averaged over the next n positions,
R̄ = (1/n) Σ_{p=T}^{T+n−1} R(p), gives μ̄ = R̄ μ, Σ̄ = R̄ Σ R̄ᵀ, and for a key k_i (post-RoPE, as
cached) the expected attention logit under a Gaussian query

    z_i^(g) = k_i · μ̄ / √d + ½ k_iᵀ Σ̄ k_i / d,

    S_i^(h) = mean_{g∈G(h)} softmax_{i ≥ sink}(z^(g))_i · ‖v_i‖      (‖v_i‖ when ``use_vnorm``),

the softmax running over the keys after the sinks; the sinks themselves are always kept.

Defaults are kvpress 0.5.5's ``ExpectedAttentionPress``: ``n_future`` 512 (``n_future_positions``),
``sink`` 4 (``n_sink``: left out of the query statistics and of the softmax, then kept), covariance
and ‖v‖ on (``use_covariance``, ``use_vnorm``, with its ``epsilon`` 0), mean over the GQA group, no
window, and the kept count ⌊T·b⌋ of :mod:`infokv.methods.budget`. While decoding, the statistics are those of
the generated queries (the prompt's sinks are not among them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv import signals
from infokv.methods.base import Method, Requirement
from infokv.methods.selection import forced_mask


@dataclass(frozen=True)
class ExpectedAttention(Method):
    name = "expected_attention"
    sink: int = 4
    window: int = 0
    n_future: int = 512
    use_covariance: bool = True
    use_vnorm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_future < 1:
            raise ValueError(f"expected_attention: n_future={self.n_future} must be >= 1")

    def requirements(self) -> set[Requirement]:
        return {(signals.QUERY_STATISTICS, self.sink)}

    def score(self, view) -> torch.Tensor:
        mean, covariance = view.query_statistics(self.sink)
        rotation = view.future_rotation(self.n_future)
        mean = torch.einsum("bde,bhe->bhd", rotation, mean)
        keys = view.keys.float()
        batch, kv_heads, length, dim = keys.shape
        groups = mean.shape[1] // kv_heads
        grouped_mean = mean.reshape(batch, kv_heads, groups, dim)
        # (B, H_kv, T, d) @ (B, H_kv, d, g): keys are shared by the g query heads, never copied per head.
        logits = torch.matmul(keys, grouped_mean.transpose(-1, -2)).transpose(-1, -2) * view.scaling
        if self.use_covariance:
            covariance = torch.einsum("bde,bhef,bgf->bhdg", rotation, covariance, rotation)
            grouped_cov = covariance.reshape(batch, kv_heads, groups, dim, dim)
            # kᵀ Σ̄ k as (k Σ̄) · k, one query head at a time: a (B, H_kv, T, d) temporary, like the keys.
            quadratic = torch.stack(
                [(torch.matmul(keys, grouped_cov[:, :, g]) * keys).sum(dim=-1) for g in range(groups)], dim=2
            )
            logits = logits + 0.5 * quadratic * view.scaling**2
        scored = view.valid & ~forced_mask(view.valid, self.sink, 0)
        logits = logits.masked_fill(~scored[:, None, None, :], float("-inf"))
        scores = logits.softmax(dim=-1).mean(dim=2)
        if self.use_vnorm:
            scores = scores * view.values.float().norm(dim=-1)
        return scores
