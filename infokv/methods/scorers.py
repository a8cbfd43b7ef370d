"""The methods that score a prefill per KV head, by name: those whose scores a head-wise budget
(:mod:`infokv.methods.adakv`) can share out over the heads of a layer."""

from __future__ import annotations

from infokv.methods.base import Method
from infokv.methods.expected_attention import ExpectedAttention
from infokv.methods.h2o import H2O
from infokv.methods.infokv import InfoKV
from infokv.methods.knorm import KNorm
from infokv.methods.pyramidkv import PyramidKV
from infokv.methods.snapkv import SnapKV
from infokv.methods.streamingllm import StreamingLLM
from infokv.methods.tova import TOVA

SCORERS: dict[str, type[Method]] = {
    cls.name: cls for cls in (StreamingLLM, H2O, SnapKV, PyramidKV, ExpectedAttention, InfoKV, KNorm, TOVA)
}
