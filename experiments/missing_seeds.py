"""Does sequence dropout cost accuracy when all four sequences are present? Over several
training seeds (issue 21: at most 0.01 Dice against the ordinary model at the same budget).

For each seed, the missing study's two runs (:data:`missing_study.RUNS`: ``ordinary``, the CPU
cascade without dropout, and ``dropout_mask``, ``two_stage_missing_cpu``) are trained with the
studies' step budget (``--steps-3d``, :func:`common.step_budget`) on the same training cases,
then ``cascadeseg predict`` (final weights, no TTA, no post-processing, the recipes' label
thresholds) and ``cascadeseg evaluate`` score the held-out cases with every sequence present.
The runs are independent processes, ``--parallel`` at a time (each with ``--threads`` torch
threads), on ``--device cpu`` or ``cuda`` (several runs share one GPU).

Usage::

    python experiments/missing_seeds.py --out experiments/out/missing32 --train-cases 32 \\
        --test-cases 8 --seeds 0 1 2 --parallel 2
    python experiments/missing_seeds.py ... --device cuda --seeds 0 1 2 3 4 --parallel 10

Writes ``<out>/missing_seeds/seeds.json`` (per seed and run: steps, minutes, mean Dice WT, TC,
ET and their mean; the differences) and ``seeds.md`` (the tables; ``records.jsonl`` gets each
run's record as it ends), prints the tables, and exits 1 when a run failed (the others are still
scored; each run's log is in ``missing_seeds/logs``). A finished training run is reused when the
command is run again with the same settings.

``--from-records`` trains nothing: it summarises every run ``records.jsonl`` holds (the latest
record per run and seed; ``--seeds`` and ``--runs`` select), so the seeds of several invocations
on one ``--out`` come together in one ``seeds.json`` (give the study's settings as when training:
the records do not keep them)::

    python experiments/missing_seeds.py --out experiments/out/missing32 --from-records
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import missing_study

#: The runs trained by default (keys of :data:`missing_study.RUNS`) and the run every other is
#: compared with, seed by seed.
DEFAULT_RUNS = ("ordinary", "dropout_mask")
BASELINE = "ordinary"
REGIONS = ("wt", "tc", "et")
#: The issue's allowance: the dropout model may lose at most this much mean Dice.
ALLOWED_LOSS = 0.01
DROPOUT_RECIPE = "two_stage_missing_cpu"
DEFAULT_SEEDS = (0, 1, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The shared study options (``--seed`` unused), the runs, seeds, device and parallelism."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_settings_arguments(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help=f"training seeds (default {' '.join(map(str, DEFAULT_SEEDS))}; with "
        "--from-records: every seed recorded)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", nargs="+", default=list(DEFAULT_RUNS),
        help="runs to train per seed: ordinary, dropout_mask, dropout_zero or a --variant name",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help=f"a run of {DROPOUT_RECIPE} with these overrides (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--missing", nargs="+", default=[], metavar="SEQ[,SEQ]",
        help="also score each sequence-dropout run without these sequences (predict --missing); "
        "one set per argument",
    )  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--from-records", action="store_true",
        help="train nothing: summarise the runs recorded in <out>/missing_seeds/records.jsonl",
    )  # fmt: skip
    return parser.parse_args(argv)


def run_specs(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """``{run name: (recipe, overrides)}`` of ``--runs``: the missing study's runs and the
    ``--variant`` ones.

    Raises:
        RuntimeError: a run name that is neither.
    """
    specs = dict(missing_study.RUNS)
    for text in args.variant:
        name, _, overrides = text.partition("=")
        if not name or not overrides:
            raise RuntimeError(f"--variant {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE]")
        specs[name] = (DROPOUT_RECIPE, overrides.split(","))
    unknown = [r for r in args.runs if r not in specs]
    if unknown:
        raise RuntimeError(f"unknown run(s) {unknown}: known {sorted(specs)}")
    return {r: specs[r] for r in args.runs}


def run_cli(argv: list[str], log: Path, threads: int) -> float:
    """``cascadeseg ARGV`` in a subprocess with ``threads`` torch threads, output appended to
    ``log``; its wall seconds.

    Raises:
        RuntimeError: a non-zero exit status, with the log's last line.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with log.open("a") as stream:
        stream.write(f"$ {common.command_line(argv)}\n")
        stream.flush()
        code = subprocess.run(
            [sys.executable, "-m", "cascadeseg", *argv], stdout=stream, stderr=subprocess.STDOUT,
            env=env, check=False,
        ).returncode  # fmt: skip
    if code != 0:
        lines = log.read_text().strip().splitlines()
        raise RuntimeError(f"cascadeseg {argv[0]} exited {code}: {lines[-1] if lines else ''}")
    return time.perf_counter() - start


def train_argv(
    settings: common.Settings, key: str, spec: tuple[str, list[str]], seed: int, device: str
) -> list[str]:
    """The ``cascadeseg train`` arguments of run ``key`` (``spec``: recipe and overrides) with
    ``seed``, as the missing study trains it (:func:`common.train_run`), on ``device``."""
    from cascadeseg.config import load_config

    recipe, overrides = spec
    cfg = load_config(recipe, [*overrides, *settings.overrides])
    plan = common.step_budget(
        settings.steps_3d, 3, cfg.train.iters_per_epoch, cfg.train.snapshots, cfg.train.val_every
    )
    run_dir = settings.out / "runs" / f"seeds_{key}_s{seed}"
    return [
        "train", recipe, "--no-progress", "--data", str(settings.train_dir), "--out", str(run_dir),
        "data.split=kfold", *plan.overrides(), f"seed={seed}", *overrides, *settings.overrides,
        f"train.device={device}",
    ]  # fmt: skip


def warm_cache(settings: common.Settings, specs: dict[str, tuple[str, list[str]]]) -> None:
    """Preprocess the training cases once, ``settings.workers`` at a time, into the cache every
    run reads (the recipes preprocess alike: the later ones reuse it), so parallel runs do not
    each preprocess them."""
    from cascadeseg.config import load_config
    from cascadeseg.training.data import warm_training_cache

    for recipe, overrides in specs.values():
        data = load_config(recipe, [*overrides, *settings.overrides]).data
        result = warm_training_cache(
            settings.train_dir, data, workers=settings.workers, progress=settings.progress
        )
        if result.failed:
            raise RuntimeError(
                f"{settings.train_dir}: {len(result.failed)} case(s) failed to preprocess"
            )


def finished_before(record: Path, argv: list[str]) -> bool:
    """Whether ``record`` says this very command finished (a rerun reuses it)."""
    return record.is_file() and json.loads(record.read_text()).get("command") == argv


def one_run(
    settings: common.Settings,
    key: str,
    spec: tuple[str, list[str]],
    seed: int,
    args: argparse.Namespace,
) -> dict:
    """Train, predict and evaluate one (run, seed), with every sequence and, for a run with
    sequence dropout, without each ``--missing`` set; its record (on failure: ``error``)."""
    argv = train_argv(settings, key, spec, seed, args.device)
    run_dir = Path(argv[argv.index("--out") + 1])
    log = settings.out / "missing_seeds" / "logs" / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"run": key, "seed": seed, "overrides": spec[1], "log": str(log)}
    try:
        done = run_dir / "seeds_run.json"
        if not finished_before(done, argv):
            if run_dir.exists():  # another or an unfinished run (as common.train_run does)
                shutil.rmtree(run_dir)
            seconds = run_cli(argv, log, args.threads)
            common.write_json(done, {"command": argv, "wall_seconds": seconds})
        record["train_minutes"] = json.loads(done.read_text())["wall_seconds"] / 60
        record["steps"] = training_steps(run_dir)
        record["dice"] = score(settings, run_dir, None, log, args)
        if spec[0] == DROPOUT_RECIPE:
            record["missing"] = {m: score(settings, run_dir, m, log, args) for m in args.missing}
    except Exception as error:  # a failed run is recorded, the others go on
        record["error"] = str(error)
    print(f"{run_dir.name}: " + (record.get("error") or f"{record['dice']}"), flush=True)
    with (log.parent.parent / "records.jsonl").open("a") as stream:  # as each run ends
        stream.write(json.dumps(record) + "\n")
    return record


def score(
    settings: common.Settings, run_dir: Path, missing: str | None, log: Path, args: Any
) -> dict[str, float]:
    """Mean Dice of the run's final weights on the held-out cases without ``missing`` (``None``:
    every sequence): ``cascadeseg predict`` (no TTA, no post-processing), then ``evaluate``."""
    name = run_dir.name + (f"_no_{missing.replace(',', '_')}" if missing else "")
    pred, ev = settings.out / "pred" / name, settings.out / "eval" / name
    predict = ["predict", "--model", str(run_dir / "checkpoints" / "last.pt")]
    predict += ["--input", str(settings.test_dir), "--output", str(pred), "--no-tta"]
    predict += ["--et-min-voxels", "0", "--min-lesion-voxels", "0", "--device", args.device]
    predict += ["--overwrite", "--no-progress"] + (["--missing", missing] if missing else [])
    run_cli(predict, log, args.threads)
    evaluate = ["evaluate", "--pred", str(pred), "--ref", str(settings.test_dir)]
    evaluate += ["--out", str(ev), "--no-report", "--no-progress"]
    run_cli(evaluate, log, args.threads)
    return mean_dice(ev / "summary.json")


def training_steps(run_dir: Path) -> int:
    """The optimiser steps a finished run made (its ``summary.json``)."""
    return int(json.loads((run_dir / "summary.json").read_text())["steps"])


def mean_dice(summary_path: Path) -> dict[str, float]:
    """``{wt, tc, et, mean}``: the evaluation's mean Dice per region and their mean."""
    metrics = json.loads(summary_path.read_text())["metrics"]
    dice = {r: float(metrics[f"dice_{r}"]["mean"]) for r in REGIONS}
    dice["mean"] = sum(dice.values()) / len(REGIONS)
    return dice


def average(values: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of equal-keyed dicts."""
    return {k: sum(v[k] for v in values) / len(values) for k in values[0]}


def compare(records: list[dict], runs: list[str]) -> dict[str, Any]:
    """Per run, over the seeds it finished: mean Dice with every sequence and without each
    ``--missing`` set; against :data:`BASELINE` (seeds where both finished): the mean
    difference per region, the worst seed's and how many seeds lose at most
    :data:`ALLOWED_LOSS` of mean Dice."""
    by = {(r["seed"], r["run"]): r for r in records if "dice" in r}
    out: dict[str, Any] = {}
    for run in runs:
        mine = [r for r in records if r["run"] == run and "dice" in r]
        if not mine:
            out[run] = {"seeds": 0}
            continue
        entry: dict[str, Any] = {"seeds": len(mine), "dice": average([r["dice"] for r in mine])}
        sets = mine[0].get("missing") or {}
        entry["missing"] = {m: average([r["missing"][m] for r in mine]) for m in sets}
        pairs = [(by[(r["seed"], BASELINE)]["dice"], r["dice"]) for r in mine
                 if (r["seed"], BASELINE) in by and run != BASELINE]  # fmt: skip
        if pairs:
            diffs = [{k: b[k] - a[k] for k in a} for a, b in pairs]
            entry["difference"] = average(diffs)
            entry["worst_difference"] = min(d["mean"] for d in diffs)
            entry["seeds_within"] = sum(d["mean"] >= -ALLOWED_LOSS for d in diffs)
            entry["paired_seeds"] = len(diffs)
        out[run] = entry
    return out


def table(records: list[dict], runs: list[str], summary: dict[str, Any]) -> str:
    """Markdown: mean Dice (WT/TC/ET averaged) with every sequence per seed and run, then per
    run the means over the seeds, the differences and the ``--missing`` sets."""
    by = {(r["seed"], r["run"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    lines = ["| seed | " + " | ".join(runs) + " |", "|---:|" + "---:|" * len(runs)]
    for seed in seeds:
        cells = []
        for run in runs:
            r = by.get((seed, run), {})
            cells.append(f"{r['dice']['mean']:.3f}" if "dice" in r else "failed")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    sets = sorted({m for e in summary.values() for m in e.get("missing", {})})
    head = ["run", "seeds", "WT", "TC", "ET", "mean", f"- {BASELINE}", "worst seed", "within"]
    lines += ["", "| " + " | ".join(head + [f"no {m}" for m in sets]) + " |"]
    lines.append("|---|" + "---:|" * (len(head) - 1 + len(sets)))
    for run in runs:
        e = summary[run]
        if not e.get("seeds"):
            lines.append(f"| {run} | 0 |" + " |" * (len(head) - 2 + len(sets)))
            continue
        cells = [run, str(e["seeds"])] + [f"{e['dice'][k]:.3f}" for k in (*REGIONS, "mean")]
        if "difference" in e:
            cells += [f"{e['difference']['mean']:+.3f} (WT {e['difference']['wt']:+.3f}, TC "
                      f"{e['difference']['tc']:+.3f}, ET {e['difference']['et']:+.3f})",
                      f"{e['worst_difference']:+.3f}",
                      f"{e['seeds_within']} of {e['paired_seeds']}"]  # fmt: skip
        else:
            cells += ["—", "—", "—"]
        cells += [f"{e['missing'][m]['mean']:.3f}" if m in e["missing"] else "—" for m in sets]
        lines.append("| " + " | ".join(cells) + " |")
    note = f"(mean Dice of WT, TC, ET; 'within': seeds losing at most {ALLOWED_LOSS} against "
    return "\n".join(lines) + f"\n\n{note}{BASELINE} with every sequence)\n"


def recorded(path: Path, runs: list[str], seeds: list[int] | None) -> list[dict]:
    """The latest record per (run, seed) in a ``records.jsonl`` (in file order: a run trained
    again replaces its earlier record), of ``runs`` and, unless ``None``, ``seeds``.

    Raises:
        RuntimeError: no such file, or a line that is not JSON.
    """
    if not path.is_file():
        raise RuntimeError(f"{path}: no records (run the study first)")
    latest: dict[tuple[int, str], dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RuntimeError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if record.get("run") in runs and (seeds is None or record.get("seed") in seeds):
            latest[(record["seed"], record["run"])] = record
    return [latest[key] for key in sorted(latest, key=lambda k: (k[0], runs.index(k[1])))]


def train_all(
    settings: common.Settings, specs: dict[str, tuple[str, list[str]]], args: argparse.Namespace
) -> list[dict]:
    """Every (run, seed) of ``args``: the data, then the runs ``--parallel`` at a time."""
    common.banner("missing seeds: data")
    common.prepare_data(settings)
    warm_cache(settings, specs)
    seeds = args.seeds or list(DEFAULT_SEEDS)
    jobs = [(key, seed) for seed in seeds for key in specs]
    common.banner(f"missing seeds: {len(jobs)} runs, {args.parallel} at a time on {args.device}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        return list(
            pool.map(lambda job: one_run(settings, job[0], specs[job[0]], job[1], args), jobs)
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = common.settings_from_args(args)
    specs = run_specs(args)
    out = settings.out / "missing_seeds"
    start = time.perf_counter()
    if args.from_records:
        records = recorded(out / "records.jsonl", list(specs), args.seeds)
    else:
        records = train_all(settings, specs, args)
    summary = compare(records, list(specs))
    given = sys.argv[1:] if argv is None else argv
    result = {
        "study": "missing_seeds",
        "command": "python experiments/missing_seeds.py " + shlex.join(given),
        "settings": settings.as_dict(),
        # summarised from records: the machine that trained is not this one
        "environment": None if args.from_records else common.environment(),
        "from_records": args.from_records,
        "device": args.device,
        "parallel": args.parallel,
        "threads": args.threads,
        "wall_minutes": None if args.from_records else (time.perf_counter() - start) / 60,
        "runs": records,
        "summary": summary,
    }
    common.write_json(out / "seeds.json", result)
    text = table(records, list(specs), summary)
    (out / "seeds.md").write_text(text)
    print("\n" + text)
    failed = [f"{r['run']} seed {r['seed']}" for r in records if "error" in r]
    if failed:  # main_guard: a one-line error and exit status 1
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see {out}/logs)")


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
