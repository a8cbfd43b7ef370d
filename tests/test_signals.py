"""Captured signals equal straightforward float64 references (eager attention, full logits)."""

from __future__ import annotations

import pytest
import torch
from reference import Reference

from infokv import methods, signals
from infokv.engine.capture import prefill
from infokv.engine.views import PrefillView
from infokv.signals.entropy import top_values, topk_entropy

LENGTH = 150


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(4, 80, (1, LENGTH), generator=generator)


REQUIREMENTS = {
    (signals.WINDOW_QUERIES, 16),
    (signals.CUMULATIVE_ATTENTION,),
    (signals.ENTROPY, 0),
    (signals.ENTROPY, 5),
    (signals.EVOLUTION,),
    (signals.QUERY_STATISTICS,),
}


@pytest.mark.parametrize("chunk", [4096, 37])
def test_signals_match_float64_reference(model, prompt, chunk):
    valid = torch.ones_like(prompt, dtype=torch.bool)
    state, captured, last_logits = prefill(model, prompt, valid, REQUIREMENTS, chunk=chunk)
    reference = Reference(model, prompt)
    torch.testing.assert_close(last_logits[0].double(), reference.logits[-1], rtol=1e-4, atol=1e-4)
    for layer in range(state.num_layers):
        view = PrefillView(state, captured, layer, memo={})
        close = dict(rtol=1e-4, atol=1e-6)
        for pooling, kernel in (("avg", 5), ("max", 7)):
            torch.testing.assert_close(
                view.window_attention(16, pooling, kernel, "mean")[0].double(),
                reference.window_attention(layer, 16, kernel, pooling),
                **close,
            )
        torch.testing.assert_close(
            view.cumulative_attention("mean")[0].double(), reference.cumulative_attention(layer), **close
        )
        torch.testing.assert_close(view.evolution()[0].double(), reference.evolution(layer), **close)
        for topk in (0, 5):
            torch.testing.assert_close(
                view.entropy(topk, "producing")[0].double(), reference.entropy(topk), **close
            )


def test_entropy_topk_is_honoured():
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.0, -2.0]])
    two = torch.tensor([4.0, 3.0]).softmax(0)
    assert torch.isclose(topk_entropy(logits, 2), -(two * two.log()).sum())
    full = logits.softmax(-1)
    assert torch.isclose(topk_entropy(logits, 0), -(full * full.log()).sum())
    assert topk_entropy(logits, 2) < topk_entropy(logits, 0)


@pytest.mark.parametrize("width, k", [(1000, 7), (4099, 16), (50, 20), (64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_values_are_the_topk_values(width, k, dtype):
    generator = torch.Generator().manual_seed(width + k)
    logits = torch.randn(3, 5, width, generator=generator).to(dtype)
    logits[0, 0] = logits[0, 0].round()  # many ties at the threshold
    logits[1, 1, -3:] = 50.0  # the largest values in the columns past the last whole group
    logits[2, 2, :: width // k] = 40.0  # k large values spread over every group
    expected = logits.topk(k, dim=-1).values
    got = top_values(logits, k).sort(dim=-1, descending=True).values
    assert torch.equal(got, expected)


def test_query_statistics_match_reference(llama, prompt):
    valid = torch.ones_like(prompt, dtype=torch.bool)
    state, captured, _ = prefill(llama, prompt, valid, {(signals.QUERY_STATISTICS,)}, chunk=64)
    reference = Reference(llama, prompt)
    for layer in range(state.num_layers):
        mean, covariance = PrefillView(state, captured, layer, memo={}).query_statistics()
        queries = reference.queries[layer].transpose(0, 1)  # (H, T, d)
        expected_mean = queries.mean(1)
        centred = queries - expected_mean[:, None]
        expected_covariance = centred.transpose(1, 2) @ centred / queries.shape[1]
        torch.testing.assert_close(mean[0].double(), expected_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(covariance[0].double(), expected_covariance, rtol=1e-3, atol=1e-5)


def test_future_rotation_is_mean_of_rope_rotations(llama, prompt):
    valid = torch.ones_like(prompt, dtype=torch.bool)
    state, captured, _ = prefill(llama, prompt, valid, set(), chunk=4096)
    rotation = PrefillView(state, captured, 0, memo={}).future_rotation(8)[0].double()
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    dim = rotation.shape[0]
    identity = torch.eye(dim, dtype=torch.float64)[None, None]  # (1, 1, d, d): d basis vectors
    total = torch.zeros(dim, dim, dtype=torch.float64)
    for position in range(LENGTH, LENGTH + 8):
        cos, sin = captured.rotary(torch.tensor([[position]]))
        rotated, _ = apply_rotary_pos_emb(identity, identity, cos.double(), sin.double())
        total += rotated[0, 0].T  # column j is R e_j
    torch.testing.assert_close(rotation, total / 8, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sink", [4, 0])
def test_expected_attention_scores_follow_the_formula(llama, prompt, sink):
    """S_i = mean_g softmax_{i ≥ sink}(k_i·μ̄_g s + ½ k_iᵀ Σ̄_g k_i s²) · ‖v_i‖ with μ, Σ of the queries after
    the sinks (kvpress's ExpectedAttentionPress), evaluated token by token in float64."""
    valid = torch.ones_like(prompt, dtype=torch.bool)
    method = methods.get("expected_attention", n_future=8, sink=sink)
    state, captured, _ = prefill(llama, prompt, valid, method.requirements(), chunk=64)
    view = PrefillView(state, captured, 1, memo={})
    queries = Reference(llama, prompt).queries[1][sink:].transpose(0, 1)  # (H, T - sink, d)
    mean = queries.mean(1)
    centred = queries - mean[:, None]
    covariance = centred.transpose(1, 2) @ centred / queries.shape[1]
    rotation = view.future_rotation(8)[0].double()
    keys, values = view.keys[0].double(), view.values[0].double()  # (H_kv, T, d)
    groups = mean.shape[0] // keys.shape[0]
    expected = torch.zeros(keys.shape[:2], dtype=torch.float64)
    for head in range(mean.shape[0]):
        rotated_mean = rotation @ mean[head]
        rotated_covariance = rotation @ covariance[head] @ rotation.T
        key = keys[head // groups, sink:]
        scale = view.scaling
        quadratic = torch.stack([k @ rotated_covariance @ k for k in key])
        logits = key @ rotated_mean * scale + 0.5 * quadratic * scale**2
        expected[head // groups, sink:] += logits.softmax(0) / groups
    expected = expected * values.norm(dim=-1)
    torch.testing.assert_close(method.score(view)[0].double(), expected, rtol=1e-4, atol=1e-7)
