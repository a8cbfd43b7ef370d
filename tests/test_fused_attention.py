"""The fused CUDA path (flash attention + Triton column sums) equals the blockwise fp32 reference."""

from __future__ import annotations

import pytest
import torch

from infokv.kernels import causal_attention, fused_attention
from infokv.signals.attention import blockwise_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kernel", ["cudnn", "flash"])
@pytest.mark.parametrize(("queries", "keys"), [(300, 300), (257, 1000), (64, 4096)])
def test_fused_equals_blockwise(queries, keys, kernel, monkeypatch):
    if not fused_attention.available(torch.empty(1, 128, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("Triton is not installed")
    if kernel == "flash":
        monkeypatch.setattr(causal_attention, "_cudnn_usable", lambda query, keys: False)
    else:
        monkeypatch.setattr(causal_attention, "CUDNN_GRID", 1)
    generator = torch.Generator(device="cuda").manual_seed(queries + keys)
    query = torch.randn(2, 8, queries, 128, device="cuda", generator=generator).bfloat16()
    key = torch.randn(2, 2, keys, 128, device="cuda", generator=generator).bfloat16()
    value = torch.randn(2, 2, keys, 128, device="cuda", generator=generator).bfloat16()
    scaling = 128**-0.5
    output, sums = fused_attention.attention_with_column_sums(query, key, value, scaling)
    expected_output, expected_sums = blockwise_attention(query, key, value, None, scaling)
    torch.testing.assert_close(output.float(), expected_output.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(sums, expected_sums, rtol=1e-2, atol=1e-3)
    assert torch.isclose(sums.sum(-1), torch.full_like(sums[..., 0], float(queries)), rtol=1e-3).all()


@pytest.mark.parametrize("cumulative", [True, False], ids=["fused-h2o", "flash"])
def test_chunked_cuda_prefill_matches_cpu_float32(cumulative):
    """Chunked bf16 prefill on CUDA (lower-right causal flash attention, GQA without copies, fused H2O
    sums when asked for) captures what the float32 CPU prefill captures."""
    from tiny import tiny_model

    from infokv import signals
    from infokv.engine.capture import prefill

    model = tiny_model("llama")
    prompt = torch.randint(4, 80, (1, 150), generator=torch.Generator().manual_seed(3))
    valid = torch.ones_like(prompt, dtype=torch.bool)
    needs = {(signals.EVOLUTION,)} | ({(signals.CUMULATIVE_ATTENTION,)} if cumulative else set())
    _, expected, expected_logits = prefill(model, prompt, valid, needs, chunk=4096)
    gpu = model.to("cuda", torch.bfloat16)
    state, captured, logits = prefill(gpu, prompt.cuda(), valid.cuda(), needs, chunk=37)
    torch.testing.assert_close(logits.cpu(), expected_logits, rtol=5e-2, atol=5e-2)
    for layer in range(state.num_layers if cumulative else 0):
        torch.testing.assert_close(
            captured.cumulative[layer].cpu(), expected.cumulative[layer], rtol=5e-2, atol=5e-2
        )
    torch.testing.assert_close(captured.evolution.cpu(), expected.evolution, rtol=5e-2, atol=2e-2)
