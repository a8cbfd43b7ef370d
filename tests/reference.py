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
