"""The append-only record store survives partial writes and kills."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from infokv.results import append_records, read_records

WRITER = """
import sys
from infokv.results import append_records
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
