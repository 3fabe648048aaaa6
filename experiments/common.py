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
#: The generator's default bias-field strength (``SynthConfig().bias_strength``; a test checks
#: they agree): the studies run on the generator's current data.
GENERATOR_BIAS_STRENGTH = (0.02, 0.1)
#: Layouts of the two synthetic folders: different layouts give different case-id patterns.
TRAIN_LAYOUT = "brats2021"
TEST_LAYOUT = "brats2023"
#: Default step budgets (``--steps``, ``--steps-3d``): optimiser steps per 2D and per 3D model.
#: Chosen so that ``run_all.sh`` takes about an hour on 2 CPU cores (experiments/README.md).
DEFAULT_STEPS_2D = 300
DEFAULT_STEPS_3D = 600
#: Batch size of every model of a dimensionality in the step mode, so that every 2D model sees
#: the same number of slices and every 3D model the same number of crops (``steps x batch``):
#: the CPU recipes' own batch sizes (``*_cpu.yaml``: 8 slices, 2 crops).
STEP_BATCH: dict[int, int] = {2: 8, 3: 2}


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
        steps: optimiser steps of every 2D model (the step mode, the default: the same
            ``steps x batch`` training samples for every 2D model, no time budget, no early
            stopping); 0 = the wall-clock mode (``minutes``).
        steps_3d: optimiser steps of every 3D model in the step mode.
        minutes: wall-clock training budget of every run in the wall-clock mode
            (``train.max_minutes``; a faster network makes more steps).
        scale: synthetic grid scale (1 = BraTS 240 x 240 x 155 at 1 mm; smoke tests use less).
        bias_strength: the generator's bias-field strength (``cascadeseg synth
            --bias-strength``). The default is the generator's own (current data); the
            earlier published figures used the stronger ``--bias-strength 0.04 0.2``
            (:data:`STUDIES_BIAS_STRENGTH`).
        workers: processes for data generation and evaluation.
        overrides: extra ``key=value`` overrides for every training run (smoke tests).
        progress: progress bars.
    """

    out: Path = DEFAULT_OUT
    train_cases: int = 16
    test_cases: int = 6
    data_seed: int = 2026
    seed: int = 0
    steps: int = DEFAULT_STEPS_2D
    steps_3d: int = DEFAULT_STEPS_3D
    minutes: float = 4.0
    scale: float = 1.0
    bias_strength: tuple[float, float] = GENERATOR_BIAS_STRENGTH
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

    @property
    def budget_mode(self) -> str:
        """``steps`` (the same optimiser steps per model) or ``minutes`` (wall clock)."""
        return "steps" if self.steps > 0 else "minutes"

    def steps_for(self, dims: int) -> int:
        """The step budget of a ``dims``-D model (0 in the wall-clock mode)."""
        if self.budget_mode != "steps":
            return 0
        return self.steps if dims == 2 else self.steps_3d

    def budget_text(self) -> str:
        """The budget in words, for banners."""
        if self.budget_mode == "steps":
            return f"{self.steps} steps per 2D model, {self.steps_3d} per 3D model"
        return f"{self.minutes:g} min per model"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["overrides"] = list(self.overrides)
        d["test_seed"] = self.test_seed
        d["train_layout"] = TRAIN_LAYOUT
        d["test_layout"] = TEST_LAYOUT
        d["budget_mode"] = self.budget_mode
        d["step_batch"] = {f"{k}d": v for k, v in STEP_BATCH.items()}
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
        "--steps",
        type=int,
        default=d.steps,
        help=f"optimiser steps per 2D model, batch {STEP_BATCH[2]} (default {d.steps}); 0: the "
        "wall-clock mode, every model trains --minutes",
    )
    parser.add_argument(
        "--steps-3d",
        type=int,
        default=d.steps_3d,
        help=f"optimiser steps per 3D model, batch {STEP_BATCH[3]} (default {d.steps_3d}; "
        "ignored in the wall-clock mode)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=d.minutes,
        help=f"wall-clock training budget per model with --steps 0 (default {d.minutes:g})",
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
        steps=args.steps,
        steps_3d=args.steps_3d,
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
    commit, dirty, changes = "", None, []
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        # Untracked files count (a new module changes what runs); ignored ones (outputs) do not.
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        changes = [line[3:] for line in status.splitlines() if line.strip()]
        dirty = bool(changes) if commit else None
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
        "git_changes": changes[:20],
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


def split_steps(steps: int, iters_per_epoch: int | None, min_epochs: int = 1) -> tuple[int, int]:
    """``(epochs, iterations per epoch)`` whose product is exactly ``steps``.

    The epochs are the divisor of ``steps`` nearest to ``steps / iters_per_epoch``, so an epoch
    keeps about the recipe's length and what a recipe counts in epochs (warm-up, validation,
    deep-supervision decay, snapshots) keeps its meaning; at least ``min_epochs`` where ``steps``
    allows it (ties go to more epochs). ``iters_per_epoch`` ``None`` (one pass over the data,
    unknown here) counts as ``steps`` (one epoch).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    length = max(1, iters_per_epoch or steps)
    target = max(float(min_epochs), steps / length, 1.0)
    floor = max(1, min(min_epochs, steps))
    divisors = [d for d in range(floor, steps + 1) if steps % d == 0]
    epochs = min(divisors, key=lambda d: (abs(d - target), -d))
    return epochs, steps // epochs


@dataclass(frozen=True)
class StepBudget:
    """The step mode's training budget of one model.

    Attributes:
        steps: optimiser steps (``epochs x iters_per_epoch``, exactly).
        batch_size: samples per step (:data:`STEP_BATCH` of the model's dimensionality).
        epochs, iters_per_epoch: how the steps are cut into epochs (:func:`split_steps`).
        val_every: validate every N epochs: twice a run, half-way and at the end (0: never, as
            the recipe). Validation changes nothing in the step mode (no early stopping, final
            weights), so it only costs time: the recipes' every 2 epochs would cost DRN, whose
            whole-volume pass is slow, more than a third of its training time.
    """

    steps: int
    batch_size: int
    epochs: int
    iters_per_epoch: int
    val_every: int = 0

    @property
    def samples(self) -> int:
        """Training samples seen (2D slices or 3D crops)."""
        return self.steps * self.batch_size

    def overrides(self) -> list[str]:
        """The ``key=value`` overrides that give a run this budget: no time budget (the
        learning-rate schedule then follows the epochs) and no early stopping, so every model
        makes all its steps."""
        return [
            f"train.epochs={self.epochs}",
            f"train.iters_per_epoch={self.iters_per_epoch}",
            f"train.batch_size={self.batch_size}",
            "train.max_minutes=null",
            "train.time_schedule=false",
            "train.early_stop_patience=0",
            f"train.val_every={self.val_every}",
        ]


def step_budget(
    steps: int, dims: int, iters_per_epoch: int | None, snapshots: int = 0, val_every: int = 1
) -> StepBudget:
    """The step budget of a ``dims``-D model whose recipe has ``iters_per_epoch`` iterations an
    epoch, keeps ``snapshots`` snapshots (the last epochs' weights) and validates every
    ``val_every`` epochs (0: never).

    A run with snapshots gets at least ``3 x snapshots`` epochs, so its snapshots span at most
    the last third of the steps (the two-stage paper's 8 are the last 8 of 405 epochs). A run
    that validates does so twice (:class:`StepBudget`).
    """
    if dims not in STEP_BATCH:
        raise ValueError(f"no step batch for {dims}-D models")
    min_epochs = 3 * snapshots if snapshots > 0 else 1
    epochs, per_epoch = split_steps(steps, iters_per_epoch, min_epochs)
    validate = max(1, epochs // 2) if val_every > 0 else 0
    return StepBudget(steps, STEP_BATCH[dims], epochs, per_epoch, validate)


def recipe_dims(cfg: Any) -> int:
    """Spatial dimensionality of a recipe's model (its patch size: 2D slices or 3D crops)."""
    return len(cfg.data.patch_size)


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
        budget: the budget it was given: ``mode`` (``steps``/``minutes``), ``dims``,
            ``batch_size``, and ``steps``, ``epochs``, ``iters_per_epoch`` (step mode) or
            ``minutes`` (wall-clock mode).
    """

    name: str
    recipe: str
    overrides: list[str]
    run_dir: Path
    command: str
    summary: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    note: str = ""
    budget: dict[str, Any] = field(default_factory=dict)

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
        d.update(run_figures(d))
        return d


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """What a run received, from its record: ``steps`` made, ``samples_seen`` (steps x batch),
    ``minutes`` of training (``None`` where unknown)."""
    summary = run.get("summary") or {}
    budget = run.get("budget") or {}
    steps = summary.get("steps")
    batch = budget.get("batch_size")
    samples = int(steps) * int(batch) if steps is not None and batch else None
    return {"steps": steps, "samples_seen": samples, "minutes": summary.get("minutes")}


def budget_table(runs: Sequence[Run | dict[str, Any]]) -> str:
    """A plain-text table of what each run received: steps, samples seen, minutes, s/step."""
    lines = [f"{'run':<18} {'steps':>7} {'samples':>9} {'minutes':>8} {'s/step':>7}"]
    for run in runs:
        d = run.as_dict() if isinstance(run, Run) else run
        f = run_figures(d) if "samples_seen" not in d else d
        steps, minutes = f.get("steps"), f.get("minutes")
        per_step = minutes * 60 / steps if steps and minutes is not None else None
        lines.append(
            f"{Path(str(d['run_dir'])).name:<18} {steps if steps is not None else '?':>7} "
            f"{f.get('samples_seen') or '?':>9} "
            f"{f'{minutes:.2f}' if minutes is not None else '?':>8} "
            f"{f'{per_step:.2f}' if per_step is not None else '?':>7}"
        )
    return "\n".join(lines)


def _parameters(checkpoint: Path) -> int:
    from cascadeseg.inference.loading import load_models

    member = load_models([checkpoint], "cpu", probe=False)[0]
    network: Any = member.network
    return int(sum(p.numel() for p in network.parameters()))


def train_run(
    settings: Settings,
    name: str,
    recipe: str,
    overrides: Sequence[str] = (),
    note: str = "",
    *,
    reuse_finished: bool = False,
) -> Run:
    """Train ``recipe`` with the shared budget and seed (or reuse an identical finished run).

    Every method gets ``data.split=kfold`` (5 folds, fold 0) so all train on the same cases: the
    CU-Net recipes' own 3:1:1 split would hold out a test fifth that the studies replace by the
    separate held-out folder. The budget is the step mode's :func:`step_budget` (the same steps
    and samples for every model of a dimensionality) or, with ``settings.steps == 0``, the
    wall-clock ``train.max_minutes``. ``reuse_finished``: a finished run (``summary.json`` and
    ``checkpoints/last.pt``) is kept even when its recorded command differs (said, and its
    recorded command kept).
    """
    from cascadeseg.config import load_config, to_dict

    run_dir = settings.out / "runs" / name
    # Testing hook: CASCADESEG_STUDY_RECIPES=DIR takes DIR/<recipe>.yaml instead of the shipped
    # recipe (smoke tests before the shipped CPU recipes exist, or with tinier ones).
    recipe_dir = os.environ.get("CASCADESEG_STUDY_RECIPES")
    if recipe_dir and (Path(recipe_dir) / f"{recipe}.yaml").is_file():
        recipe = str(Path(recipe_dir) / f"{recipe}.yaml")
    cfg = load_config(recipe, [*overrides, *settings.overrides])
    dims = recipe_dims(cfg)
    budget: dict[str, Any] = {"mode": settings.budget_mode, "dims": dims}
    if settings.budget_mode == "steps":
        plan = step_budget(
            settings.steps_for(dims),
            dims,
            cfg.train.iters_per_epoch,
            cfg.train.snapshots,
            cfg.train.val_every,
        )
        budget_overrides = plan.overrides()
        budget.update(steps=plan.steps, epochs=plan.epochs, iters_per_epoch=plan.iters_per_epoch)
    else:
        budget_overrides = [f"train.max_minutes={settings.minutes:g}"]
        budget["minutes"] = settings.minutes
    all_overrides = [
        "data.split=kfold",
        *budget_overrides,
        f"seed={settings.seed}",
        *overrides,
        *settings.overrides,
    ]
    final = load_config(recipe, all_overrides)
    budget["batch_size"] = final.train.batch_size
    argv = ["train", recipe, "--data", str(settings.train_dir), "--out", str(run_dir)]
    argv += all_overrides
    if not settings.progress:
        argv.insert(1, "--no-progress")
    line = command_line(argv)
    # The recipe's values too: the same command line trains something else once a shipped
    # recipe changes, and such a run must not be reused as if it were this one.
    resolved = to_dict(final)
    record = run_dir / "experiment.json"
    finish = (name, recipe, all_overrides, run_dir, line, note, budget)
    if (run_dir / "summary.json").is_file() and record.is_file():
        recorded = read_json(record)
        if recorded.get("command") == line and recorded.get("config") == resolved:
            print(f"train: reusing {run_dir}")
            return _finish_run(*finish)
    finished = (run_dir / "summary.json").is_file() and (
        run_dir / "checkpoints" / "last.pt"
    ).is_file()
    if reuse_finished and finished:
        recorded = read_json(record).get("command", line) if record.is_file() else line
        if recorded != line:
            print(f"train: reusing the finished run {run_dir}, trained by: {recorded}")
        return _finish_run(name, recipe, all_overrides, run_dir, recorded, note, budget)
    if run_dir.exists():
        print(f"train: {run_dir} holds another or unfinished run; training again")
        shutil.rmtree(run_dir)
    seconds = cascadeseg(argv, settings)
    write_json(record, {"command": line, "config": resolved, "wall_seconds": seconds})
    return _finish_run(*finish)


def _finish_run(
    name: str,
    recipe: str,
    overrides: list[str],
    run_dir: Path,
    line: str,
    note: str,
    budget: dict[str, Any],
) -> Run:
    run = Run(name, recipe, overrides, run_dir, line, note=note, budget=budget)
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
        ensemble_mode: how the snapshots shared the flips (``paired``/``product``; ``""`` for
            one model).
        passes: network passes per case (members x flips each ran), from the predictor's
            per-case record.
        seconds_per_case: mean seconds per case the predictor recorded (preprocessing, the
            passes and post-processing; model loading excluded).
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
    ensemble_mode: str = ""
    passes: int = 0
    seconds_per_case: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run": self.run.name,
            "checkpoints": [p.name for p in self.checkpoints],
            "members": len(self.checkpoints),
            "tta": self.tta,
            "ensemble_mode": self.ensemble_mode,
            "passes": self.passes,
            "seconds_per_case": self.seconds_per_case,
            "et_min_voxels": self.et_min_voxels,
            "pred_dir": str(self.pred_dir),
            "eval_dir": str(self.eval_dir),
            "predict_command": self.predict_command,
            "evaluate_command": self.evaluate_command,
            "predict_seconds": self.predict_seconds,
        }


def prediction_timing(pred_dir: Path) -> tuple[int, float]:
    """``(passes per case, mean seconds per case)`` from the predictor's ``<case>.json`` files
    (``settings.passes``, ``settings.seconds.total``); ``(0, nan)`` when there are none."""
    passes, seconds = 0, []
    for path in sorted(Path(pred_dir).glob("*.json")):
        if path.name == "experiment.json":
            continue
        info = read_json(path).get("settings", {})
        passes = max(passes, int(info.get("passes", 0)))
        total = info.get("seconds", {}).get("total")
        if total is not None:
            seconds.append(float(total))
    return passes, (sum(seconds) / len(seconds) if seconds else float("nan"))


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
    ensemble_mode: str = "paired",
) -> Condition:
    """Predict the held-out cases with ``run`` (last weights or snapshot ensemble) and evaluate.

    The ET threshold is always passed explicitly (0 = off), and the lesion-aware component
    removal is off (``--min-lesion-voxels 0``), so nothing stored with a run by
    ``tune-postprocess`` changes a condition behind the reader's back. ``max_snapshots > 0``
    keeps only the last that many snapshots (a cost cap on CPU; the tables say how many).
    ``fuse_brain_mask`` other than ``None`` sets :class:`PredictOptions.fuse_brain_mask`, which
    the command line does not expose: that prediction runs through the Python API
    (:func:`cascadeseg.inference.predict`) and its recorded command says so. With snapshots,
    ``ensemble_mode`` (``predict --ensemble-mode``, passed explicitly) says how they share the
    flips: ``paired`` (snapshot i with flip i, the two-stage paper) or ``product`` (every flip
    on every snapshot).
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
    if snapshots:
        argv += ["--ensemble-mode", ensemble_mode]
    if not settings.progress:
        argv.append("--no-progress")
    cond = Condition(name, run, checkpoints, tta, et_min_voxels, pred_dir, eval_dir)
    cond.ensemble_mode = ensemble_mode if snapshots else ""
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
    cond.passes, cond.seconds_per_case = prediction_timing(pred_dir)
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
        ensemble_mode=cond.ensemble_mode or "paired",
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
    # CUN and CUN+LWS as the paper builds them: U-Net 2 sees the first net's features and
    # prediction, not the image (cunet_brats17); the CPU recipe's U-Net 2 also sees the image,
    # measured as a row of its own.
    "cunet_nolws": (
        "CUN",
        "cunet_cpu",
        ["loss.lws=false", "model.args.unet2_image_input=false"],
    ),
    "cunet_lws": (
        "CUN+LWS",
        "cunet_cpu",
        ["loss.lws=true", "model.args.unet2_image_input=false"],
    ),
    "cunet_lws_image": (
        "CUN+LWS, U-Net 2 sees the image",
        "cunet_cpu",
        ["loss.lws=true", "model.args.unet2_image_input=true"],
    ),
    # The demo recipe keeps one snapshot (its time budget goes to training); the study keeps 8,
    # as the paper, for its snapshot-ensemble rows (paired: 8 passes; product: 64), and saves
    # the iterates, not the recipe's moving average (which would make the 8 near copies).
    "two_stage": ("Two-stage", "two_stage_cpu", ["train.snapshots=8", "train.ema_width=0"]),
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
