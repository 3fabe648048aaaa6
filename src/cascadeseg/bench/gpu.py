"""The GPU check: what only a GPU shows, measured in one call (``--suite gpu``).

``bash benchmarks/gpu_check.sh`` (or ``cascadeseg benchmark --suite gpu --device cuda``) runs,
in at most about 8 minutes on one CUDA device:

1. the paper-width two-stage training step (128^3 crop, batch 1) in bf16 (fp32 where bf16 is
   not native), without and with gradient checkpointing, and in channels-last: seconds per
   step and peak memory (targets: <= 0.25 s per step on an H100, <= 8 GB with checkpointing);
2. one inference pass of the paper-width network on a whole brain crop (144x176x160, the size
   of a BraTS brain box) and the 8-pass flip-TTA latency, one flip per call and all 8 stacked
   in one call (targets: one pass <= 0.15 s, 8 passes <= 1 s);
3. a short real training run (default 2 minutes) of the paper recipe ``two_stage_brats19`` on
   synthetic cases written by ``cascadeseg synth``, through the ordinary ``cascadeseg train``,
   with the GPU utilisation sampled during it; its training loss must fall;
4. ``cascadeseg predict`` of held-out synthetic cases from files with the trained model and
   8-flip TTA in bf16 (seconds per case, end to end) and ``cascadeseg evaluate`` of them.

``--quick`` (with ``--device cpu`` in the test suite) shrinks every size and width and the run
to seconds: it checks that the check works; its figures mean nothing.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cascadeseg.bench.inputs import QUICK_ARGS
from cascadeseg.bench.rows import Suite, add_row, size_text
from cascadeseg.bench.timing import PeriodicSampler, free_memory, measure
from cascadeseg.bench.training import add_step_rows, benchmark_training_step
from cascadeseg.inference.tta import flip_tta_moments
from cascadeseg.models import build_model
from cascadeseg.models.outputs import region_probabilities
from cascadeseg.runtime import autocast, resolve_precision, tune_device

#: Input of the inference rows: the size of a BraTS brain box, a multiple of 16 per axis.
BRAIN_CROP = (144, 176, 160)
QUICK_CROP = (32, 32, 32)


def gpu_utilisation() -> float | None:
    """Percent of the last sample period a kernel ran on the GPU: NVML through
    ``torch.cuda.utilization`` (package ``nvidia-ml-py``), else ``nvidia-smi``; ``None`` where
    neither answers."""
    try:
        return float(torch.cuda.utilization())
    except Exception:  # no NVML: ask nvidia-smi
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return float(out.split()[0].rstrip("%"))
        except Exception:
            return None


class UtilisationSampler(PeriodicSampler):
    """GPU utilisation (percent of time a kernel ran) sampled every ``interval`` seconds
    (:func:`gpu_utilisation`); on a CPU run, or where nothing answers, :meth:`mean` is NaN."""

    def __init__(self, device: str, interval: float = 0.25) -> None:
        active = device == "cuda" and torch.cuda.is_available()
        super().__init__(gpu_utilisation, interval, active=active)
        self.device = device

    def __enter__(self) -> UtilisationSampler:
        super().__enter__()
        return self

    def mean(self) -> float:
        """Mean of the samples of the last ``with`` block, percent (NaN without samples)."""
        return statistics.fmean(self.samples) if self.samples else math.nan


def _free(device: str) -> None:
    free_memory(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def training_step_rows(suite: Suite, *, device: str, quick: bool) -> None:
    """Paper-width training step: time and peak memory, plain / checkpointing / channels-last."""
    precision = resolve_precision("auto", device)
    size = QUICK_CROP if quick else (128, 128, 128)
    width = "quick width" if quick else "paper width"
    what = f"train two_stage {size_text(size)} batch 1, {width}, {precision}"
    warmup, repeats = (1, 1) if quick else (3, 10)
    variants = [
        ("", False, False),
        (", checkpointing", True, False),
        (", channels-last", False, True),
    ]
    for label, checkpointing, channels_last in variants:
        result = benchmark_training_step(
            "two_stage",
            size,
            precision=precision,
            checkpointing=checkpointing,
            device=device,
            model_args=dict(QUICK_ARGS["two_stage"]) if quick else {},
            warmup=warmup,
            repeats=repeats,
            channels_last=channels_last,
        )
        add_step_rows(
            suite,
            what + label,
            result,
            time_target=None if quick else ("<=", 0.25),
            memory_target=("<=", 8.0) if checkpointing and not quick else None,
        )
        _free(device)


def inference_rows(suite: Suite, *, device: str, quick: bool, sampler: UtilisationSampler) -> None:
    """One whole-brain pass and the 8-pass flip-TTA latency of the paper-width network."""
    precision = resolve_precision("auto", device)
    size = QUICK_CROP if quick else BRAIN_CROP
    dev = torch.device(device)
    model = build_model("two_stage", **(QUICK_ARGS["two_stage"] if quick else {}))
    model = model.to(dev).eval()
    x = torch.randn((1, 4, *size), device=dev)

    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(precision, dev):
            return region_probabilities(model(inputs), "regions").float()

    warmup, repeats = (1, 1) if quick else (3, 10)
    shape = size_text(size) + (", quick width" if quick else ", paper width")
    with torch.inference_mode():
        for autotune in (False, True):  # predict and train turn cuDNN autotuning on
            tune_device(dev, autotune=autotune)
            one = measure(lambda: probabilities(x), warmup=warmup, repeats=repeats).median
            add_row(
                suite,
                f"infer two_stage {shape}, {precision}: one pass"
                + (", cuDNN autotuned" if autotune else ""),
                one,
                "s",
                target=None if quick else ("<=", 0.15),
                limited_by="compute (convolutions)",
            )
        for per_call in (1, 8):
            with sampler:
                passes = functools.partial(
                    flip_tta_moments, probabilities, x, spatial_dims=3, flips_per_call=per_call
                )
                eight = measure(
                    passes,
                    warmup=1,
                    repeats=max(1, repeats // 2),
                ).median
            add_row(
                suite,
                f"infer two_stage {shape}, {precision}: 8 flips, {per_call} per call",
                eight,
                "s",
                target=None if quick else ("<=", 1.0),
                limited_by="compute (convolutions)",
                gpu_utilisation_pct=sampler.mean(),
            )


def _cli(args: Sequence[str], log: Path, env: dict[str, str]) -> float:
    """Run ``cascadeseg ARGS`` in a subprocess (output to ``log``); its wall time in seconds."""
    start = time.perf_counter()
    with log.open("a") as stream:
        stream.write(f"$ cascadeseg {' '.join(args)}\n")
        stream.flush()
        code = subprocess.run(
            [sys.executable, "-m", "cascadeseg", *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        ).returncode
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"cascadeseg {args[0]} exited {code}: " + " | ".join(tail))
    return time.perf_counter() - start


def _train_curve(run_dir: Path) -> tuple[list[float], int]:
    """Training loss per epoch and the number of steps made, from the run's metrics.csv."""
    with (run_dir / "metrics.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss") not in (None, "", "nan")]
    return losses, int(float(rows[-1]["step"])) if rows else 0


def _run_settings(device: str, quick: bool, minutes: float) -> dict[str, Any]:
    """Data sizes and ``cascadeseg train`` overrides of the training run."""
    if quick:
        overrides = [
            "data.patch_size=[32,32,32]",
            "data.num_workers=0",
            "model.args.base_width=8",
            "model.args.blocks=[1,1,1]",
            "train.epochs=4",
            "train.iters_per_epoch=4",
            "train.val_every=2",
            "train.snapshots=0",
            "optim.lr=3e-3",
            "optim.warmup_epochs=0",
            # The recipe trains in bf16, which a CPU without native bf16 emulates: 4 quick steps
            # took 1.3 min on a 2-core AVX2 EPYC. auto: bf16 only where native, else fp32.
            "train.precision=auto",
        ]
        return {"cases": 6, "held_out": 1, "scale": "0.3", "overrides": overrides}
    overrides = [
        f"train.max_minutes={minutes}",
        # Epochs of 40 steps, not 8 (one pass over 8 cases): real epochs (a BraTS fold has
        # about 270 training cases) amortise the per-epoch checkpoint the same way.
        "train.iters_per_epoch=40",
        "train.time_schedule=true",
        "train.val_every=10",
        f"data.num_workers={min(8, os.cpu_count() or 1)}",
        f"train.device={device}",
    ]
    return {"cases": 10, "held_out": 2, "scale": "1.0", "overrides": overrides}


def training_run_rows(
    suite: Suite, *, device: str, quick: bool, sampler: UtilisationSampler, minutes: float = 2.0
) -> None:
    """A real short training run, then prediction and evaluation of held-out cases from files,
    in a temporary folder removed afterwards (its log, curve and evaluation summary are kept in
    ``$CASCADESEG_GPU_CHECK_KEEP`` when set, also after a failure)."""
    work = Path(tempfile.mkdtemp(prefix="cascadeseg-gpu-check-"))
    try:
        _training_run(suite, work, device=device, quick=quick, sampler=sampler, minutes=minutes)
    finally:
        _keep(work, work / "run")
        shutil.rmtree(work, ignore_errors=True)


def _training_run(
    suite: Suite,
    work: Path,
    *,
    device: str,
    quick: bool,
    sampler: UtilisationSampler,
    minutes: float,
) -> None:
    """:func:`training_run_rows` inside ``work``."""
    settings = _run_settings(device, quick, minutes)
    log = work / "log.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    workers = str(min(8, os.cpu_count() or 1))
    common = ["--scale", settings["scale"], "--no-progress", "--workers", workers]
    _cli(["synth", str(work / "train"), "--cases", str(settings["cases"]), *common], log, env)
    held = str(settings["held_out"])
    _cli(["synth", str(work / "test"), "--cases", held, "--seed", "777", *common], log, env)
    run_dir = work / "run"
    with sampler:
        train_s = _cli(
            ["train", "two_stage_brats19", "--data", str(work / "train"), "--out", str(run_dir),
             "--no-progress", *settings["overrides"]],
            log,
            env,
        )  # fmt: skip
    losses, steps = _train_curve(run_dir)
    head, tail = statistics.fmean(losses[:3]), statistics.fmean(losses[-3:])
    add_row(
        suite,
        f"training run two_stage_brats19 ({settings['cases']} synthetic cases): training loss, "
        "mean of the last 3 epochs / first 3 (must fall)",
        tail / head,
        "x",
        target=None if quick else ("<=", 0.95),
        limited_by="budget",
        epochs=len(losses),
        steps=steps,
        first_loss=head,
        last_loss=tail,
        seconds=train_s,
        gpu_utilisation_pct=sampler.mean(),
    )
    _predict_rows(suite, work, run_dir, device=device, quick=quick, log=log, env=env)


def _keep(work: Path, run_dir: Path) -> None:
    """Copy the run's log, training curve and evaluation summary to $CASCADESEG_GPU_CHECK_KEEP."""
    keep = os.environ.get("CASCADESEG_GPU_CHECK_KEEP")
    if not keep:
        return
    sources = {
        "log.txt": work / "log.txt",
        "metrics.csv": run_dir / "metrics.csv",
        "eval_summary.json": work / "eval" / "summary.json",
    }
    Path(keep).mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        if source.is_file():
            shutil.copyfile(source, Path(keep) / name)


def _predict_rows(
    suite: Suite, work: Path, run_dir: Path, *, device: str, quick: bool, log: Path, env: dict
) -> None:
    """``cascadeseg predict`` of the held-out cases with the trained model, then evaluate."""
    precision = resolve_precision("auto", device)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    cases = len([p for p in (work / "test").iterdir() if p.is_dir()])
    predict_s = _cli(
        [
            "predict",
            "--model",
            str(checkpoint),
            "--input",
            str(work / "test"),
            "--output",
            str(work / "pred"),
            "--precision",
            precision,
            "--device",
            device,
            "--no-progress",
        ],
        log,
        env,
    )
    add_row(
        suite,
        f"predict from files, paper width, 8 flips, {precision}: per case "
        "(process start, model load and writing included)",
        predict_s / cases,
        "s",
        target=None if quick else ("<=", 60.0),
        limited_by="compute + I/O",
        cases=cases,
    )
    _cli(
        [
            "evaluate",
            "--pred",
            str(work / "pred"),
            "--ref",
            str(work / "test"),
            "--out",
            str(work / "eval"),
        ],
        log,
        env,
    )
    summary = json.loads((work / "eval" / "summary.json").read_text())
    means = {
        key: round(float(value["mean"]), 3)
        for key, value in summary.get("metrics", {}).items()
        if key.startswith("dice_") and isinstance(value, dict) and "mean" in value
    }
    suite.notes.append(f"held-out mean Dice of the short run's model (for the record): {means}")


def gpu_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """The GPU check (see the module docstring); on the CPU only with ``quick``.

    Each of its three parts runs even when another fails (the failure becomes a note and the
    suite is reported failed), so one call of a lent GPU never loses all its figures.
    """
    sampler = UtilisationSampler(device)
    minutes = float(os.environ.get("CASCADESEG_GPU_CHECK_MINUTES", "2"))
    parts = {
        "training step": lambda: training_step_rows(suite, device=device, quick=quick),
        "inference": lambda: inference_rows(suite, device=device, quick=quick, sampler=sampler),
        "training run": lambda: training_run_rows(
            suite, device=device, quick=quick, sampler=sampler, minutes=minutes
        ),
    }
    failed = []
    for name, part in parts.items():
        try:
            part()
        except Exception as exc:  # keep the other parts' figures
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"[gpu] {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        _free(device)
    if failed:
        raise RuntimeError("; ".join(failed))
