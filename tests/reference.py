"""Straightforward float64 references for every signal, computed with eager attention weights.

These materialise (T × T) attention and (T × vocab) logits on purpose: they are the slow, obvious
definitions the chunked, blockwise implementations are checked against.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


class Reference:
    """Every signal of one unpadded prompt (1, T), in float64."""

    def __init__(self, model, input_ids: torch.Tensor) -> None:
        reference = copy.deepcopy(model).double()
        reference.set_attn_implementation("eager")
        layers = reference.model.layers
        outputs: dict[int, torch.Tensor] = {}
        queries: dict[int, torch.Tensor] = {}
        handles = [
            layer.register_forward_hook(
                lambda m, a, o, i=i: outputs.__setitem__(i, o[0] if isinstance(o, tuple) else o)
            )
            for i, layer in enumerate(layers)
        ]
        handles += [
            layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: queries.__setitem__(i, o))
            for i, layer in enumerate(layers)
        ]
        with torch.no_grad():
            result = reference(input_ids, output_attentions=True)
        for handle in handles:
            handle.remove()
        self.model = reference
        self.attentions = [attention[0] for attention in result.attentions]  # (H_q, T, T)
        self.logits = result.logits[0]  # (T, V)
        self.layer_outputs = [outputs[i][0] for i in range(len(layers))]  # (T, hidden)
        config = reference.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.queries = [queries[i][0].reshape(input_ids.shape[1], -1, head_dim) for i in range(len(layers))]
        self.kv_heads = reference.config.num_key_value_heads

    def reduce(self, scores: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        grouped = scores.reshape(self.kv_heads, -1, scores.shape[-1])
        return grouped.mean(1) if reduction == "mean" else grouped.amax(1)

    def window_attention(
        self, layer: int, window: int, kernel: int = 5, pooling: str = "avg"
    ) -> torch.Tensor:
        """SnapKV's score: the window's attention to the keys before it, pooled over those keys only (zero
        padding at both edges, counted in an average), 0 at the window's keys, normalised."""
        summed = self.attentions[layer][:, -window:, :-window].sum(dim=1)
        pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
        pooled = pool(summed[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
        reduced = self.reduce(pooled)
        reduced = reduced / reduced.sum(-1, keepdim=True)
        return F.pad(reduced, (0, window))

    def cumulative_attention(self, layer: int) -> torch.Tensor:
        return self.reduce(self.attentions[layer].sum(dim=1))

    def entropy(self, topk: int) -> torch.Tensor:
        """H_i of the producing distribution; the first token gets the maximum."""
        logits = self.logits if topk == 0 else self.logits.topk(topk, dim=-1).values
        probabilities = logits.softmax(-1)
        at_position = -(probabilities * probabilities.log()).sum(-1)
        aligned = torch.cat([at_position[:1], at_position[:-1]])
        aligned[0] = aligned[1:].max()
        return aligned

    def evolution(self, layer: int) -> torch.Tensor:
        return 1 - F.cosine_similarity(self.layer_outputs[layer], self.layer_outputs[-1], dim=-1)


def rotated_queries_and_keys(model, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the float64 queries (H_q, T, d) and cached keys (H_kv, T, d) of one unpadded prompt
    (1, T), both after RoPE: q = W_q h, rotated as x·cos + rotate_half(x)·sin with the layer's own cos/sin."""
    reference = copy.deepcopy(model).double()
    reference.set_attn_implementation("eager")
    inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def capture(index: int):
        def hook(module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            inputs[index] = (hidden, kwargs["position_embeddings"])

        return hook

    layers = reference.model.layers
    handles = [
        layer.self_attn.register_forward_pre_hook(capture(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        cache = reference(input_ids, use_cache=True).past_key_values
    for handle in handles:
        handle.remove()
    result = []
    for index, layer in enumerate(layers):
        hidden, (cos, sin) = inputs[index]
        attention = layer.self_attn
        length = hidden.shape[1]
        with torch.no_grad():
            query = attention.q_proj(hidden)[0].reshape(length, -1, attention.head_dim).transpose(0, 1)
        half = query.shape[-1] // 2
        rotated_half = torch.cat([-query[..., half:], query[..., :half]], dim=-1)
        query = query * cos[0] + rotated_half * sin[0]
        result.append((query, cache.layers[index].keys[0].double()))
    return result


def rkv_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    window: int = 8,
    kernel: int = 7,
    mix: float = 0.07,
    threshold: float = 0.5,
) -> torch.Tensor:
    """R-KV's score (H_kv, T − window) of the keys before the window, as the authors' code defines it, for
    the last ``window`` queries (H_q, ≥ window, d) and all T keys (H_kv, T, d) of one sequence:
    λ · maxpool(mean_j softmax_i(max_group q_j·k_i·s)) − (1 − λ) · softmax(column mean of the cosine
    matrix with a zero diagonal and, in each row, its last entry above ``threshold`` (else its first)
    zeroed)."""
    queries, keys = queries.double()[:, -window:], keys.double()
    kv_heads, length, _ = keys.shape
    group = queries.shape[0] // kv_heads
    context = length - window
    scores = []
    for head in range(kv_heads):
        own = keys[head]
        logits = torch.stack([queries[head * group + g] @ own[:context].T * scaling for g in range(group)])
        attention = logits.max(dim=0).values.softmax(dim=-1).mean(dim=0)
        pooled = torch.stack(
            [attention[max(0, i - kernel // 2) : i + kernel // 2 + 1].max() for i in range(context)]
        )
        unit = own / (own.norm(dim=-1, keepdim=True) + 1e-8)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(0.0)
        for row in range(length):
            similar = (similarity[row] > threshold).nonzero()[:, 0].tolist()
            similarity[row, similar[-1] if similar else 0] = 0.0
        redundancy = similarity.mean(dim=0).softmax(dim=-1)
        scores.append(mix * pooled - (1 - mix) * redundancy[:context])
    return torch.stack(scores)
