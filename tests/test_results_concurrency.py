"""Concurrent writers and jobs on one run: nothing lost, torn, duplicated or computed twice."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from infokv.eval import store
from infokv.eval.store import Claim, RunStore, append_records, read_records, record_key

ROOT = Path(__file__).resolve().parent.parent
FORK = multiprocessing.get_context("fork")  # the writers only touch files: no re-import of torch
WRITERS = 4
RECORDS_PER_WRITER = 120
BIG = 200_000  # bytes of payload in every 7th record: larger than a 64 KiB pipe buffer


def payload(writer: int, index: int) -> str:
    """A payload whose size and content say who wrote it, so a torn or mixed record shows."""
    size = BIG + index if index % 7 == 0 else 50 + index
    return chr(ord("a") + writer) * size


def record(writer: int, index: int) -> dict:
    return {"writer": writer, "index": index, "payload": payload(writer, index)}


def write_many(path: str, writer: int, count: int, start: FORK.Barrier) -> None:
    """Append ``count`` records in calls of 1, 2 or 3 records."""
    start.wait()
    index = 0
    while index < count:
        size = 1 + index % 3
        append_records(path, [record(writer, i) for i in range(index, min(index + size, count))])
        index += size


def stall_mid_record(path: str, marker: str) -> None:
    """Append one 4 MB record but stop halfway through writing it, holding the lock, until killed."""

    def half_then_stall(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        Path(marker).touch()
        time.sleep(600)

    store._write_all = half_then_stall
    append_records(path, [{"writer": -1, "index": 0, "payload": "z" * 4_000_000}])


def wait_for(marker: Path) -> None:
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.05)


def check_lines(path: Path) -> list[dict]:
    """Every line of ``path`` parsed on its own (no partial tail allowed), payloads intact."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = [json.loads(line) for line in data.split(b"\n")[:-1]]
    for line in lines:
        assert line["payload"] == payload(line["writer"], line["index"])
    return lines


def tally(lines: list[dict]) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for line in lines:
        key = (line["writer"], line["index"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def start_writers(path: Path, count: int) -> list:
    start = FORK.Barrier(WRITERS)
    processes = [
        FORK.Process(target=write_many, args=(str(path), writer, count, start)) for writer in range(WRITERS)
    ]
    for process in processes:
        process.start()
    return processes


def join(processes: list) -> None:
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0


def test_concurrent_writers_lose_tear_and_duplicate_nothing(tmp_path):
    path = tmp_path / "samples.jsonl"
    join(start_writers(path, RECORDS_PER_WRITER))
    counts = tally(check_lines(path))
    expected = {(writer, index) for writer in range(WRITERS) for index in range(RECORDS_PER_WRITER)}
    assert set(counts) == expected and set(counts.values()) == {1}
    assert read_records(path) == check_lines(path)
    print(f"\nconcurrent writers: {WRITERS} x {RECORDS_PER_WRITER} = {len(expected)} records written, "
          f"{len(expected - set(counts))} lost, {sum(counts.values()) - len(counts)} duplicated")  # fmt: skip


def test_a_writer_killed_mid_record_while_holding_the_lock_corrupts_nothing(tmp_path):
    path = tmp_path / "samples.jsonl"
    append_records(path, [record(0, -1)])
    marker = tmp_path / "halfway"
    staller = FORK.Process(target=stall_mid_record, args=(str(path), str(marker)))
    staller.start()
    wait_for(marker)
    writers = start_writers(path, 30)
    time.sleep(2.0)
    torn = path.read_bytes()
    assert not torn.endswith(b"\n") and torn.count(b"\n") == 1, "the others wait for the lock"
    staller.kill()
    staller.join()
    join(writers)
    counts = tally(check_lines(path))
    assert set(counts) == {(0, -1)} | {(w, i) for w in range(WRITERS) for i in range(30)}
    assert set(counts.values()) == {1}


# ---- claims: one process per sample ---------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    id: str


def key_record(sample_id: str, setting: str = "s", draw: int = 0) -> dict:
    return {"sample_id": sample_id, "setting": setting, "sample_index": draw}


def compute_claimed(directory: str, ids: list[str], log: str, start: FORK.Barrier) -> None:
    """Take batches of 2 through the claims, 'compute' each (log it, wait a little) and record it."""
    store = RunStore(directory)
    start.wait()
    for batch in store.claim_batches([Item(i) for i in ids], 2, ["s"], 1):
        with open(log, "a") as handle:
            handle.write("".join(f"{item.id}\n" for item in batch))
        time.sleep(0.05)
        store.append([key_record(item.id) for item in batch])


def hold_then_finish(directory: str, sample_id: str, marker: str) -> None:
    """Claim one sample, say so, take a while, record it and release the claim."""
    store = RunStore(directory)
    for batch in store.claim_batches([Item(sample_id)], 1, ["s"], 1):
        Path(marker).touch()
        time.sleep(1.5)
        store.append([key_record(item.id) for item in batch])


def test_concurrent_jobs_compute_each_sample_once(tmp_path):
    ids = [f"sample-{index}" for index in range(40)]
    RunStore(tmp_path).append([key_record(ids[0])])  # finished before anyone starts
    start = FORK.Barrier(3)
    logs = [tmp_path / f"computed-{n}.txt" for n in range(3)]
    jobs = [FORK.Process(target=compute_claimed, args=(str(tmp_path), ids, str(log), start)) for log in logs]
    for job in jobs:
        job.start()
    join(jobs)
    computed = [line for log in logs if log.exists() for line in log.read_text().split()]
    assert sorted(computed) == sorted(ids[1:]), "every unfinished sample computed exactly once"
    assert sum(log.exists() for log in logs) >= 2, "the jobs shared the work"
    raw = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert sorted(record_key(json.loads(line)) for line in raw) == sorted((i, "s", 0) for i in ids)


def test_a_job_waits_for_a_sample_held_elsewhere_and_skips_it_once_finished(tmp_path):
    store = RunStore(tmp_path)
    marker = tmp_path / "holding"
    holder = FORK.Process(target=hold_then_finish, args=(str(tmp_path), "b", str(marker)))
    holder.start()
    wait_for(marker)
    began = time.time()
    batches = []
    for batch in store.claim_batches([Item("a"), Item("b")], 2, ["s"], 1):
        batches.append([item.id for item in batch])
        store.append([key_record(item.id) for item in batch])
    holder.join()
    assert batches == [["a"]] and time.time() - began > 0.5, "b was waited for, not recomputed"
    assert sorted(record_key(r) for r in read_records(tmp_path / "samples.jsonl")) == [
        ("a", "s", 0),
        ("b", "s", 0),
    ]


def hold_until_killed(path: str, marker: str) -> None:
    claim = Claim.take(Path(path), wait=False)
    assert claim is not None
    Path(marker).touch()
    time.sleep(600)


def test_a_killed_jobs_claims_are_free_at_once(tmp_path):
    path = tmp_path / "claim.lock"
    marker = tmp_path / "holding"
    holder = FORK.Process(target=hold_until_killed, args=(str(path), str(marker)))
    holder.start()
    wait_for(marker)
    assert Claim.take(path, wait=False) is None
    holder.kill()
    holder.join()
    claim = Claim.take(path, wait=False)
    assert claim is not None
    claim.release()
    assert not path.exists()


# ---- two real runs of one job ----------------------------------------------------------------------------

JOB = """
import sys, time
from pathlib import Path
from hydra import compose, initialize_config_dir
import infokv.eval.runner as experiment
from infokv.eval.configs import register_configs
register_configs()

conf, log, ready, others, *overrides = sys.argv[1:]
generate = experiment.generate_sweep

def counted(*args, seed, **kwargs):
    with open(log, "a") as handle:
        handle.write("".join(f"{s}\\n" for s in seed))
    time.sleep(0.3)  # long enough for the two runs to overlap
    return generate(*args, seed=seed, **kwargs)

experiment.generate_sweep = counted
with initialize_config_dir(conf, version_base="1.3"):
    cfg = compose("config", overrides=overrides)
Path(ready).touch()
while len(list(Path(ready).parent.glob("ready-*"))) < int(others):
    time.sleep(0.05)
experiment.run_job(cfg)
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (and chat template), saved as a model directory."""
    from tiny import tiny_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infokv.hf.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m")[0])
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    directory = tmp_path_factory.mktemp("tiny-smollm2")
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("second", [[], ["shard.count=2", "shard.index=1"]], ids=["same-job", "a-shard"])
def test_two_runs_of_one_job_compute_each_sample_once(tmp_path, tiny_model_dir, second):
    samples = 10
    common = [
        f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'runs'}", f"benchmark.limit={samples}",
        "benchmark.options.tokens=200", "max_new_tokens=4", "batch_size=1", "budget=[0.5,0.25]",
        "wandb=false", "progress=false", "model.threads=1",
    ]  # fmt: skip
    logs = [tmp_path / f"generated-{n}.txt" for n in range(2)]
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                JOB,
                str(ROOT / "infokv" / "conf"),
                str(log),
                str(tmp_path / f"ready-{n}"),
                "2",
                *common,
                *extra,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n, (log, extra) in enumerate(zip(logs, [[], second], strict=True))
    ]
    for run in runs:
        _, error = run.communicate(timeout=300)
        assert run.returncode == 0, error[-3000:]
    generated = [[int(seed) for seed in log.read_text().split()] if log.exists() else [] for log in logs]
    assert sorted(generated[0] + generated[1]) == list(range(samples)), "each sample generated once"
    assert all(generated), "both runs computed samples (they overlapped)"
    (directory,) = store.run_directories(tmp_path / "runs")
    raw = [json.loads(line) for p in directory.glob("samples*.jsonl") for line in p.read_text().splitlines()]
    keys = [record_key(r) for r in raw]
    assert len(keys) == len(set(keys)) == samples * 2, "every (sample, setting, draw) once, none lost"
