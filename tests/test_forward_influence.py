"""Forward Influence on a tiny random model: exactness, causality, batching; word classes; tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from infokv.analysis import summary
from infokv.analysis.forward_influence import (
    InfluenceConfig,
    analyse_document,
    candidate_mask,
    choose,
    chunk_means,
    influence,
    kl_divergence,
    reduce_to_tokens,
)
from infokv.analysis.word_classes import token_classes
from infokv.engine.capture import prefill

LENGTH, PREFIX = 200, 80


@pytest.fixture(scope="module")
def document():
    generator = torch.Generator().manual_seed(3)
    return torch.randint(4, 80, (1, LENGTH), generator=generator)


def prefix_state(model, ids, prefix=PREFIX):
    state, _, _ = prefill(model, ids[:, :prefix], torch.ones(1, prefix, dtype=torch.bool), set())
    return state


def test_kl_divergence_matches_definition():
    p = torch.randn(3, 11).log_softmax(-1)
    q = torch.randn(3, 11).log_softmax(-1)
    expected = (p.double().exp() * (p.double() - q.double())).sum(-1)
    assert torch.allclose(kl_divergence(p, q).double(), expected, atol=1e-6)
    assert torch.equal(kl_divergence(p, p), torch.zeros(3))


@pytest.mark.parametrize("start", [5, PREFIX])
def test_evicting_nothing_gives_exactly_zero(llama, document, start):
    empty = torch.tensor([], dtype=torch.long)
    kl = influence(llama, document, [empty, empty], prefix_state(llama, document), start, forward_chunk=48)
    assert kl.shape == (2, LENGTH - start)
    assert torch.equal(kl, torch.zeros_like(kl))


def test_eviction_changes_no_position_before_it(model, document):
    """Context mode: a token's own and earlier positions are bit-identical to the full cache."""
    sets = [torch.tensor([12]), torch.tensor([30, 60]), torch.tensor([45])]
    start = 12
    kl = influence(model, document, sets, prefix_state(model, document), start, forward_chunk=40)
    for row, positions in enumerate(sets):
        first = int(positions[0])
        assert torch.equal(kl[row, : first - start + 1], torch.zeros(first - start + 1))
        assert kl[row, first - start + 1 :].max() > 0


def test_batched_sets_equal_one_at_a_time(model, document):
    sets = [torch.tensor([10, 40]), torch.tensor([20]), torch.tensor([5, 6, 7, 70])]
    state = prefix_state(model, document)
    batched = influence(model, document, sets, state, 5, forward_chunk=64)
    grouped = influence(model, document, sets, state, 5, forward_chunk=33, rows_per_forward=2)
    assert torch.allclose(batched, grouped, atol=1e-5)
    for row, positions in enumerate(sets):
        alone = influence(model, document, [positions], state, 5, forward_chunk=50)
        assert torch.allclose(batched[row], alone[0], atol=1e-5)


def test_cache_mode_starts_after_the_prefix_and_differs_from_context(llama, document):
    sets = [torch.tensor([20, 30])]
    state = prefix_state(llama, document)
    cache = influence(llama, document, sets, state, PREFIX, forward_chunk=64)
    context = influence(llama, document, sets, state, 20, forward_chunk=64)[:, PREFIX - 20 :]
    assert cache.shape == context.shape == (1, LENGTH - PREFIX)
    assert cache.min() > 0 and not torch.allclose(cache, context)


def test_duplicate_sets_share_a_row(llama, document):
    sets = [torch.tensor([15]), torch.tensor([15])]
    kl = influence(llama, document, sets, prefix_state(llama, document), 15, forward_chunk=64)
    assert torch.equal(kl[0], kl[1])


def test_chunk_means_align_to_the_prefix():
    kl = torch.arange(20, dtype=torch.float32)[None]  # positions 5..24
    starts, means = chunk_means(kl, start=5, origin=10, chunk=4)
    assert starts == [10, 14, 18, 22]
    assert torch.allclose(means[0], torch.tensor([6.5, 10.5, 14.5, 18.0], dtype=torch.float64))


def test_selection_respects_candidates_and_count():
    candidates = candidate_mask(20, sink=2, window=3)
    assert candidates.tolist() == [False] * 2 + [True] * 15 + [False] * 3
    scores = torch.arange(20, dtype=torch.float64).flip(0)
    assert choose(scores, candidates, 4).tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError):
        choose(scores, candidates, 16)
    layer_scores = [torch.rand(2, 20), torch.rand(2, 20)]
    reduced = reduce_to_tokens(layer_scores, candidates)
    assert reduced[~candidates].abs().max() == 0 and torch.isclose(reduced.sum(), torch.tensor(1.0).double())


def test_analyse_document_every_criterion_same_count(llama, document):
    config = InfluenceConfig(prefix=PREFIX, fraction=0.1, chunk=32, sink=2, window=8, forward_chunk=64)
    result = analyse_document(llama, document[0].tolist(), config)
    assert set(result.selected) == {"attention", "entropy", "infokv", "h2o", "random"}
    for positions in result.selected.values():
        assert len(positions) == config.count == 8
        assert positions.min() >= 2 and positions.max() < PREFIX - 8
    assert result.chunk_starts == [80, 112, 144, 176]
    assert all(min(values) > 0 for values in result.influence.values())
    assert result.entropy.shape == (PREFIX,)
    rows = summary.influence_rows("doc", result, PREFIX, 32)
    table = summary.summarise(pd.DataFrame(rows + [{**row, "document": "b"} for row in rows]), resamples=50)
    assert len(table) == 5 * 4 and (table.ci_low <= table.mean_kl + 1e-12).all()


def test_word_classes():
    text = "The cat can't sit on 3 mats, she said."
    offsets = [(0, 3), (3, 7), (7, 13), (13, 17), (17, 20), (20, 22), (22, 27), (27, 28), (28, 32), (32, 38)]
    assert token_classes(text, offsets) == [
        "function",
        "content",
        "function",
        "content",
        "function",
        "other",
        "content",
        "other",
        "function",
        "content",
    ]
