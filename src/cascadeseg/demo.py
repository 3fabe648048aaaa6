"""``cascadeseg demo``: the whole pipeline on synthetic data, on a fresh machine, in minutes.

Steps (each with a progress bar), everything under ``out``:

1. ``data/train`` and ``data/test``: synthetic BraTS cases (:mod:`cascadeseg.data.synth`),
   written in the BraTS 2021 layout.
2. ``run``: the model trained with its small CPU recipe (``<model>_cpu``), the training cases
   preprocessed first (``workers`` at a time), all of them trained on where the recipe's validation
   would only watch the run (:func:`validation_only_watches`); ``cascadeseg predict --model
   out/run`` accepts this folder. Training gets what the ``deadline`` (the whole demo's wall-clock
   limit, 10 minutes by default) leaves once the steps before and after it are counted or estimated
   (:func:`training_minutes`), at most ``minutes`` when given.
3. ``predictions``: held-out cases segmented with 8-flip TTA, one ``<case_id>.nii.gz`` each.
4. ``evaluation``: ``metrics.csv``, ``summary.json`` and ``report.html``.

Finally a table of Dice and HD95 per region and the paths of the report and predictions.

With ``missing`` (``cascadeseg demo --missing t1ce``) the model is trained with its
missing-sequence recipe (``<model>_missing_cpu``: sequence dropout, :mod:`cascadeseg.data.missing`)
and a fifth step predicts the first held-out case again without those sequences
(``predictions_missing``), and prints its Dice per region beside the same case's with all four
(also in ``evaluation/missing_sequences.json`` and the summary, key ``missing_sequences``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascadeseg.config import Config, apply_overrides, load_config, resolve_recipe
from cascadeseg.errors import ConfigError

DEMO_MODELS = ("two_stage", "unet3d", "cunet", "unet2d")
#: Cases the demo generates by default: 32 to train on and 8 held out. Synthetic cases cost a
#: second or two each, and training on 32 instead of 16 generalised better to unseen anatomy in
#: the same 7 minutes (fewer false positives on normal cortex and on bias-brightened T1ce;
#: docs/results.md, section 4).
DEMO_CASES = 40
DEMO_TEST_CASES = 8
#: The whole demo's wall-clock limit by default (minutes, ``--deadline``). Data making,
#: preprocessing, prediction and evaluation take 1.5 to 3 minutes depending on the CPU (about
#: 1.5 on a 2-core AVX-512 EPYC, 2.5 on a 2-core AVX2-only one); training gets what is left
#: (at most ``minutes`` when given).
DEMO_DEADLINE = 10.0
#: Training gets at least this much (minutes) whatever the deadline leaves; the demo then ends
#: late and says so before training.
MIN_TRAINING_MINUTES = 1.0
#: Training's budget (minutes) without a deadline (``--deadline 0``) and no ``--minutes``; with
#: one, training gets all the deadline leaves.
MINUTES_WITHOUT_DEADLINE = 7.0
#: Seconds kept per held-out case for the evaluation and the report (with 2 workers). Measured
#: on a 2-core AVX2-only EPYC, the slowest CPU the demo has run on: 8 cases in 6 s.
EVALUATION_SECONDS_PER_CASE = 1.5
#: Seconds training spends outside its time budget (building the model and loader, the last
#: validation, checkpoint and summary): 13 s on the same CPU.
TRAINING_OVERHEAD_SECONDS = 15.0
#: The prediction estimate's margin over the first held-out case's time. None is needed: that
#: case also bears the one-off start-up of the first passes, which the prediction step pays once
#: for all its cases. Measured on a 2-core AVX2-only EPYC: the estimate's case 9.7 s, the 8
#: cases 6.4 to 11.1 s each, 72 s in all.
PREDICTION_MARGIN = 1.0


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things and what it measured."""

    out: Path
    run_dir: Path
    predictions: Path
    report: Path
    summary: dict[str, Any]
    seconds: float
    #: Wall-clock seconds of each step: ``data``, ``training`` (preprocessing included),
    #: ``prediction``, ``evaluation`` and, with ``missing``, ``missing``.
    stage_seconds: dict[str, float]


class _Stages:
    """The demo's numbered steps: each announced when it begins and timed until the next."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, name: str, title: str) -> None:
        self._close()
        print(f"\n== {len(self.seconds) + 1}/{self.total} {title}", flush=True)
        self._current = (name, time.perf_counter())

    def elapsed(self) -> float:
        """Seconds since the first step began."""
        return time.perf_counter() - self.start

    def finish(self) -> float:
        """Close the last step, print the time of each; the whole demo's seconds."""
        self._close()
        seconds = self.elapsed()
        steps = ", ".join(f"{name} {s / 60:.1f}" for name, s in self.seconds.items())
        print(f"\nfinished in {seconds / 60:.1f} min ({steps} min)")
        return seconds

    def _close(self) -> None:
        if self._current is not None:
            name, began = self._current
            self.seconds[name] = time.perf_counter() - began


def run_demo(
    out: Path,
    *,
    minutes: float | None = None,
    cases: int = DEMO_CASES,
    test_cases: int = DEMO_TEST_CASES,
    model: str = "two_stage",
    seed: int = 0,
    workers: int = 2,
    synth_scale: float = 1.0,
    overrides: tuple[str, ...] = (),
    multifocal_prob: float = 0.0,
    missing: tuple[str, ...] = (),
    deadline: float | None = DEMO_DEADLINE,
) -> DemoResult:
    """Generate data, train, predict held-out cases with TTA, evaluate, write the report.

    Args:
        out: folder for everything the demo makes.
        minutes: training budget (wall clock) in minutes, at most; ``None``: all the
            ``deadline`` leaves, or :data:`MINUTES_WITHOUT_DEADLINE` without one.
        cases: number of synthetic cases in total (training + held out).
        test_cases: how many of them are held out for prediction and evaluation.
        model: registered model name; its recipe ``<model>_cpu`` is used.
        seed: seed of the data generator and of training.
        workers: processes for data generation and evaluation.
        synth_scale: grid scale of the synthetic cases (1: BraTS geometry, 240x240x155 at 1 mm;
            0.25: 60x60x39 at 4 mm, for smoke tests).
        overrides: extra ``key=value`` config overrides.
        multifocal_prob: share of multi-focal synthetic cases (several tumours and satellites,
            :class:`~cascadeseg.data.synth.SynthConfig`); 0 keeps the demo's data as it was.
        missing: sequences (``flair``, ``t1``, ``t1ce``, ``t2``) the last step leaves out of the
            first held-out case; given, the model trains with ``<model>_missing_cpu``.
        deadline: the whole demo's wall-clock limit (minutes; ``None``: none): training's
            budget is shortened to what the steps before and after it leave
            (:func:`training_minutes`), never below :data:`MIN_TRAINING_MINUTES`.
    """
    _check_arguments(model, cases, test_cases, minutes, synth_scale, workers, multifocal_prob)
    _check_deadline(deadline)
    budget = requested_minutes(minutes, deadline)
    recipe, missing = _recipe(model, missing)
    # The recipe first: a bad budget or override stops the demo before minutes of data making.
    cfg = _demo_config(recipe, budget, seed, cases - test_cases, overrides)
    out = Path(out)
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    stages = _Stages(5 if missing else 4)

    stages.begin("data", f"synthetic data: {cases - test_cases} training + {test_cases} held-out")
    _make_data(train_dir, test_dir, cases, test_cases, seed, workers, synth_scale, multifocal_prob)

    stages.begin("training", f"training {model} (recipe {recipe})")
    _preprocess(cfg, train_dir, workers)
    if deadline is not None:
        cases_after = test_cases + bool(missing)
        cfg = _fit_deadline(cfg, budget, deadline, test_dir, cases_after, workers, stages)
    # Loaded when the demo runs, not for `cascadeseg demo --help`: torch, about 2 s.
    from cascadeseg.training.trainer import train

    # A demo interrupted during training continues from its last checkpoint.
    resume = (out / "run" / "checkpoints" / "last.pt").is_file()
    run_dir = train(cfg, train_dir, out / "run", resume=resume)

    stages.begin("prediction", "predicting the held-out cases with 8-flip TTA")
    predictions = _predict(run_dir, test_dir, out / "predictions")

    stages.begin("evaluation", "evaluating")
    summary, report = _evaluate(predictions, test_dir, out / "evaluation", workers, model)
    if missing:
        stages.begin("missing", f"the first held-out case again without {', '.join(missing)}")
        summary["missing_sequences"] = _predict_missing(run_dir, test_dir, out, missing)
    seconds = stages.finish()
    print(f"  trained model: {run_dir}   (cascadeseg predict --model {run_dir} ...)")
    print(f"  predictions:   {predictions}")
    print(f"  metrics:       {out / 'evaluation' / 'metrics.csv'}")
    print(f"  report:        {report}")
    if missing:
        print(f"  without {', '.join(missing)}: {out / 'evaluation' / 'missing_sequences.json'}")
    return DemoResult(out, run_dir, predictions, report, summary, seconds, dict(stages.seconds))


def _demo_config(
    recipe: str, budget: float | None, seed: int, training_cases: int, overrides: tuple[str, ...]
) -> Config:
    """The recipe with the demo's settings and ``overrides``. Validation cases come from the
    training folder: k folds, fewer when there are few cases; none when validation would only
    watch the run (:func:`validation_only_watches`): every training case then trains, unless
    ``overrides`` set ``data.split``. Without a ``budget`` of its own the run carries
    :data:`MINUTES_WITHOUT_DEADLINE` until the deadline's share replaces it
    (:func:`_fit_deadline`)."""
    folds = max(2, min(5, training_cases))
    minutes = budget or MINUTES_WITHOUT_DEADLINE
    settings = [f"train.max_minutes={minutes}", f"seed={seed}", f"data.folds={folds}"]
    cfg = load_config(recipe, [*settings, *overrides])
    if validation_only_watches(cfg) and not any(o.startswith("data.split=") for o in overrides):
        cfg = apply_overrides(cfg, ["data.split=all"])
    return cfg


def validation_only_watches(cfg: Config) -> bool:
    """Whether validation only watches a run of ``cfg``, choosing nothing it predicts with: k folds,
    no early stopping, prediction from the snapshots of its last epochs (``train.snapshots``; never
    ``best.pt``, which validation chooses). The demo then trains on all its training cases
    (``data.split=all``, as the two-stage paper's models on all the data): a validation fold of its
    32 cases is a fifth less to learn from, and its cases without enhancing tumour are few
    (docs/results-all-cases.md)."""
    train = cfg.train
    return cfg.data.split == "kfold" and train.snapshots > 0 and train.early_stop_patience == 0


def requested_minutes(minutes: float | None, deadline: float | None) -> float | None:
    """Training's own budget (minutes): ``minutes`` when given; else none under a ``deadline``
    (training gets all it leaves, :func:`training_minutes`), :data:`MINUTES_WITHOUT_DEADLINE`
    without one."""
    if minutes is not None or deadline is not None:
        return minutes
    return MINUTES_WITHOUT_DEADLINE


def training_minutes(
    minutes: float | None, deadline: float, spent_s: float, after_s: float
) -> float:
    """Training's budget (minutes) under the whole demo's ``deadline`` (minutes).

    What the deadline leaves after ``spent_s`` (the steps before training) and ``after_s``
    (estimated: training's own overhead, prediction, evaluation), at most ``minutes`` (the
    recipe's budget; ``None``: none) and at least :data:`MIN_TRAINING_MINUTES`.
    """
    left = deadline - (spent_s + after_s) / 60.0
    budget = left if minutes is None else min(minutes, left)
    return max(MIN_TRAINING_MINUTES, budget)


def _fit_deadline(
    cfg: Config,
    asked: float | None,
    deadline: float,
    test_dir: Path,
    cases: int,
    workers: int,
    stages: _Stages,
) -> Config:
    """``cfg`` with the training budget the deadline leaves (:func:`training_minutes`, at most
    ``asked`` minutes) once what follows training is estimated (:func:`one_prediction_seconds`
    for ``cases`` predictions), said in two lines (and a warning when the demo will end after
    its deadline)."""
    case_s = one_prediction_seconds(cfg, test_dir)
    print(f"the first held-out case predicted untrained in {case_s:.1f} s", flush=True)
    after_s = after_training_seconds(case_s, cases, workers) + TRAINING_OVERHEAD_SECONDS
    spent_s = stages.elapsed()
    # Rounded once: the printed minutes are those the run's config.yaml keeps.
    budget = round(training_minutes(asked, deadline, spent_s, after_s), 2)
    shortened = f" instead of {asked:g}" if asked is not None and budget < asked - 0.05 else ""
    print(
        f"deadline {deadline:g} min: {spent_s / 60:.1f} min spent, {after_s / 60:.1f} min "
        f"estimated after training -> training for {budget:.1f} min{shortened}",
        flush=True,
    )
    if (spent_s + after_s) / 60.0 + budget > deadline + 0.05:
        print(
            f"warning: the deadline leaves less than {MIN_TRAINING_MINUTES:g} min of training; "
            f"the demo will take longer than {deadline:g} min",
            flush=True,
        )
    train = dataclasses.replace(cfg.train, max_minutes=budget)
    return dataclasses.replace(cfg, train=train)


def after_training_seconds(case_s: float, cases: int, workers: int) -> float:
    """Seconds the prediction and evaluation steps will take: ``cases`` predictions of
    ``case_s`` seconds (:func:`one_prediction_seconds`) times :data:`PREDICTION_MARGIN`, plus
    :data:`EVALUATION_SECONDS_PER_CASE` a case (with 2 workers; scaled by ``2 / workers``)."""
    evaluation = EVALUATION_SECONDS_PER_CASE * cases * 2 / max(1, workers)
    return case_s * cases * PREDICTION_MARGIN + evaluation


def one_prediction_seconds(cfg: Config, test_dir: Path) -> float:
    """Seconds to read and predict the first case of ``test_dir`` as the prediction step will
    predict each case, estimated before training.

    8-flip TTA, the recipe's inference settings, passes over the whole volume, by the recipe's
    network with its initial weights: a pass costs what a trained network's costs (same shapes,
    same operations).
    """
    # Loaded when the demo runs, not for `cascadeseg demo --help`: torch, about 2 s.
    from cascadeseg.config import to_dict
    from cascadeseg.data.layouts import discover_cases, read_case
    from cascadeseg.inference import options_from_recipe, predict_case
    from cascadeseg.inference.loading import eval_network, member_of_recipe
    from cascadeseg.training.build import build_training_model, saved_model_args

    model = build_training_model(cfg)
    # As a checkpoint of this recipe loads (load_checkpoint_model), the weights aside.
    member = member_of_recipe(eval_network(model), to_dict(cfg), saved_model_args(model))
    # Over the whole volume: an untrained network finds no tumour box to narrow the passes to.
    given = {"tta": True, "tta_region": "volume"}
    options = options_from_recipe([member], given, progress=False)
    start = time.perf_counter()
    predict_case(read_case(discover_cases(test_dir)[0]), [member], options)
    return time.perf_counter() - start


def _check_arguments(
    model: str,
    cases: int,
    test_cases: int,
    minutes: float | None,
    synth_scale: float,
    workers: int,
    multifocal_prob: float,
) -> None:
    """Raise :class:`ConfigError` for arguments the demo cannot run with, before any work."""
    if model not in DEMO_MODELS:
        raise ConfigError(f"--model {model!r}: choose one of {', '.join(DEMO_MODELS)}")
    if test_cases < 1 or cases - test_cases < 2:
        raise ConfigError("--cases must leave at least 2 training cases and 1 held-out case")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--minutes must be a positive number, got {minutes}")
    if not (math.isfinite(synth_scale) and synth_scale > 0):
        raise ConfigError(f"--scale must be a positive number, got {synth_scale}")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    # SynthConfig does not check its fields itself, so its value is checked here.
    if not 0.0 <= multifocal_prob <= 1.0:
        raise ConfigError(f"--multifocal-prob must lie in [0, 1] (got {multifocal_prob})")


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
        raise ConfigError(f"--deadline must be a positive number of minutes, got {deadline}")


def _recipe(model: str, missing: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The demo's recipe for ``model`` and the checked ``missing`` sequences: ``<model>_cpu``,
    or with ``missing`` ``<model>_missing_cpu`` (a :class:`ConfigError` when there is none)."""
    if not missing:
        return f"{model}_cpu", ()
    # Loaded only with --missing, not for `cascadeseg demo --help`: the module loads torch.
    from cascadeseg.data.missing import parse_sequences

    sequences = parse_sequences(missing, "--missing")
    if not _has_recipe(f"{model}_missing_cpu"):
        able = [m for m in DEMO_MODELS if _has_recipe(f"{m}_missing_cpu")]
        raise ConfigError(
            f"--missing: the model {model} has no missing-sequence recipe ({model}_missing_cpu); "
            f"use --model {' or '.join(able) or '(none)'}"
        )
    return f"{model}_missing_cpu", sequences


def _has_recipe(name: str) -> bool:
    try:
        resolve_recipe(name)
    except ConfigError:
        return False
    return True


def _make_data(
    train_dir: Path,
    test_dir: Path,
    cases: int,
    test_cases: int,
    seed: int,
    workers: int,
    synth_scale: float,
    multifocal_prob: float,
) -> None:
    """The synthetic training and held-out cases, written in the BraTS 2021 layout."""
    # Loaded when the demo runs, not for `cascadeseg demo --help`: scipy and the template, ~1 s.
    from cascadeseg.data.synth import SynthConfig, synthesize_dataset

    synth = SynthConfig(shape_scale=synth_scale, multifocal_prob=multifocal_prob)
    # The demo's own folders (overwrite): a rerun or a resumed run writes the same cases again.
    make = functools.partial(
        synthesize_dataset, layout="brats2021", workers=workers, config=synth, overwrite=True
    )
    # Different seeds for the two folders: the held-out cases are never seen in training.
    make(train_dir, cases - test_cases, seed=seed)
    make(test_dir, test_cases, seed=seed + 100_000)


def _preprocess(cfg: Config, train_dir: Path, workers: int) -> None:
    """Fill the preprocessing cache training reads, ``workers`` cases at a time.

    Training fills it itself with ``data.num_workers`` processes (one in the CPU recipes, whose
    other core trains); before training starts both cores are free. Measured on a 2-core AVX2
    EPYC: 32 cases in 18 s with two processes, 34 s with one. A case that cannot be read is left
    to training, which stops on it with its one-line error.
    """
    from cascadeseg.training.data import warm_training_cache

    warm_training_cache(train_dir, cfg.data, workers=workers)


def _predict(run_dir: Path, test_dir: Path, predictions: Path) -> Path:
    """The held-out cases segmented with the trained run (8-flip TTA) into ``predictions``."""
    # Loaded when the demo runs, not for `cascadeseg demo --help`: torch, about 2 s.
    from cascadeseg.inference import load_models, options_from_recipe, predict

    models = load_models([run_dir])
    # The recipe's inference settings (precision, threshold, ...), as `cascadeseg predict` does.
    options = options_from_recipe(models, {"tta": True}, overwrite=True)
    predict(models, test_dir, predictions, options)
    return predictions


def _evaluate(
    predictions: Path, test_dir: Path, folder: Path, workers: int, model: str
) -> tuple[dict[str, Any], Path]:
    """``metrics.csv``, ``summary.json`` and ``report.html`` in ``folder``: (summary, report)."""
    # Loaded when the demo runs, not for `cascadeseg demo --help`: matplotlib and scipy, ~1 s.
    from cascadeseg.evaluation.evaluate import evaluate
    from cascadeseg.evaluation.report import write_report

    result = evaluate(predictions, test_dir, folder, workers=workers)
    report = write_report(folder, result, methods=[model], title=f"cascadeseg demo: {model}")
    return dict(result.summary), report


def _predict_missing(
    run_dir: Path, test_dir: Path, out: Path, missing: tuple[str, ...]
) -> dict[str, Any]:
    """The first held-out case predicted again without ``missing`` (8-flip TTA) into
    ``out/predictions_missing``; its Dice per region beside the same case's with all four
    sequences (``out/predictions``), printed and written to
    ``out/evaluation/missing_sequences.json``."""
    # Loaded when the demo runs, not for `cascadeseg demo --help`: torch, about 2 s.
    from cascadeseg.evaluation.evaluate import evaluate_case
    from cascadeseg.evaluation.matching import find_references
    from cascadeseg.fsutil import write_json_atomic
    from cascadeseg.inference import load_models, options_from_recipe, predict

    reference = find_references(test_dir)[0]
    folder = Path(reference.seg).parent
    models = load_models([run_dir])
    options = options_from_recipe(models, {"tta": True}, overwrite=True, missing=missing)
    predict(models, folder, out / "predictions_missing", options)
    rows = {
        "all four": evaluate_case(out / "predictions" / f"{reference.case_id}.nii.gz", reference),
        "without " + ", ".join(missing): evaluate_case(
            out / "predictions_missing" / f"{reference.case_id}.nii.gz", reference
        ),
    }
    dice = {
        name: {r: float(row[f"dice_{r}"]) for r in ("wt", "tc", "et")} for name, row in rows.items()
    }
    record = {"case": reference.case_id, "missing": list(missing), "dice": dice}
    print(f"\n{reference.case_id}: Dice with all four sequences and without {', '.join(missing)}")
    print(f"{'sequences':<24}{'WT':>8}{'TC':>8}{'ET':>8}")
    for name, values in dice.items():
        print(f"{name:<24}" + "".join(f"{values[r]:>8.3f}" for r in ("wt", "tc", "et")))
    write_json_atomic(record, out / "evaluation" / "missing_sequences.json", indent=1)
    return record
