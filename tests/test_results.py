"""The append-only record store survives partial writes and kills."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from infokv.eval.store import TAIL_CHUNK, append_records, read_records, read_records_from

WRITER = """
import sys
from infokv.eval.store import append_records
for index in range(100000):
    append_records(sys.argv[1], [{"index": index, "payload": "x" * 2000}])
"""


def test_partial_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "records.jsonl"
    append_records(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as handle:
        handle.write('{"a": 3, "trunc')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    append_records(path, [{"a": 4}])
    assert read_records(path) == [{"a": 1}, {"a": 2}, {"a": 4}]


@pytest.mark.parametrize("before", [[], [{"a": 1}]], ids=["only-a-partial-line", "records-then-partial"])
def test_a_partial_line_longer_than_the_tail_chunk_is_cut_whole(tmp_path, before):
    path = tmp_path / "records.jsonl"
    append_records(path, before)
    with path.open("a") as handle:
        handle.write('{"a": "' + "x" * (3 * TAIL_CHUNK))
    append_records(path, [{"a": 2}])
    assert read_records(path) == [*before, {"a": 2}]


def test_reading_from_an_offset_gives_only_what_was_appended_since(tmp_path):
    path = tmp_path / "records.jsonl"
    assert read_records_from(path) == ([], 0)
    append_records(path, [{"a": 1}, {"a": 2}])
    first, offset = read_records_from(path)
    assert first == [{"a": 1}, {"a": 2}] and offset == path.stat().st_size
    with path.open("a") as handle:
        handle.write('{"a": 3}\n{"a": ')
    assert read_records_from(path, offset) == ([{"a": 3}], offset + len('{"a": 3}\n'))


def test_a_corrupt_line_names_the_file_and_where(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"records.jsonl: line at byte 9: not a JSON record"):
        read_records(path)


def test_a_killed_writer_loses_no_completed_record(tmp_path):
    path = tmp_path / "records.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    deadline = time.time() + 60
    while time.time() < deadline and len(read_records(path)) < 20:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    records = read_records(path)
    assert [record["index"] for record in records] == list(range(len(records)))
    assert len(records) >= 20
    append_records(path, [{"index": len(records)}])
    assert [record["index"] for record in read_records(path)] == list(range(len(records) + 1))
