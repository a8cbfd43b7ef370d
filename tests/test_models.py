"""Model loader: the embedded alias, its conversion cache, checksums and name validation."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from infokv.hf import fetch, models

ALIAS = "smollm2-135m"


def _fail_build(spec: models.EmbeddedModel, out_dir: Path) -> None:
    raise AssertionError("conversion must not run again")


def _fake_build(calls: list[Path], delay: float = 0.0):
    """A stand-in for the fetch + convert step that writes one file and records each call."""

    def build(spec: models.EmbeddedModel, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(delay)
        (out_dir / "config.json").write_text("{}")

    return build


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point INFOKV_CACHE at an empty temporary directory."""
    monkeypatch.setenv("INFOKV_CACHE", str(tmp_path))
    return tmp_path


# ---- the real embedded model (converted at most once per machine, then cached) ------------------


def test_alias_loads_from_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = models.load_model(ALIAS)
    manifest = fetch.cache_dir() / "models" / ALIAS / models.MANIFEST_NAME
    assert manifest.is_file()
    assert model.config.num_hidden_layers == 30
    assert model.config.num_key_value_heads == 3
    assert not hasattr(model.config, "quantization_config")
    assert not model.training
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"

    batch = tokenizer(["Hello", "The capital of France is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch.input_ids.shape
    assert torch.isfinite(logits).all()

    # A second load reuses the conversion: no rebuild, manifest untouched.
    mtime = manifest.stat().st_mtime_ns
    monkeypatch.setattr(models, "_build_embedded", _fail_build)
    models.load_model(ALIAS)
    assert manifest.stat().st_mtime_ns == mtime


# ---- cache mechanics, with the slow fetch + convert replaced by a fake ----------------------------


@pytest.mark.parametrize("manifest", [None, {"sha256": "0" * 64}], ids=["no-manifest", "stale-manifest"])
def test_untrusted_directory_is_rebuilt(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, manifest: dict | None
) -> None:
    target = empty_cache / "models" / ALIAS
    target.mkdir(parents=True)
    (target / "model.safetensors").write_text("half written")
    if manifest is not None:
        (target / models.MANIFEST_NAME).write_text(json.dumps(manifest))
    leftover = empty_cache / "models" / f".{ALIAS}.tmp-dead"
    leftover.mkdir()
    calls: list[Path] = []
    monkeypatch.setattr(models, "_build_embedded", _fake_build(calls))

    assert models.ensure_embedded(ALIAS) == target
    assert len(calls) == 1
    assert sorted(p.name for p in target.iterdir()) == ["config.json", models.MANIFEST_NAME]
    assert json.loads((target / models.MANIFEST_NAME).read_text())["sha256"] == models.EMBEDDED[ALIAS].sha256
    assert not leftover.exists()

    models.ensure_embedded(ALIAS)
    assert len(calls) == 1


def test_failed_build_leaves_nothing(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: models.EmbeddedModel, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_text("partial")
        raise RuntimeError("conversion died")

    monkeypatch.setattr(models, "_build_embedded", broken)
    with pytest.raises(RuntimeError, match="conversion died"):
        models.ensure_embedded(ALIAS)
    assert [p.name for p in (empty_cache / "models").iterdir()] == [f"{ALIAS}.lock"]


def test_concurrent_builders_convert_once(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(models, "_build_embedded", _fake_build(calls, delay=0.2))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(models.ensure_embedded(ALIAS))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1


# ---- checksums and names --------------------------------------------------------------------------


def test_checksum_mismatch_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    expected = models.EMBEDDED[ALIAS].sha256
    with pytest.raises(fetch.ChecksumError) as info:
        fetch.verify_sha256(fake, expected)
    message = str(info.value)
    assert "\n" not in message
    assert str(fake) in message and expected in message and fetch.sha256_file(fake) in message


def test_checksum_match_passes(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    fetch.verify_sha256(fake, fetch.sha256_file(fake))


@pytest.mark.parametrize("name", ["no-such-model", "./missing/dir/x", "", "a b/c"])
def test_unknown_name_raises(name: str) -> None:
    with pytest.raises(ValueError) as info:
        models.resolve(name)
    message = str(info.value)
    assert repr(name) in message and ALIAS in message and "\n" not in message


def test_resolve_directory_and_hub_id(tmp_path: Path) -> None:
    assert models.resolve(str(tmp_path)) == (str(tmp_path), True)
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        False,
    )
