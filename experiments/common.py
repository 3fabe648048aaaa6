"""Shared plumbing of the studies: data, training, prediction, evaluation and provenance.

Every step runs the real ``cascadeseg`` command line in this process (``cascadeseg.cli.main``)
with the exact arguments that are written to ``<out>/commands.log`` and into each study's
``study.json``, so the documented commands are the ones that ran, and anyone can replay them
one by one in a shell.

Layout of ``<out>`` (default ``experiments/out``, git-ignored)::

    data/train/      synthetic training cases (BraTS 2021 layout, seed --data-seed)
    data/test/       held-out cases (BraTS 2023 layout, seed --data-seed + 100000, so their
                     ids, BraTS-GLI-*, can never be confused with the training ids)
    runs/<name>/     one training run per method (reused when the same command already ran)
    pred/<name>/     predicted label maps of the held-out cases
    eval/<name>/     metrics.csv + summary.json per condition
    <study>/         compare output (table.md/csv, box plots, report.html) and study.json
    commands.log     every command, with its start time and wall seconds

Reuse: a step whose outputs exist and whose recorded command is identical is skipped, so a
study can be re-run after an interruption (or side_by_side.py after the two studies) without
training twice. A run directory whose recorded command differs is deleted and trained again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
DEFAULT_OUT = EXPERIMENTS / "out"

#: Offset of the held-out set's generator seed from the training set's (as ``cascadeseg demo``).
TEST_SEED_OFFSET = 100_000
#: The generator's bias-field strength of the published studies (docs/results.md): its default
#: when they ran, before the field was brought within BrainWeb's strongest setting.
STUDIES_BIAS_STRENGTH = (0.04, 0.2)
#: Layouts of the two synthetic folders: different layouts give different case-id patterns.
TRAIN_LAYOUT = "brats2021"
TEST_LAYOUT = "brats2023"


@dataclass(frozen=True)
class Settings:
    """What every study shares: data sizes, seeds, the training budget.

    Attributes:
        out: output folder.
        train_cases: synthetic training cases (the trainer's 5-fold split keeps 1/5 of them
            for validation).
        test_cases: held-out synthetic cases, the same for every method.
        data_seed: seed of the training set; the held-out set uses ``data_seed + 100000``.
        seed: training seed of every run (``seed=`` override).
        minutes: wall-clock training budget of every run (``train.max_minutes``).
        scale: synthetic grid scale (1 = BraTS 240 x 240 x 155 at 1 mm; smoke tests use less).
        bias_strength: the generator's bias-field strength (``cascadeseg synth
            --bias-strength``). The default is the field the published studies were measured
            on, stronger than the generator's default now (0.02-0.1, BrainWeb-like); pass
            ``--bias-strength 0.02 0.1`` to run them on the generator's current data.
        workers: processes for data generation and evaluation.
        overrides: extra ``key=value`` overrides for every training run (smoke tests).
        progress: progress bars.
    """

    out: Path = DEFAULT_OUT
    train_cases: int = 16
    test_cases: int = 6
    data_seed: int = 2026
    seed: int = 0
    minutes: float = 4.0
    scale: float = 1.0
    bias_strength: tuple[float, float] = STUDIES_BIAS_STRENGTH
    workers: int = 2
    overrides: tuple[str, ...] = ()
    progress: bool = True

    @property
    def train_dir(self) -> Path:
        return self.out / "data" / "train"

    @property
    def test_dir(self) -> Path:
        return self.out / "data" / "test"

    @property
    def test_seed(self) -> int:
        return self.data_seed + TEST_SEED_OFFSET

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["overrides"] = list(self.overrides)
        d["test_seed"] = self.test_seed
        d["train_layout"] = TRAIN_LAYOUT
        d["test_layout"] = TEST_LAYOUT
        return d


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of :class:`Settings` (shared by every study script)."""
    d = Settings()
    parser.add_argument("--out", type=Path, default=d.out, help=f"output folder ({d.out})")
    parser.add_argument("--train-cases", type=int, default=d.train_cases)
    parser.add_argument("--test-cases", type=int, default=d.test_cases)
    parser.add_argument("--data-seed", type=int, default=d.data_seed)
    parser.add_argument("--seed", type=int, default=d.seed, help="training seed of every run")
    parser.add_argument(
        "--minutes", type=float, default=d.minutes, help="training budget per model (minutes)"
    )
    parser.add_argument(
        "--scale", type=float, default=d.scale, help="synthetic grid scale (1 = BraTS size)"
    )
    parser.add_argument(
        "--bias-strength",
        type=float,
        nargs=2,
        default=d.bias_strength,
        metavar=("LOW", "HIGH"),
        help="the generator's bias-field strength (default: that of the published studies, "
        f"{d.bias_strength[0]} {d.bias_strength[1]})",
    )
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every training run (repeatable; smoke tests)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        out=Path(args.out).resolve(),
        train_cases=args.train_cases,
        test_cases=args.test_cases,
        data_seed=args.data_seed,
        seed=args.seed,
        minutes=args.minutes,
        scale=args.scale,
        bias_strength=tuple(args.bias_strength),
        workers=args.workers,
        overrides=tuple(args.overrides),
        progress=not args.no_progress,
    )


# --------------------------------------------------------------------------------------------
# Provenance


def environment() -> dict[str, Any]:
    """Machine, software and date of a study (for docs/results.md)."""
    import torch

    import cascadeseg

    cpu = platform.processor() or ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name")
            ),
            cpu,
        )
    except OSError:
        pass
    commit, dirty = "", None
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        dirty = bool(status.strip())
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cascadeseg": cascadeseg.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _log(out: Path, argv: Sequence[str], seconds: float, started: str, rc: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "commands.log").open("a") as fh:
        fh.write(f"# {started}  rc={rc}  {seconds:.1f} s\n{command_line(argv)}\n")


def command_line(argv: Sequence[Any]) -> str:
    """The shell line of a ``cascadeseg`` call, paths relative to the repository when inside."""

    def rel(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute():
            try:
                return str(path.relative_to(REPO))
            except ValueError:
                return arg
        return arg

    return "cascadeseg " + " ".join(shlex.quote(rel(str(a))) for a in argv)


def cascadeseg(argv: Sequence[Any], settings: Settings) -> float:
    """Run ``cascadeseg ARGV`` in this process; returns the wall seconds.

    Raises:
        RuntimeError: the command failed (non-zero exit status), naming the command.
    """
    from cascadeseg.cli import main

    argv = [str(a) for a in argv]
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    print(f"\n$ {command_line(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    _log(settings.out, argv, seconds, started, rc)
    if rc != 0:
        raise RuntimeError(f"exit status {rc}: {command_line(argv)}")
    return seconds


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------------------------
# Steps


def prepare_data(settings: Settings) -> None:
    """Write the synthetic training and held-out sets (kept when already made alike)."""
    for folder, n, seed, layout in (
        (settings.train_dir, settings.train_cases, settings.data_seed, TRAIN_LAYOUT),
        (settings.test_dir, settings.test_cases, settings.test_seed, TEST_LAYOUT),
    ):
        marker = folder / ".synth.json"
        # The generator's bias-field strength is part of what makes the data: a set written with
        # another is written again.
        bias = list(settings.bias_strength)
        wanted = {
            "cases": n,
            "seed": seed,
            "layout": layout,
            "scale": settings.scale,
            "bias_strength": bias,
        }
        if marker.is_file() and read_json(marker) == wanted:
            print(f"data: reusing {folder} ({n} cases, seed {seed})")
            continue
        if folder.exists():
            shutil.rmtree(folder)
        argv = ["synth", folder, "--cases", n, "--seed", seed, "--layout", layout]
        argv += ["--workers", settings.workers, "--scale", settings.scale]
        argv += ["--bias-strength", *bias]
        if not settings.progress:
            argv.append("--no-progress")
        cascadeseg(argv, settings)
        write_json(marker, wanted)


@dataclass
class Run:
    """A finished training run.

    Attributes:
        name: short method name (the run directory's name).
        recipe: the shipped recipe.
        overrides: every ``key=value`` given to ``cascadeseg train``.
        run_dir: the run directory.
        command: the shell line that trained it.
        summary: the trainer's ``summary.json`` (epochs, steps, minutes, stop reason).
        parameters: trainable parameters of the network.
        note: anything a reader must know (e.g. a stand-in model).
    """

    name: str
    recipe: str
    overrides: list[str]
    run_dir: Path
    command: str
    summary: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    note: str = ""

    @property
    def last(self) -> Path:
        """The final weights (the same choice for every method: no early-stopping selection)."""
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def snapshots(self) -> list[Path]:
        return sorted((self.run_dir / "checkpoints").glob("snapshot_*.pt"))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["snapshots"] = [p.name for p in self.snapshots]
        return d


def _parameters(checkpoint: Path) -> int:
    from cascadeseg.inference.loading import load_models

    member = load_models([checkpoint], "cpu", probe=False)[0]
    network: Any = member.network
    return int(sum(p.numel() for p in network.parameters()))


def train_run(
    settings: Settings, name: str, recipe: str, overrides: Sequence[str] = (), note: str = ""
) -> Run:
    """Train ``recipe`` with the shared budget and seed (or reuse an identical finished run).

    Every method gets ``data.split=kfold`` (5 folds, fold 0) so all train on the same cases: the
    CU-Net recipes' own 3:1:1 split would hold out a test fifth that the studies replace by the
    separate held-out folder.
    """
    run_dir = settings.out / "runs" / name
    # Testing hook: CASCADESEG_STUDY_RECIPES=DIR takes DIR/<recipe>.yaml instead of the shipped
    # recipe (smoke tests before the shipped CPU recipes exist, or with tinier ones).
    recipe_dir = os.environ.get("CASCADESEG_STUDY_RECIPES")
    if recipe_dir and (Path(recipe_dir) / f"{recipe}.yaml").is_file():
        recipe = str(Path(recipe_dir) / f"{recipe}.yaml")
    all_overrides = [
        "data.split=kfold",
        f"train.max_minutes={settings.minutes:g}",
        f"seed={settings.seed}",
        *overrides,
        *settings.overrides,
    ]
    argv = ["train", recipe, "--data", str(settings.train_dir), "--out", str(run_dir)]
    argv += all_overrides
    if not settings.progress:
        argv.insert(1, "--no-progress")
    line = command_line(argv)
    record = run_dir / "experiment.json"
    if (run_dir / "summary.json").is_file() and record.is_file():
        if read_json(record).get("command") == line:
            print(f"train: reusing {run_dir}")
            return _finish_run(name, recipe, all_overrides, run_dir, line, note)
    if run_dir.exists():
        print(f"train: {run_dir} holds another or unfinished run; training again")
        shutil.rmtree(run_dir)
    seconds = cascadeseg(argv, settings)
    write_json(record, {"command": line, "wall_seconds": seconds})
    return _finish_run(name, recipe, all_overrides, run_dir, line, note)


def _finish_run(
    name: str, recipe: str, overrides: list[str], run_dir: Path, line: str, note: str
) -> Run:
    run = Run(name, recipe, overrides, run_dir, line, note=note)
    run.summary = read_json(run_dir / "summary.json")
    run.parameters = _parameters(run.last)
    return run


@dataclass
class Condition:
    """One way of predicting the held-out cases, evaluated.

    Attributes:
        name: the method name in tables.
        run: the run whose weights are used.
        checkpoints: the checkpoint files (one model, or the snapshot ensemble).
        tta: flip test-time augmentation.
        et_min_voxels: ET post-processing threshold (0 = off).
        pred_dir, eval_dir: outputs.
        predict_command: the shell line that predicted.
        predict_seconds: its wall time (all held-out cases, model loading included).
    """

    name: str
    run: Run
    checkpoints: list[Path]
    tta: bool
    et_min_voxels: int
    pred_dir: Path
    eval_dir: Path
    predict_command: str = ""
    evaluate_command: str = ""
    predict_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run": self.run.name,
            "checkpoints": [p.name for p in self.checkpoints],
            "members": len(self.checkpoints),
            "tta": self.tta,
            "et_min_voxels": self.et_min_voxels,
            "pred_dir": str(self.pred_dir),
            "eval_dir": str(self.eval_dir),
            "predict_command": self.predict_command,
            "evaluate_command": self.evaluate_command,
            "predict_seconds": self.predict_seconds,
        }


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def predict_and_evaluate(
    settings: Settings,
    name: str,
    run: Run,
    *,
    snapshots: bool = False,
    tta: bool = False,
    et_min_voxels: int = 0,
    max_snapshots: int = 0,
    fuse_brain_mask: bool | None = None,
) -> Condition:
    """Predict the held-out cases with ``run`` (last weights or snapshot ensemble) and evaluate.

    The ET threshold is always passed explicitly (0 = off), and the lesion-aware component
    removal is off (``--min-lesion-voxels 0``), so nothing stored with a run by
    ``tune-postprocess`` changes a condition behind the reader's back. ``max_snapshots > 0``
    keeps only the last that many snapshots (a cost cap on CPU; the tables say how many).
    ``fuse_brain_mask`` other than ``None`` sets :class:`PredictOptions.fuse_brain_mask`, which
    the command line does not expose: that prediction runs through the Python API
    (:func:`cascadeseg.inference.predict`) and its recorded command says so.
    """
    checkpoints = run.snapshots if snapshots else [run.last]
    if snapshots and max_snapshots > 0:
        checkpoints = checkpoints[-max_snapshots:]
    if not checkpoints:
        raise RuntimeError(f"{run.run_dir}: no snapshots to ensemble")
    key = safe_name(name)
    pred_dir = settings.out / "pred" / key
    eval_dir = settings.out / "eval" / key
    argv: list[Any] = ["predict"]
    for ckpt in checkpoints:
        argv += ["--model", ckpt]
    argv += ["--input", settings.test_dir, "--output", pred_dir]
    argv += ["--et-min-voxels", et_min_voxels, "--min-lesion-voxels", "0"]
    argv += ["--device", "cpu", "--overwrite"]
    if not tta:
        argv.append("--no-tta")
    if not settings.progress:
        argv.append("--no-progress")
    cond = Condition(name, run, checkpoints, tta, et_min_voxels, pred_dir, eval_dir)
    cond.predict_command = command_line([str(a) for a in argv])
    if fuse_brain_mask is not None:
        cond.predict_command += (
            f"  # with PredictOptions(fuse_brain_mask={fuse_brain_mask}) through the Python API "
            "(cascadeseg.inference.predict; no command-line flag)"
        )
    record = pred_dir / "experiment.json"
    newer = max(p.stat().st_mtime for p in checkpoints)
    reuse = (
        record.is_file()
        and read_json(record).get("command") == cond.predict_command
        and record.stat().st_mtime > newer
    )
    if reuse:
        print(f"predict: reusing {pred_dir}")
        cond.predict_seconds = float(read_json(record)["wall_seconds"])
    else:
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        if fuse_brain_mask is None:
            cond.predict_seconds = cascadeseg(argv, settings)
        else:
            cond.predict_seconds = _predict_api(settings, cond, fuse_brain_mask)
        write_json(record, {"command": cond.predict_command, "wall_seconds": cond.predict_seconds})
    eval_argv: list[Any] = ["evaluate", "--pred", pred_dir, "--ref", settings.test_dir]
    eval_argv += ["--out", eval_dir, "--no-report", "--workers", settings.workers]
    if not settings.progress:
        eval_argv.append("--no-progress")
    cond.evaluate_command = command_line([str(a) for a in eval_argv])
    cascadeseg(eval_argv, settings)
    return cond


def _predict_api(settings: Settings, cond: Condition, fuse_brain_mask: bool) -> float:
    """``cascadeseg predict`` through the Python API, for options the command line lacks."""
    from cascadeseg.inference import PredictOptions, load_models, predict

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    print(f"\n$ {cond.predict_command}", flush=True)
    t0 = time.perf_counter()
    options = PredictOptions(
        tta=cond.tta,
        et_min_voxels=cond.et_min_voxels,
        min_lesion_voxels={"wt": 0, "tc": 0, "et": 0},
        device="cpu",
        overwrite=True,
        fuse_brain_mask=fuse_brain_mask,
        progress=settings.progress,
    )
    results = predict(
        load_models(cond.checkpoints, "cpu"), settings.test_dir, cond.pred_dir, options, echo=print
    )
    seconds = time.perf_counter() - t0
    rc = 1 if any(r.status == "failed" for r in results) else 0
    settings.out.mkdir(parents=True, exist_ok=True)
    with (settings.out / "commands.log").open("a") as fh:
        fh.write(f"# {started}  rc={rc}  {seconds:.1f} s\n{cond.predict_command}\n")
    if rc:
        raise RuntimeError(f"prediction failed: {cond.predict_command}")
    return seconds


def compare_conditions(
    settings: Settings, conditions: Sequence[Condition], out_dir: Path
) -> dict[str, Any]:
    """``cascadeseg compare`` of the conditions' evaluations; returns the command and table."""
    import csv

    argv: list[Any] = ["compare", *[c.eval_dir for c in conditions]]
    argv += ["--names", *[c.name for c in conditions], "--out", out_dir]
    argv += ["--workers", settings.workers]
    if not settings.progress:
        argv.append("--no-progress")
    cascadeseg(argv, settings)
    with (out_dir / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {
        "command": command_line([str(a) for a in argv]),
        "table_csv": str(out_dir / "table.csv"),
        "rows": rows,
    }


def per_case(cond: Condition) -> list[dict[str, Any]]:
    """The evaluated rows of a condition (``metrics.csv``, metrics as floats)."""
    from cascadeseg.evaluation.evaluate import load_evaluation

    return [
        {
            k: v
            for k, v in row.items()
            if k == "case" or k.startswith(("dice_", "sens_", "spec_", "hd95_", "vol_"))
        }
        for row in load_evaluation(cond.eval_dir).scored_rows()
    ]


def metric_arrays(cond: Condition) -> dict[str, Any]:
    """``{metric column: (N,) array}`` of a condition, for box plots."""
    import numpy as np

    from cascadeseg.evaluation.evaluate import load_evaluation
    from cascadeseg.evaluation.metrics import METRIC_NAMES

    result = load_evaluation(cond.eval_dir)
    return {m: np.asarray(result.values(m), dtype=float) for m in METRIC_NAMES}


def banner(text: str) -> None:
    print(f"\n{'=' * 8} {text} {'=' * 8}", flush=True)


def main_guard(fn: Any) -> int:
    """Run a study's ``main``; print a one-line error instead of a traceback for failed commands."""
    try:
        fn()
    except RuntimeError as exc:
        print(f"study failed: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# The runs the studies share (one training each; every study reuses them)


def stage_one_spec() -> tuple[str, list[str], str]:
    """Recipe, overrides and note of the "stage 1 alone" model of the two-stage study.

    Preference: a registered ``two_stage_stage1`` model, then a ``stages`` argument of
    ``two_stage``, and only then ``unet3d`` as the closest stand-in (said in the note).
    """
    from cascadeseg.config import load_config
    from cascadeseg.models import available_models, model_defaults

    names = available_models()
    if "two_stage_stage1" in names:
        # The cascade recipe's stage-1 arguments (not stage 2's width), trained alone from the
        # first step (no stage-1-first phase: there is no stage 2).
        args = {
            k: v
            for k, v in load_config("two_stage_cpu").model.args.items()
            if k != "stage2_width_factor"
        }
        return (
            "two_stage_cpu",
            [
                "model.name=two_stage_stage1",
                f"model.args={json.dumps(args, sort_keys=True)}",
                "train.stage1_first=0",
            ],
            "",
        )
    if "two_stage" in names and "stages" in model_defaults("two_stage"):
        return "two_stage_cpu", ["model.args.stages=1"], ""
    return (
        "unet3d_cpu",
        [],
        "stand-in: no stage-1-only model is registered, so the plain 3D U-Net (unet3d) with its "
        "CPU recipe stands for stage 1 alone",
    )


#: run key -> (table name, recipe, overrides). "stage1" is resolved by :func:`stage_one_spec`.
RUNS: dict[str, tuple[str, str, list[str]]] = {
    "unet2d": ("U-Net (2D)", "unet2d_cpu", []),
    "bfcn": ("BFCN", "bfcn_cpu", []),
    "drn": ("DRN", "drn_cpu", []),
    "cunet_nolws": ("CUN", "cunet_cpu", ["loss.lws=false"]),
    "cunet_lws": ("CUN+LWS", "cunet_cpu", ["loss.lws=true"]),
    # The demo recipe keeps one snapshot (its time budget goes to training); the study keeps 3
    # for its "+ snapshots" condition (the paper keeps 8).
    "two_stage": ("Two-stage", "two_stage_cpu", ["train.snapshots=3"]),
    "unet3d": ("U-Net (3D)", "unet3d_cpu", []),
}


def train_named(settings: Settings, key: str) -> Run:
    """Train (or reuse) one of the shared runs by key (``RUNS`` or ``stage1``)."""
    if key == "stage1":
        recipe, overrides, note = stage_one_spec()
        if recipe == "unet3d_cpu" and not overrides:
            # The stand-in is the same run as the 3D U-Net peer: train it once.
            run = train_named(settings, "unet3d")
            run.note = note
            return run
        return train_run(settings, "stage1", recipe, overrides, note)
    _, recipe, overrides = RUNS[key]
    return train_run(settings, key, recipe, overrides)
