"""Next-token choice: greedy, or temperature + nucleus (top-p) sampling with one generator per row.

One generator per row makes a row's samples independent of what else is in the batch, so a
batched run draws exactly the tokens the same prompts draw one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from infokv.engine.config_values import number


class Sampler:
    """Greedy when ``temperature == 0``; else softmax(z / temperature) truncated to the top-p nucleus."""

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int], device: torch.device) -> None:
        number("temperature", temperature, 0.0)  # 0 = greedy
        number("top_p", top_p, 0.0, 1.0, low_open=True)
        self.temperature = temperature
        self.top_p = top_p
        self.generators = []
        if temperature > 0:
            for seed in seeds:
                generator = torch.Generator(device=device)
                generator.manual_seed(int(seed))
                self.generators.append(generator)

    def subset(self, rows: list[int]) -> Sampler:
        """The sampler of the given rows only (rows that finished leave the batch)."""
        chosen = Sampler(self.temperature, self.top_p, [], torch.device("cpu"))
        chosen.generators = [self.generators[row] for row in rows] if self.generators else []
        return chosen

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits of the distribution actually sampled from (temperature applied)."""
        return logits / self.temperature if self.temperature > 0 else logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """One token id per row of (R, V) logits."""
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        probabilities = (logits.float() / self.temperature).softmax(dim=-1)
        if self.top_p < 1.0:
            probabilities = nucleus(probabilities, self.top_p)
        rows = [
            torch.multinomial(probabilities[row], 1, generator=generator)
            for row, generator in enumerate(self.generators)
        ]
        return torch.cat(rows)


def nucleus(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability reaches ``top_p``; renormalise."""
    sorted_probabilities, order = probabilities.sort(dim=-1, descending=True)
    before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities
    sorted_probabilities = sorted_probabilities.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probabilities).scatter(-1, order, sorted_probabilities)
    return kept / kept.sum(dim=-1, keepdim=True)
