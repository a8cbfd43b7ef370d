"""Random-weight models of the paper's architectures (``random:<alias>``), for speed work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infokv.hf import architectures, models

# (alias, layers, query heads, KV heads, head dim, parameters in billions, LM head tied)
PUBLISHED_SHAPES = [
    ("llama-3.1-8b", 32, 32, 8, 128, 8.03, False),
    ("llama-3.2-3b", 28, 24, 8, 128, 3.21, True),
    ("qwen2-7b", 28, 28, 4, 128, 7.62, False),
]


@pytest.mark.parametrize(
    ("alias", "layers", "heads", "kv_heads", "head_dim", "billions", "tied"), PUBLISHED_SHAPES
)
def test_random_model_has_the_published_shape(
    alias: str, layers: int, heads: int, kv_heads: int, head_dim: int, billions: float, tied: bool
) -> None:
    # On the meta device: the full-size architecture, with no memory behind its weights.
    model = architectures.build_random(architectures.config(alias), torch.bfloat16, "meta")
    config = model.config
    attention = model.model.layers[0].self_attn
    assert len(model.model.layers) == layers
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, kv_heads)
    assert attention.k_proj.weight.shape == (kv_heads * head_dim, config.hidden_size)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert model.dtype == torch.bfloat16 and not model.training


def _tiny(alias: str):
    """A two-layer shrink of the architecture ``alias``, cheap enough to build on the CPU."""
    config = architectures.config(alias)
    config.update(
        {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
    )
    config.update({"num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512})
    return config


def test_load_weights_builds_a_seeded_model_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(architectures.ARCHITECTURES, "tiny-qwen2", lambda: _tiny("qwen2-7b"))
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = models.load_weights("random:tiny-qwen2", dtype=torch.float16, device="cpu")
    assert torch.rand(1) == expected_draw  # the caller's random stream is left alone
    second = models.load_weights("random:tiny-qwen2", dtype=torch.float16, device="cpu")
    assert first.dtype == torch.float16 and first.device.type == "cpu" and not first.training
    assert first.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's biased projections
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert first.model.layers[0].mlp.up_proj.weight.std() > 0  # initialised, not zeros


@pytest.mark.parametrize("name", ["random:llama-9000", "random:"])
def test_unknown_random_alias_is_one_line(name: str) -> None:
    for call in (models.load_tokenizer, models.context_length, models.load_weights):
        with pytest.raises(ValueError) as info:
            call(name)
        message = str(info.value)
        assert repr(name) in message and "random:qwen2-7b" in message and "\n" not in message


def test_context_length_is_the_architecture_s() -> None:
    assert models.context_length("random:llama-3.2-3b") == 131072


def test_tokenizer_is_the_embedded_stand_in() -> None:
    tokenizer = models.load_tokenizer("random:llama-3.1-8b")
    stand_in = models.load_tokenizer(models.STAND_IN_TOKENIZER)
    assert tokenizer.get_vocab() == stand_in.get_vocab()
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    for alias in architectures.ARCHITECTURES:
        assert len(tokenizer) <= architectures.config(alias).vocab_size  # every id embeds


def test_for_model_knows_the_paper_models_offline(tmp_path: Path) -> None:
    assert architectures.for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").hidden_size == 3584
    assert architectures.for_model("random:llama-3.2-3b").num_hidden_layers == 28
    assert architectures.for_model("someone/unknown-model") is None
    _tiny("llama-3.1-8b").save_pretrained(tmp_path)
    assert architectures.for_model(str(tmp_path)).num_hidden_layers == 2
