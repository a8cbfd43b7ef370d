"""Fidelity of our prefill baselines to NVIDIA kvpress 0.5.5: kept positions per (layer, KV head).

The two sides run in separate processes and environments and meet only through files:

1. ``prompts`` (project env): builds chat prompts of 1K-2K tokens with three generators (passkey, RULER
   needle, LongReason builder) and writes their token ids;
2. ``kvpress`` (kvpress's own env, ``.venv-kvpress``): runs each press on those ids with the embedded
   model (fp32, sdpa, CPU), recording each layer's scores and the indices its ``topk`` keeps;
3. ``compare`` (project env): runs our methods on the same ids (one prefill per prompt), and writes
   ``kvpress.csv`` (one row per method, budget, prompt), ``kvpress_disagreements.csv`` (one row per
   token kept by one side only, with both sides' relative score margins at the cut) and ``README.md``,
   and the oracle of ``tests/test_fidelity_kvpress.py`` (kvpress's kept positions on one prompt).

``python scripts/fidelity_kvpress.py`` (or ``make fidelity``) runs all three; the kvpress side is
started with ``--kvpress-python``. ``--methods`` runs only some settings and replaces their rows (and
oracle entries) in the files written before. Relative margin at the cut of a (layer, head):
|s_i − c| / |c|, with c the lowest kept score (forced tokens left out) on that side.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

MODEL = Path.home() / ".cache" / "infokv" / "models" / "smollm2-135m"
BUDGETS = (0.4, 0.2)
PROMPT_TOKENS = {"passkey": 1200, "ruler_niah": 1500, "longreason": 1900}

# name -> (our method and parameters, kvpress press class and parameters); a ``press`` parameter names the
# scorer press a wrapper press (AdaKVPress) wraps, built with the same compression ratio
SETTINGS: dict[str, tuple[str, dict, str, dict]] = {
    "snapkv": ("snapkv", {}, "SnapKVPress", {}),
    "streamingllm": ("streamingllm", {}, "StreamingLLMPress", {}),
    "expected_attention": ("expected_attention", {}, "ExpectedAttentionPress", {}),
    "pyramidkv": ("pyramidkv", {}, "PyramidKVPress", {}),
    "pyramidkv_window16": ("pyramidkv", {"window": 16}, "PyramidKVPress", {"window_size": 16}),
    "knorm": ("knorm", {}, "KnormPress", {}),
    "tova": ("tova", {}, "TOVAPress", {}),
    "adakv": ("adakv", {}, "AdaKVPress", {"press": "SnapKVPress"}),
}


def build_prompts(out: Path) -> None:
    """Token ids of one prompt per generator, written to ``out`` as JSON."""
    from infokv.engine.sweep import tokenize
    from infokv.eval.benchmarks import longreason, passkey, ruler_niah
    from infokv.hf.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    samples = {
        "passkey": passkey.prompt(
            passkey.load(limit=1, tokenizer=tokenizer, tokens=PROMPT_TOKENS["passkey"])[0], False, tokenizer
        ),
        "ruler_niah": ruler_niah.prompt(
            ruler_niah.load(limit=1, tokenizer=tokenizer, tokens=PROMPT_TOKENS["ruler_niah"])[0],
            False,
            tokenizer,
        ),
        "longreason": longreason.prompt(
            longreason.load(limit=1, tokenizer=tokenizer, tokens=PROMPT_TOKENS["longreason"])[0],
            True,
            tokenizer,
        ),
    }
    ids = {name: tokenize(tokenizer, [prompt.text], "prompt")[0].context for name, prompt in samples.items()}
    out.write_text(json.dumps(ids))


def build_press(kvpress, name: str, params: dict, ratio: float):
    """kvpress press ``name`` with ``params`` at ``compression_ratio`` = ``ratio``; a ``press`` parameter is
    the scorer press it wraps (which then carries the ratio)."""
    params = dict(params)
    inner = params.pop("press", None)
    if inner is None:
        return getattr(kvpress, name)(compression_ratio=ratio, **params)
    return getattr(kvpress, name)(press=getattr(kvpress, inner)(compression_ratio=ratio), **params)


def unmasked_positions(module, heads: int, length: int) -> list[torch.Tensor]:
    """Per KV head, the positions AdaKVPress left unmasked in row 0 (``module.masked_key_indices``)."""
    rows, head_index, position = module.masked_key_indices
    kept = torch.ones(heads, length, dtype=torch.bool)
    first = rows == 0
    kept[head_index[first], position[first]] = False
    return [kept[head].nonzero()[:, 0] for head in range(heads)]


def run_kvpress(prompts: Path, out: Path, names: list[str]) -> None:
    """kvpress's kept indices and scores per setting, budget, prompt and layer, saved with torch.save; kept
    indices are (H_kv, K) per layer, or one tensor per KV head for a press that masks per head."""
    import kvpress
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    results = {}
    for prompt, ids in json.loads(prompts.read_text()).items():
        input_ids = torch.tensor([ids])
        for setting in names:
            _, _, press_name, press_params = SETTINGS[setting]
            head_wise = "press" in press_params
            for budget in BUDGETS:
                press = build_press(kvpress, press_name, press_params, 1 - budget)
                scorer = press.press if head_wise else press
                layers: dict[int, dict[str, torch.Tensor]] = {}
                score, compress = scorer.score, press.compress

                def recording_score(module, *args, score=score, layers=layers):
                    scores = score(module, *args)
                    # A copy: AdaKVPress raises its safeguarded scores in place.
                    layers[module.layer_idx] = {"scores": scores[0].clone()}
                    return scores

                def recording_compress(module, *args, compress=compress, layers=layers, head_wise=head_wise):
                    keys, values = compress(module, *args)
                    record = layers[module.layer_idx]
                    if head_wise:  # the cache keeps every entry; the evicted ones are masked per head
                        record["kept"] = unmasked_positions(module, *record["scores"].shape)
                    else:  # the press's own rule: topk of these scores, as many as it kept
                        record["kept"] = record["scores"].topk(keys.shape[2], dim=-1).indices.sort(-1).values
                    return keys, values

                scorer.score, press.compress = recording_score, recording_compress
                with torch.no_grad(), press(model):
                    model(input_ids, past_key_values=DynamicCache())
                results[setting, budget, prompt] = [layers[index] for index in sorted(layers)]
                print(f"kvpress {setting} {budget} {prompt}: done", flush=True)
    torch.save(results, out)


def relative_margins(
    scores: torch.Tensor, kept: torch.Tensor, forced: torch.Tensor, at: torch.Tensor
) -> list[float]:
    """|s_i − c| / |c| at positions ``at``, c being the lowest kept score of a token that was not forced."""
    chosen = scores[kept][~forced[kept]]
    cut = float(chosen.min()) if chosen.numel() else float("nan")
    return [abs(float(scores[p]) - cut) / max(abs(cut), 1e-30) for p in at.tolist()]


def compare_head(ours: dict, theirs: dict, where: dict) -> tuple[int, int, list[dict]]:
    """Kept entries in common, the larger kept count, and one record per disagreeing token of one head.

    ``ours`` and ``theirs`` hold the head's ``kept`` positions, ``scores`` and ``forced`` mask."""
    a, b = set(ours["kept"].tolist()), set(theirs["kept"].tolist())
    records = []
    if a != b:
        differing = torch.tensor(sorted(a ^ b))
        margins = [
            relative_margins(side["scores"], side["kept"], side["forced"], differing)
            for side in (theirs, ours)
        ]
        for position, margin_kvpress, margin_ours in zip(differing.tolist(), *margins, strict=True):
            records.append(
                where | {
                    "position": position,
                    "kept_by": "ours" if position in a else "kvpress",
                    "margin_kvpress": margin_kvpress,
                    "margin_ours": margin_ours,
                }
            )
    return len(a & b), max(len(a), len(b)), records


def compare_setting(name: str, budget: float, prompt: str, ours: list[dict], theirs: list[dict]) -> tuple:
    """The CSV row of one setting and its disagreements; ``ours``/``theirs`` per layer, heads stacked."""
    agree = total = identical = heads = 0
    disagreements: list[dict] = []
    for layer, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        for head in range(len(mine["kept"])):
            where = {"method": name, "budget": budget, "prompt": prompt, "layer": layer, "head": head}
            common, larger, records = compare_head(
                {key: mine[key][head] if key != "forced" else mine[key] for key in mine},
                {key: other[key][head] if key != "forced" else other[key] for key in other},
                where,
            )
            agree, total, heads = agree + common, total + larger, heads + 1
            identical += not records
            disagreements += records
    counts = sorted({sum(len(head) for head in layer["kept"]) // len(layer["kept"]) for layer in ours})
    row = {
        "method": name,
        "budget": budget,
        "prompt": prompt,
        "tokens": int(ours[0]["forced"].shape[0]),
        "kept_per_layer": "-".join(str(count) for count in (counts[-1], counts[0])[: len(counts)]),
        "token_agreement": f"{agree / total:.6f}",
        "identical_heads": f"{identical / heads:.6f}",
        "disagreements": total - agree,
        "max_margin_kvpress": f"{max((r['margin_kvpress'] for r in disagreements), default=0.0):.3e}",
        "max_margin_ours": f"{max((r['margin_ours'] for r in disagreements), default=0.0):.3e}",
    }
    return row, disagreements


def kept_per_head(selection) -> list[torch.Tensor]:
    """Row 0's kept positions per KV head, without the sweep's filler (validity per row or per head)."""
    indices, valid = selection.indices[0], selection.valid[0]
    valid = valid.expand_as(indices) if valid.ndim == 1 else valid
    return [head[head_valid] for head, head_valid in zip(indices, valid, strict=True)]


def compare(prompts: Path, kvpress_results: Path, out: Path, names: list[str]) -> None:
    """Our kept positions and scores on the same ids (one prefill per prompt), compared with kvpress's;
    the rows of settings ``names`` replace theirs in the files already in ``out``."""
    from infokv import methods
    from infokv.engine.capture import prefill
    from infokv.engine.sweep import Setting, compress_settings
    from infokv.engine.views import PrefillView
    from infokv.hf.models import load_model
    from infokv.methods.budget import Budget
    from infokv.methods.selection import forced_mask

    theirs = torch.load(kvpress_results)
    model, _ = load_model("smollm2-135m", dtype=torch.float32, device="cpu", attn_implementation="sdpa")
    rows, disagreements = [], []
    for prompt, ids in json.loads(prompts.read_text()).items():
        input_ids = torch.tensor([ids])
        valid = torch.ones_like(input_ids, dtype=torch.bool)
        settings = [
            (name, budget, Setting.build(methods.get(ours, **params), Budget.parse(budget)))
            for name, (ours, params, _, _) in SETTINGS.items()
            if name in names
            for budget in BUDGETS
        ]
        requirements = set().union(*(setting.method.requirements() for _, _, setting in settings))
        with torch.inference_mode():
            state, captured, _ = prefill(model, input_ids, valid, requirements)
            _, selections = compress_settings(state, captured, [setting for _, _, setting in settings])
            for (name, budget, setting), chosen in zip(settings, selections, strict=True):
                method = setting.method
                forced = forced_mask(valid, method.sink, method.window)[0]
                their_forced = forced_mask(valid, *KVPRESS_FORCED[name])[0]
                ours = [
                    {
                        "kept": kept_per_head(selection),
                        "scores": method.score(PrefillView(state, captured, layer, memo={}))[0].float(),
                        "forced": forced,
                    }
                    for layer, selection in enumerate(chosen)
                ]
                other = [record | {"forced": their_forced} for record in theirs[name, budget, prompt]]
                row, found = compare_setting(name, budget, prompt, ours, other)
                rows.append(row)
                disagreements += found
                print(f"{name} {budget} {prompt}: agreement {row['token_agreement']}", flush=True)
    for record in disagreements:
        record.update({key: f"{record[key]:.3e}" for key in ("margin_kvpress", "margin_ours")})
    rows = merged(out / "kvpress.csv", rows, names)
    disagreements = merged(out / "kvpress_disagreements.csv", disagreements, names)
    write_csv(out / "kvpress.csv", rows)
    write_csv(out / "kvpress_disagreements.csv", disagreements, header=list(DISAGREEMENT_FIELDS))
    write_readme(out / "README.md", rows)


def merged(path: Path, rows: list[dict], names: list[str]) -> list[dict]:
    """``rows`` of settings ``names`` with the rows of every other setting already in CSV ``path``, by prompt
    and then setting, as a run of every setting writes them."""
    kept = []
    if path.exists():
        with path.open(newline="") as handle:
            kept = [row for row in csv.DictReader(handle) if row["method"] not in names]
    prompts, settings = list(PROMPT_TOKENS), list(SETTINGS)
    return sorted(kept + rows, key=lambda row: (prompts.index(row["prompt"]), settings.index(row["method"])))


PRESS_FORCED = {
    "SnapKVPress": (0, 64),
    "PyramidKVPress": (0, 64),
    "StreamingLLMPress": (4, 0),
    "ExpectedAttentionPress": (4, 0),
    "KnormPress": (0, 0),
    "TOVAPress": (0, 1),
}
"""(sinks, window) that each press scores at max + 1 (always kept) by default: SnapKV's and PyramidKV's
window, StreamingLLM's and ExpectedAttention's four sinks, TOVA's last token; KNorm forces none."""

KVPRESS_FORCED = {
    name: (
        PRESS_FORCED[params.get("press", press)][0],
        params.get("window_size", PRESS_FORCED[params.get("press", press)][1]),
    )
    for name, (_, _, press, params) in SETTINGS.items()
}
"""(sinks, window) forced by each setting's press (by the press it wraps, for AdaKVPress), its
``window_size`` parameter included."""


DISAGREEMENT_FIELDS = ("method", "budget", "prompt", "layer", "head", "position", "kept_by",
                       "margin_kvpress", "margin_ours")


def write_csv(path: Path, rows: list[dict], header: list[str] | None = None) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_readme(path: Path, rows: list[dict]) -> None:
    """The figures per method, the prompts, where the pyramid engaged, and the command that wrote them."""
    prompts = {row["prompt"]: row["tokens"] for row in rows}
    engaged = [f"{row['method']} {row['budget']} {row['prompt']} ({row['kept_per_layer']})"
               for row in rows if "-" in row["kept_per_layer"]]
    lines = [
        "# Fidelity to kvpress 0.5.5",
        "",
        "Written by `make fidelity` (`python scripts/fidelity_kvpress.py --kvpress-python",
        ".venv-kvpress/bin/python`): our methods and kvpress's presses, each with default parameters",
        "(`compression_ratio = 1 - budget`; `pyramidkv_window16`: `window=16` / `window_size=16`; `adakv`:",
        "`AdaKVPress(SnapKVPress())`, whose heads keep different numbers of entries), on the same token",
        "ids; SmolLM2-135M-Instruct, fp32, sdpa, CPU, each side in its own environment.",
        "Prompts (chat template, tokens): "
        + ", ".join(f"{name} {tokens}" for name, tokens in prompts.items())
        + f"; budgets {', '.join(f'{budget:.0%}' for budget in BUDGETS)}.",
        "",
        "Token agreement is the share of kept (layer, KV head, position) entries that both sides keep;",
        "identical heads the share of (layer, KV head) whose kept sets are equal. For a disagreeing",
        "token the margin is |s - c| / |c|, c being the lowest kept score of that head on that side",
        "(`kvpress_disagreements.csv` lists each such token; `kvpress.csv` has every setting). Margins of 0",
        "on both sides mark an exact tie at the cut, which kvpress's `topk` and our stable sort (earlier",
        "position first) break differently: KNorm's in the first layer, where a repeated token has the same",
        "key norm wherever it stands.",
        "",
        "| method | settings | min token agreement | min identical heads | disagreements "
        "| max margin (kvpress) |",
        "|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        mine = [row for row in rows if row["method"] == name]
        lines.append(
            f"| {name} | {len(mine)} | {min(float(r['token_agreement']) for r in mine):.4%} "
            f"| {min(float(r['identical_heads']) for r in mine):.2%} "
            f"| {sum(int(r['disagreements']) for r in mine)} "
            f"| {max(float(r['max_margin_kvpress']) for r in mine):.1e} |"
        )
    lines += [
        "",
        "PyramidKV's pyramid engaged (per-layer budgets, first to last layer) in: "
        + ("; ".join(engaged) if engaged else "none")
        + ". Elsewhere kvpress's schedule fell back to uniform budgets, and so did ours.",
        "",
    ]
    path.write_text("\n".join(lines))


ORACLE = Path("tests/data/kvpress_oracle.json")
ORACLE_SETTINGS = ("snapkv", "expected_attention", "pyramidkv_window16", "tova", "adakv")
ORACLE_PROMPT, ORACLE_BUDGET = "passkey", 0.2


def press_label(name: str, params: dict, ratio: float) -> str:
    """How :func:`build_press` builds press ``name``, e.g.
    ``AdaKVPress(press=SnapKVPress(compression_ratio=0.8))``."""
    params = dict(params)
    inner = params.pop("press", None)
    arguments = [f"{key}={value}" for key, value in params.items()]
    if inner is None:
        return f"{name}({', '.join([f'compression_ratio={ratio:g}', *arguments])})"
    return f"{name}({', '.join([f'press={press_label(inner, {}, ratio)}', *arguments])})"


def write_oracle(prompts: Path, kvpress_results: Path, path: Path, names: list[str]) -> None:
    """kvpress's kept positions on one ~1.2K-token prompt, for the test that needs no kvpress: per setting,
    layer and KV head a hexadecimal bit mask over positions (bit p set when position p is kept). Settings
    not in ``names`` keep their entries of the oracle already at ``path``."""
    results = torch.load(kvpress_results)
    before = json.loads(path.read_text())["settings"] if path.exists() else {}
    oracle = {
        "kvpress": "0.5.5",
        "model": "smollm2-135m (fp32, sdpa, CPU)",
        "prompt": ORACLE_PROMPT,
        "budget": ORACLE_BUDGET,
        "token_ids": json.loads(prompts.read_text())[ORACLE_PROMPT],
        "settings": {
            name: {
                "method": SETTINGS[name][0],
                "params": SETTINGS[name][1],
                "press": press_label(SETTINGS[name][2], SETTINGS[name][3], 1 - ORACLE_BUDGET),
                "kept": [
                    [hex(sum(1 << p for p in head.tolist())) for head in layer["kept"]]
                    for layer in results[name, ORACLE_BUDGET, ORACLE_PROMPT]
                ],
            }
            if name in names
            else before[name]
            for name in ORACLE_SETTINGS
            if name in names or name in before
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(oracle, separators=(",", ":")) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("all", "prompts", "kvpress", "compare"), default="all")
    parser.add_argument("--kvpress-python", default=".venv-kvpress/bin/python")
    parser.add_argument("--work", type=Path, default=Path("results/fidelity/work"))
    parser.add_argument("--out", type=Path, default=Path("results/fidelity"))
    parser.add_argument(
        "--methods", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="settings to run"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prompts, kvpress_results = args.work / "prompts.json", args.work / "kvpress.pt"
    if args.stage in ("all", "prompts"):
        build_prompts(prompts)
    if args.stage == "kvpress":
        run_kvpress(prompts, kvpress_results, args.methods)
    if args.stage == "all":
        command = [args.kvpress_python, __file__, "--stage", "kvpress", "--work", str(args.work)]
        subprocess.run([*command, "--methods", *args.methods], check=True)
    if args.stage in ("all", "compare"):
        compare(prompts, kvpress_results, args.out, args.methods)
        write_oracle(prompts, kvpress_results, ORACLE, args.methods)


if __name__ == "__main__":
    sys.exit(main())
