"""Our default methods keep the positions kvpress 0.5.5's presses keep, on the embedded model.

``data/kvpress_oracle.json`` was written by ``make fidelity`` (``scripts/fidelity_kvpress.py``): the token
ids of one ~1.2K-token chat prompt and, per (layer, KV head), the positions kvpress kept at 20%
(``compression_ratio=0.8``), so this test needs no kvpress. AdaKV's heads keep different numbers of
positions; the others' kept sets are as large in every head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infokv import compress, load_model, methods

pytestmark = pytest.mark.slow

ORACLE = json.loads((Path(__file__).parent / "data" / "kvpress_oracle.json").read_text())


@pytest.fixture(scope="module")
def embedded():
    model, _ = load_model("smollm2-135m", dtype=torch.float32, attn_implementation="sdpa")
    return model


def positions(mask: str, length: int) -> list[int]:
    bits = int(mask, 16)
    return [position for position in range(length) if bits >> position & 1]


@pytest.mark.parametrize("setting", sorted(ORACLE["settings"]))
def test_default_method_keeps_the_positions_kvpress_keeps(embedded, setting):
    entry = ORACLE["settings"][setting]
    ids = torch.tensor([ORACLE["token_ids"]])
    method = methods.get(entry["method"], **entry["params"])  # snapkv: methods.get("snapkv"), no arguments
    _, kept = compress(embedded, ids, method, ORACLE["budget"])
    assert len(kept) == len(entry["kept"])
    for layer, (ours, theirs) in enumerate(zip(kept, entry["kept"], strict=True)):
        for head, mask in enumerate(theirs):
            kept_positions = [position for position in ours[0, head].tolist() if position >= 0]  # no filler
            assert kept_positions == positions(mask, ids.shape[1]), (entry["press"], layer, head)
