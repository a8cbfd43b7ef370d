"""Memory while decoding with compression: the cache is compacted in place, layer by layer, into buffers
sized for the entries until the next compression, and no one keeps a pre-compression cache."""

from __future__ import annotations

import weakref

import pytest

from infokv import generate
from infokv.engine import decoding
from infokv.hf import cache

PROMPTS = ["The quick brown fox jumps over the lazy dog. ", "Pack my box with five dozen liquor jugs."]
EVERY = 16


class BufferLedger:
    """Every cache buffer made by :func:`infokv.hf.cache._gather_into_buffer`, and the bytes of all of them
    still alive at each call (the new buffer counted): the peak of cache memory while it is rebuilt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.buffers: list[weakref.ref] = []
        self.calls: list[tuple[int, int]] = []  # (live bytes before the call, new buffer's bytes)
        original = cache._gather_into_buffer

        def recording(states, rows, entries, capacity):
            live = self.live_bytes()
            buffer = original(states, rows, entries, capacity)
            self.buffers.append(weakref.ref(buffer))
            self.calls.append((live, buffer.nbytes))
            return buffer

        monkeypatch.setattr(cache, "_gather_into_buffer", recording)

    def live_bytes(self) -> int:
        return sum(buffer.nbytes for buffer in (ref() for ref in self.buffers) if buffer is not None)


@pytest.mark.parametrize("name", ["infokv", "rpc"])
def test_compaction_holds_the_old_cache_plus_one_layer_at_most(llama, tokenizer, monkeypatch, name):
    ledger = BufferLedger(monkeypatch)
    layers = llama.config.num_hidden_layers
    completions = generate(
        llama,
        tokenizer,
        PROMPTS,
        "full",
        1.0,
        decode_method=name,
        decode_ratio=0.25,
        compress_every=EVERY,
        max_new_tokens=5 * EVERY,
        stop_at_eos=False,
        fidelity=False,
    )
    assert all(completion.stats["compression_events"] == 4 for completion in completions)
    # Calls come in (keys, values) pairs per layer; each compression rebuilds every layer.
    events = [ledger.calls[start : start + 2 * layers] for start in range(0, len(ledger.calls), 2 * layers)]
    assert len(events) == 1 + 4  # the rows' first caches, then one per compression
    for number, (previous, event) in enumerate(zip(events, events[1:], strict=False)):
        before, after = sum(size for _, size in previous), sum(size for _, size in event)
        layer = max(pair[i][1] + pair[i + 1][1] for pair in (previous, event) for i in range(0, len(pair), 2))
        peak = max(live + size for live, size in event)
        # One cache (the old or the new, whichever is larger) and one layer of the other, at most.
        assert peak <= max(before, after) + layer
        if number > 0:  # the first caches have growth room, so they dwarf the compacted ones
            # Copying every layer before freeing the old ones would hold both whole caches.
            assert before + after > max(before, after) + layer


def test_compacted_buffers_fill_up_exactly_by_the_next_compression(llama, tokenizer, monkeypatch):
    seen: list[dict[str, int]] = []
    original = cache.KVState.compact

    def recording(self, keep, valid, room):
        layer = self.cache.layers[0]
        before = {"pointer": layer._key_buffer.data_ptr(), "entries": layer.keys.shape[2]}
        original(self, keep, valid, room)
        layer = self.cache.layers[0]
        after = {"pointer": layer._key_buffer.data_ptr(), "capacity": layer._key_buffer.shape[2]}
        seen.append({**{f"{k}_before": v for k, v in before.items()}, **after})

    monkeypatch.setattr(cache.KVState, "compact", recording)
    generate(
        llama,
        tokenizer,
        PROMPTS,
        "full",
        1.0,
        decode_method="infokv",
        decode_ratio=0.25,
        compress_every=EVERY,
        max_new_tokens=3 * EVERY + 5,
        stop_at_eos=False,
        fidelity=False,
    )
    assert len(seen) == 3
    for earlier, later in zip(seen, seen[1:], strict=False):
        # No reallocation between two compressions, and no slot to spare when the next one comes.
        assert later["pointer_before"] == earlier["pointer"]
        assert later["entries_before"] == earlier["capacity"]


def test_room_is_the_steps_to_the_next_compression_or_the_end():
    from infokv.engine.decoding import DecodeCompression, _room

    every16 = DecodeCompression.build("infokv", 0.25, every=16)
    every24 = DecodeCompression.build("rpc", 0.25, every=24)
    assert _room([every16], 16, 1000) == 16
    assert _room([every16], 48, 50) == 1  # one more token is fed before the last is sampled
    assert _room([every16, every24, None], 16, 1000) == 8  # the 24-group compresses at 24
    assert _room([every16, every24], 48, 1000) == 16
    assert _room([None], 5, 100) == 94


@pytest.mark.parametrize("name", ["infokv", "rpc"])
def test_scoring_a_row_at_a_time_keeps_the_same_entries(llama, tokenizer, monkeypatch, name):
    options = dict(
        decode_method=name, decode_ratio=0.25, compress_every=EVERY, max_new_tokens=4 * EVERY, fidelity=False
    )
    whole = generate(llama, tokenizer, PROMPTS, "full", 1.0, stop_at_eos=False, **options)
    monkeypatch.setattr(decoding, "SCORING_BYTES", 1)  # one row per scoring pass
    calls = []
    original = decoding._compress_rows
    monkeypatch.setattr(decoding, "_compress_rows", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    parts = generate(llama, tokenizer, PROMPTS, "full", 1.0, stop_at_eos=False, **options)
    assert calls and all(rows.stop - rows.start == 1 for rows in calls)
    for one, other in zip(whole, parts, strict=True):
        assert one.token_ids == other.token_ids
        assert one.stats["compressions"] == other.stats["compressions"]
