"""Bad input, given as a hostile user would: each case must end in one line naming the value and what is
allowed, a non-zero exit status, no traceback unless asked (``verbose=true`` or ``HYDRA_FULL_ERROR=1``),
no empty run directory, and no model load where the value is knowable before it.

The ``infokv-run`` table runs in one child process (this file is its driver when run as a script):
each row calls the console script's ``main`` with the row's command line, with stderr captured and
``SystemExit`` taken as the exit status, as the interpreter would report it. Two rows are also run as
real ``infokv-run`` processes to show the driver sees what a shell sees. The API table runs in-process
on a tiny random model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import torch

import infokv
from infokv import methods

ROOT = Path(__file__).resolve().parent.parent
PASSKEY = {
    "id": "a",
    "context": "The pass key is 31415. Remember it.",
    "question": "What is it?",
    "answer": "31415",
}
# Enough for a job to run: a short generated passkey prompt and two new tokens.
QUICK = {
    "benchmark.options.tokens": "300",
    "max_new_tokens": "2",
    "benchmark.limit": "2",
    "wandb": "false",
    "progress": "false",
}
ERROR_PREFIX = "infokv-run: error: "


@dataclass
class Case:
    """One bad ``infokv-run`` command line and the fragment its error line must contain."""

    name: str
    overrides: list[str]
    message: str
    loads_model: bool = False  # the error can only be known once the model is there
    traceback: bool = False  # verbose=true / HYDRA_FULL_ERROR=1 asked for one
    env: dict[str, str] = field(default_factory=dict)
    file_size_limit: int | None = None  # RLIMIT_FSIZE in bytes: a disk that takes no more


def data_files(folder: Path) -> dict[str, Path]:
    """Local passkey files, each wrong in one way (and one right one)."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        "good.jsonl": [PASSKEY, {**PASSKEY, "id": "b"}],
        "empty.jsonl": [],
        "duplicate.jsonl": [PASSKEY, {**PASSKEY, "context": "Another text, key 27182.", "answer": "27182"}],
        "blank_answer.jsonl": [{**PASSKEY, "answer": ""}],
        "duplicate_blank.jsonl": [PASSKEY, {**PASSKEY, "answer": " "}],
        "list_question.jsonl": [{**PASSKEY, "question": ["What", "is it?"]}],
        "object_answer.jsonl": [{**PASSKEY, "answer": {"value": 31415}}],
        "missing_answer.jsonl": [{k: v for k, v in PASSKEY.items() if k != "answer"}],
        "empty_context.jsonl": [{**PASSKEY, "context": ""}],
    }
    paths = {}
    for name, records in contents.items():
        paths[name] = folder / name
        paths[name].write_text("".join(json.dumps(record) + "\n" for record in records))
    paths["broken.jsonl"] = folder / "broken.jsonl"
    paths["broken.jsonl"].write_text(json.dumps(PASSKEY) + "\n{not json\n")
    paths["a_file"] = folder / "a_file"
    paths["a_file"].write_text("not a directory\n")
    return paths


def corrupt_model(folder: Path) -> Path:
    """A tiny model directory whose safetensors file is cut in half."""
    from conftest import char_tokenizer
    from tiny import tiny_model

    tiny_model().save_pretrained(folder)
    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def source(name: str) -> str:
    """The override reading the local file ``name`` of :func:`data_files` (``{data}`` is filled in later)."""
    return f"benchmark.source={{data}}/{name}"


def cli_cases() -> list[Case]:
    """The ``infokv-run`` table; ``{data}``, ``{model}`` and ``{tmp}`` in overrides are filled in per run."""
    decode = ["scenario=decode", "method=rpc"]
    decode_infokv = ["scenario=decode", "method=infokv"]
    return [
        # -- ran and exited 0 with wrong or empty results
        Case("limit_0", ["benchmark.limit=0"], "benchmark.limit 0 is not allowed; use an integer >= 1"),
        Case("limit_negative", ["benchmark.limit=-1"], "benchmark.limit -1 is not allowed"),
        Case("file_limit_negative", [source("good.jsonl"), "benchmark.limit=-1"], "benchmark.limit -1"),
        Case("empty_jsonl", [source("empty.jsonl")], "empty.jsonl: no samples"),
        Case("duplicate_ids", [source("duplicate.jsonl")], "sample id 'a' appears twice (samples 1 and 2)"),
        Case("blank_answer", [source("blank_answer.jsonl")], "field 'answer' is empty"),
        Case("duplicate_with_blank_answer", [source("duplicate_blank.jsonl")], "field 'answer' is empty"),
        Case("batch_size_negative", ["batch_size=-1"], "batch_size -1 is not allowed; use an integer >= 1"),
        Case("samples_0", ["scenario.samples=0"], "scenario.samples 0 is not allowed"),
        Case("cot_maybe", ["cot=maybe"], "cot 'maybe' is not allowed; use true or false"),
        Case("cot_number", ["cot=0.5"], "cot 0.5 is not allowed; use true or false"),
        Case("progress_maybe", ["progress=maybe"], "progress 'maybe' is not allowed"),
        Case(
            "shard_without_samples",
            ["benchmark.limit=1", "shard.count=2", "shard.index=1"],
            "gets no samples",
        ),
        # -- ended in an unclear traceback
        Case(
            "truncated_safetensors",
            ["model.name={model}"],
            "model.safetensors: corrupt or truncated",
            loads_model=True,
        ),
        Case("device_without_cuda", ["model.device=cuda:99"], "model.device 'cuda:99'"),
        Case("device_nonsense", ["model.device=gpu0"], "model.device 'gpu0' is not a device"),
        Case("batch_size_0", ["batch_size=0"], "batch_size 0 is not allowed"),
        Case("seed_text", ["seed=abc"], "seed 'abc' is not allowed; use an integer"),
        Case("field_list", [source("list_question.jsonl")], "field 'question' must be text, got list"),
        Case("field_object", [source("object_answer.jsonl")], "field 'answer' must be text, got dict"),
        Case("output_dir_is_file", ["output_dir={data}/a_file"], "is a file; give a directory"),
        Case("output_dir_below_file", ["output_dir={data}/a_file/runs"], "is a file; give a directory"),
        Case(
            "empty_context",
            [source("empty_context.jsonl"), "scenario.compress=context_only"],
            "field 'context' is empty",
        ),
        # -- clear messages that came at the end of a Hydra traceback: every check of check_job
        Case("prefill_with_decode_method", ["method=rpc"], "cannot compress a prefill"),
        Case("unknown_parameter", ["+methods.snapkv.alpha_typo=1"], "has no parameter alpha_typo"),
        Case("method_parameter_range", ["methods.snapkv.window=-1"], "window"),
        Case(
            "method_parameter_type",
            ["methods.snapkv.kernel=abc"],
            "methods.snapkv.kernel 'abc' is not allowed",
        ),
        Case(
            "method_number_type", ["method=infokv", "methods.infokv.alpha=abc"], "methods.infokv.alpha 'abc'"
        ),
        Case(
            "variant_number_type",
            ["+methods.variant={{name:infokv,alpha:abc}}"],
            "methods.variant.alpha 'abc' is not allowed; use a number",
        ),
        Case("variant_without_name", ["+methods.variant={{alpha:0.5}}"], "methods.variant {'alpha': 0.5}"),
        Case("no_methods", ["method=[]"], "methods is empty"),
        Case("unknown_key", ["budgets=0.5"], "budgets is not a configuration key"),
        Case("unknown_config", ["model=nope"], "Could not find 'model/nope'; available: hf,"),
        Case("model_without_name", ["model=hf"], "model.name has no value"),
        Case("budget_above_one", ["budget=1.5"], "budget 1.5 is not allowed"),
        Case("budget_text", ["budget=abc"], "budget 'abc' is not allowed"),
        Case("budget_empty", ["budget=[]"], "budget is empty"),
        Case("budget_below_floor", ["budget=8"], "below sink + window"),
        Case("decode_budget", [*decode, "budget=2"], "the decode scenario takes ratios"),
        Case("unknown_benchmark", ["benchmark.name=nope"], "unknown benchmark 'nope'"),
        Case(
            "unknown_benchmark_option",
            ["+benchmark.options.depth=3"],
            "benchmark.options.depth is not an option",
        ),
        Case(
            "option_type", ["benchmark.options.tokens=abc"], "benchmark.options.tokens 'abc' is not allowed"
        ),
        Case("option_range", ["benchmark.options.tokens=0"], "tokens 0 is too small"),
        Case("shard_index", ["shard.index=3"], "shard.index 3 must be in [0, 1)"),
        Case("shard_count", ["shard.count=0"], "count must be an integer >= 1"),
        Case("wandb_mode", ["wandb=maybe"], "wandb mode 'maybe' is not allowed"),
        Case("compress_mode", ["scenario.compress=middle"], "scenario.compress 'middle' is not allowed"),
        Case("scenario_name", ["scenario.name=other"], "scenario.name 'other' is not allowed"),
        Case("dtype", ["model.dtype=int8"], "model.dtype 'int8' is not allowed"),
        Case("attention", ["model.attn_implementation=eager"], "model.attn_implementation 'eager'"),
        *(  # a row only where flash-attn is not installed
            [Case("flash_attention_missing", ["model.attn_implementation=flash_attention_2"], "flash-attn")]
            if importlib.util.find_spec("flash_attn") is None
            else []
        ),
        Case("threads", ["model.threads=0"], "model.threads 0 is not allowed"),
        Case("temperature", ["scenario.temperature=-1"], "scenario.temperature -1"),
        Case("top_p", ["scenario.top_p=0"], "scenario.top_p 0.0 is not allowed; use a number in (0, 1]"),
        Case("prefill_chunk", ["scenario.prefill_chunk=0"], "scenario.prefill_chunk 0"),
        Case("cuda_graphs", ["scenario.cuda_graphs=maybe"], "scenario.cuda_graphs 'maybe'"),
        Case("max_new_tokens_0", ["max_new_tokens=0"], "max_new_tokens 0 is not allowed"),
        Case("compress_every", [*decode, "scenario.compress_every=0"], "scenario.compress_every 0"),
        Case("fidelity_tokens", [*decode, "scenario.fidelity_tokens=0"], "scenario.fidelity_tokens 0"),
        Case("never_compressed", [*decode, "max_new_tokens=8"], "compress_every 1024 exceeds max_new_tokens"),
        Case(
            "ratio_never_binds",
            [*decode_infokv, "budget=0.125", "scenario.compress_every=64", "max_new_tokens=99"],
            "methods.infokv: infokv's window of 64 entries exceeds the 8 that ratio 0.125 keeps of 64",
        ),
        Case(
            "compress_prompt", [*decode, "scenario.compress_prompt=maybe"], "scenario.compress_prompt 'maybe'"
        ),
        Case("verbose_maybe", ["verbose=maybe"], "verbose 'maybe' is not allowed"),
        Case("interpolation", ["max_new_tokens=${{nope}}"], "nope"),
        Case("deleted_key", ["~seed"], "seed"),
        Case("unknown_method", ["methods.snapkv.name=nope"], "unknown method 'nope'"),
        Case("empty_model_name", ["model.name="], "model.name '' is not allowed; use a non-empty string"),
        Case("empty_source", ["benchmark.source="], "benchmark.source '' is not allowed"),
        Case("empty_output_dir", ["output_dir="], "output_dir '' is not allowed"),
        Case("empty_wandb_project", ["wandb_project="], "wandb_project '' is not allowed"),
        Case("unknown_model", ["model.name=not a model"], "unknown model 'not a model'"),
        Case("unreachable_hub_model", ["model.name=nobody/nothing"], "model 'nobody/nothing': cannot load"),
        Case("unknown_source", ["benchmark.source=nowhere"], "nowhere: no such data file"),
        Case("missing_file", ["benchmark.source={tmp}/missing.jsonl"], "missing.jsonl: no such data file"),
        Case("broken_json", [source("broken.jsonl")], "broken.jsonl:2: not valid JSON"),
        Case("missing_field", [source("missing_answer.jsonl")], "missing field 'answer'"),
        Case("generation_beyond_context", ["max_new_tokens=9000"], "leaves no room for a prompt"),
        # -- knowable only with the model: one line, and no run directory left
        Case("prompt_beyond_context", ["max_new_tokens=8000"], "> the model's context", loads_model=True),
        Case(
            "disk_full",
            ["benchmark.limit=1"],
            "File too large while writing to",
            loads_model=True,
            file_size_limit=1500,
        ),
        # -- a traceback when asked for one
        Case("verbose_traceback", ["verbose=true", "batch_size=0"], "batch_size 0", traceback=True),
        Case(
            "hydra_full_error",
            ["batch_size=0"],
            "batch_size 0",
            traceback=True,
            env={"HYDRA_FULL_ERROR": "1"},
        ),
    ]


def command_line(case: Case, folder: Path) -> list[str]:
    """The row's overrides, the quick defaults it does not set, and its own output and Hydra folders."""
    given = {override.lstrip("+~").split("=")[0] for override in case.overrides}
    quick = [f"{key}={value}" for key, value in QUICK.items() if key not in given]
    own = [] if "output_dir" in given else [f"output_dir={folder / 'runs'}"]
    hydra = [f"hydra.run.dir={folder / 'hydra'}", "hydra.output_subdir=null"]
    return [*case.overrides, *quick, *own, *hydra]


def drive(cases: list[dict], root: Path) -> list[dict]:
    """Run each case through ``infokv.eval.cli.main`` in this process (see the module docstring)."""
    from infokv.eval import cli, runner

    loads = []
    real = runner.load_weights

    def traced(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    runner.load_weights = traced
    results = []
    for index, raw in enumerate(cases):
        case = Case(**raw)
        folder = root / f"case-{index}"
        sys.argv = ["infokv-run", *command_line(case, folder)]
        loads.clear()
        captured = io.StringIO()
        previous = {key: os.environ.get(key) for key in case.env}
        os.environ.update(case.env)
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        if case.file_size_limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit, limits[1]))
        status: int | str | None = 0
        start = time.perf_counter()
        try:
            with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(io.StringIO()):
                cli.main()
        except SystemExit as exit_:
            status = exit_.code
        except Exception:  # noqa: BLE001 - uncaught, as the interpreter would report it
            captured.write(traceback.format_exc())
            status = 1
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            for key, value in previous.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        stderr = captured.getvalue() + (f"{status}\n" if isinstance(status, str) else "")
        runs = folder / "runs"
        results.append(
            {
                "status": 1 if isinstance(status, str) else status,
                "stderr": stderr,
                "loaded": bool(loads),
                "seconds": time.perf_counter() - start,
                "left": sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) if runs.exists() else [],
            }
        )
    return results


CLI_CASES = cli_cases()


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, dict]:
    """Every row of :data:`CLI_CASES` run by one child process, by case name."""
    tmp = tmp_path_factory.mktemp("bad_input")
    data_files(tmp / "data")
    places = {"data": tmp / "data", "model": corrupt_model(tmp / "model"), "tmp": tmp}
    cases = [
        asdict(case) | {"overrides": [override.format(**places) for override in case.overrides]}
        for case in CLI_CASES
    ]
    (tmp / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        [sys.executable, __file__, str(tmp / "cases.json"), str(tmp / "results.json"), str(tmp / "jobs")],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent), "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp / "results.json").read_text())
    return {case.name: result for case, result in zip(CLI_CASES, results, strict=True)}


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_bad_command_line_fails_in_one_line(cli_results, case):
    result = cli_results[case.name]
    errors = [line for line in result["stderr"].splitlines() if line.startswith(ERROR_PREFIX)]
    assert result["status"] not in (0, None), "exited 0"
    assert result["left"] == [], f"left in output_dir: {result['left']}"
    if case.traceback:
        assert "Traceback" in result["stderr"] and case.message in result["stderr"]
        return
    assert len(errors) == 1 and case.message in errors[0], result["stderr"][-1500:]
    assert "Traceback" not in result["stderr"]
    if not case.loads_model:
        assert result["stderr"].strip() == errors[0], "more than one line"
    assert result["loaded"] == case.loads_model, f"model loaded: {result['loaded']}"


def test_table_names_every_case_once():
    assert len({case.name for case in CLI_CASES}) == len(CLI_CASES)


@pytest.mark.parametrize("verbose", [False, True])
def test_infokv_run_itself_prints_one_line_or_the_traceback_asked_for(tmp_path, verbose):
    script = Path(sys.executable).parent / "infokv-run"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "infokv.eval.cli"]
    case = Case("real", ["batch_size=0", f"verbose={str(verbose).lower()}"], "batch_size 0")
    done = subprocess.run(
        [*command, *command_line(case, tmp_path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 1
    if verbose:
        assert "Traceback" in done.stderr and "batch_size 0 is not allowed" in done.stderr
    else:
        assert done.stderr == f"{ERROR_PREFIX}batch_size 0 is not allowed; use an integer >= 1\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_output_dir_is_one_line_before_any_work(tmp_path):
    from infokv.eval.runner import check_output_dir

    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    with pytest.raises(ValueError, match=r"read_only is not writable \(read-only or no permission\)$"):
        check_output_dir(str(folder / "runs"))


# ---- the Python API ------------------------------------------------------------------------------------

PROMPTS = ["hello there, how are you today?"]


def api_cases(model, tokenizer) -> list[tuple[str, Callable[[], object], str]]:
    """``(name, call, fragment of its one-line error)`` for bad calls of the public API; the unknown
    method, budgets out of range, and bad sampling and compress options of ``generate`` are rows of
    ``tests/test_engine.py``'s table."""
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    vocabulary = model.get_input_embeddings().num_embeddings

    def generate(prompts=PROMPTS, method="snapkv", budget=0.5, max_new_tokens=2, **options):
        return lambda: infokv.generate(model, tokenizer, prompts, method, budget, max_new_tokens, **options)

    def sweep(settings):
        return lambda: infokv.generate_sweep(model, tokenizer, PROMPTS, settings, max_new_tokens=2)

    def squeeze(input_ids, budget=0.5, **options):
        return lambda: infokv.compress(model, input_ids, "snapkv", budget, **options)

    def decoding(**options):
        return generate(method="full", budget=1.0, **options)

    return [
        ("prompts_string", generate(prompts="abc"), "prompts must be a non-empty list"),
        ("prompts_empty", generate(prompts=[]), "prompts must be a non-empty list"),
        ("prompt_number", generate(prompts=[5]), "prompt 0 is a int"),
        ("method_number", generate(method=3), "unknown method 3"),
        ("budget_none", generate(budget=None), "budget None is not allowed"),
        ("budget_nan", generate(budget=float("nan")), "budget nan is not allowed"),
        ("budget_bool", generate(budget=True), "budget True is not allowed"),
        ("budget_below_floor", squeeze(ids, budget=3), "below sink + window"),
        ("max_new_tokens_text", generate(max_new_tokens="5"), "max_new_tokens '5' is not allowed"),
        ("max_new_tokens_float", generate(max_new_tokens=2.5), "max_new_tokens 2.5 is not allowed"),
        ("temperature_text", generate(temperature="hot"), "temperature 'hot' is not allowed"),
        ("seed_text", generate(seed="abc"), "seed 'abc' is not allowed"),
        ("seed_count", generate(seed=[1, 2]), "seed has 2 values for 1 prompts"),
        ("context_only_empty", generate(prompts=[("", "What?")], compress="context_only"), "empty context"),
        ("batch_size_zero", generate(batch_size=0), "batch_size 0 is not allowed"),
        ("batch_size_negative", generate(batch_size=-1), "batch_size -1 is not allowed"),
        ("samples_zero", generate(samples=0), "samples 0 must be an integer >= 1"),
        ("prefill_chunk_zero", generate(prefill_chunk=0), "prefill_chunk 0 must be >= 1"),
        ("decode_prefill_only", decoding(decode_method="pyramidkv"), "cannot compress while decoding"),
        ("decode_ratio", decoding(decode_method="rpc", decode_ratio=2), "decode ratio 2 is not allowed"),
        ("compress_every", decoding(decode_method="rpc", compress_every=0), "compress_every 0 must be"),
        ("compress_prompt", decoding(decode_method="rpc", compress_prompt="yes"), "compress_prompt 'yes'"),
        ("stop_at_eos", generate(stop_at_eos=1), "stop_at_eos 1 is not allowed; use true or false"),
        ("fidelity_tokens", generate(fidelity_tokens=0), "fidelity_tokens 0 is not allowed"),
        ("settings_empty", sweep([]), "settings must be a non-empty list"),
        ("settings_string", sweep("snapkv"), "settings must be a non-empty list"),
        ("setting_short", sweep([("snapkv",)]), "is not (method, budget)"),
        ("ids_above_vocabulary", squeeze(torch.full((1, 40), vocabulary)), f"token id {vocabulary}"),
        ("ids_negative", squeeze(torch.full((1, 40), -1)), "token id -1"),
        ("ids_float", squeeze(ids.float()), "dtype torch.float32"),
        ("ids_one_dimensional", squeeze(ids[0]), "expected (batch, tokens)"),
        ("ids_empty", squeeze(ids[:, :0]), "expected (batch, tokens)"),
        ("mask_shape", squeeze(ids, attention_mask=torch.ones(1, 3)), "attention_mask has shape (1, 3)"),
        ("model_none", lambda: infokv.compress(None, ids, "snapkv", 0.5), "model is a NoneType"),
        ("get_unknown", lambda: methods.get("nope"), "unknown method 'nope'"),
        ("get_parameter", lambda: methods.get("snapkv", foo=1), "has no parameter foo"),
        ("get_window", lambda: methods.get("snapkv", window=-1), "window"),
        ("get_alpha", lambda: methods.get("infokv", alpha=2.0), "alpha"),
        ("get_pooling", lambda: methods.get("snapkv", pooling="median"), "pooling 'median'"),
        ("load_unknown", lambda: infokv.load_model("not a model"), "unknown model 'not a model'"),
        ("load_device", lambda: infokv.load_model("smollm2-135m", device="cuda:99"), "device 'cuda:99'"),
    ]


API_ROWS = 41


@pytest.mark.parametrize("row", range(API_ROWS))
def test_bad_api_call_fails_in_one_line(llama, tokenizer, row):
    name, call, message = api_cases(llama, tokenizer)[row]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text, f"{name}: {text}"


def test_api_table_has_every_row(llama, tokenizer):
    assert len(api_cases(llama, tokenizer)) == API_ROWS


if __name__ == "__main__":
    cases_file, results_file, jobs = sys.argv[1:4]
    Path(results_file).write_text(json.dumps(drive(json.loads(Path(cases_file).read_text()), Path(jobs))))
