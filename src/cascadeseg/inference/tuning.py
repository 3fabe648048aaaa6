"""Tuning post-processing on validation cases: the two-stage paper's ET threshold (sec. 3.4,
"the threshold is chosen for each experiment independently") and the lesion-wise component sizes
(:func:`~cascadeseg.inference.lesion_postprocess.tune_min_lesion_voxels`), written to a run's
``postprocess.json``, which :func:`cascadeseg.inference.load_models` and ``predict`` then use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cascadeseg.data.labels import ET, probabilities_to_label
from cascadeseg.data.layouts import CaseRef, discover_cases, read_case
from cascadeseg.data.splits import load_split
from cascadeseg.errors import InputError
from cascadeseg.evaluation.metrics import dice
from cascadeseg.fsutil import write_json_atomic
from cascadeseg.inference.lesion_postprocess import (
    DEFAULT_LESION_CANDIDATES,
    LesionScore,
    LesionTuneResult,
    tune_min_lesion_voxels,
)
from cascadeseg.inference.loading import load_models
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.runtime import resolve_device

#: Default candidates of ``tune-postprocess`` in voxels (1 mm^3 on BraTS data). Public BraTS
#: solutions settle between 200 and 1000 voxels (nnU-Net's BraTS 2020 entry tuned this range).
DEFAULT_ET_CANDIDATES: tuple[int, ...] = (0, 50, 100, 200, 300, 500, 750, 1000, 1500)

#: Per case ``(prediction, reference, spacing)``: internal label maps on one grid, voxel size (mm).
LabelPair = tuple[np.ndarray, np.ndarray, tuple[float, ...]]


@dataclass(frozen=True)
class EtStats:
    """What the ET threshold needs from one case: predicted ET voxels and ET Dice before removal."""

    pred_voxels: int
    dice: float
    ref_empty: bool

    def dice_after(self, et_min_voxels: int) -> float:
        """ET Dice after :func:`postprocess_et` with ``et_min_voxels``."""
        if et_min_voxels > 0 and 0 < self.pred_voxels < et_min_voxels:
            return 1.0 if self.ref_empty else 0.0
        return self.dice


def et_stats(pred_label: np.ndarray, ref_label: np.ndarray) -> EtStats:
    """:class:`EtStats` of one case from internal label maps on the same grid."""
    pred_et = np.asarray(pred_label) == ET
    ref_et = np.asarray(ref_label) == ET
    return EtStats(
        pred_voxels=int(np.count_nonzero(pred_et)),
        dice=dice(pred_et, ref_et),
        ref_empty=not bool(ref_et.any()),
    )


@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune_et_threshold`.

    Attributes:
        best: the chosen ``et_min_voxels``.
        mean_dice: candidate -> mean ET Dice over the cases.
        n_cases: number of cases.
        lesion: the per-region component-size thresholds (:func:`tune_postprocess` with a
            ``lesion_score``), else ``None``.
    """

    best: int
    mean_dice: dict[int, float]
    n_cases: int
    lesion: LesionTuneResult | None = None


def tune_et_threshold(
    cases_probs_and_refs: Iterable[tuple[np.ndarray, np.ndarray] | EtStats],
    candidates: Sequence[int] = DEFAULT_ET_CANDIDATES,
) -> TuneResult:
    """Choose the ET volume threshold by mean ET Dice (two-stage paper, sec. 3.4).

    Args:
        cases_probs_and_refs: per case either ``(prediction, reference)`` or a precomputed
            :class:`EtStats`. ``prediction`` is the *un-post-processed* internal label map
            ``(X, Y, Z)`` or region probabilities ``(3, X, Y, Z)`` (thresholded at 0.5);
            ``reference`` the internal label map on the same grid.
        candidates: thresholds in voxels to try (0 = no post-processing).

    Returns:
        :class:`TuneResult`; ties go to the smallest threshold (the least change).

    Raises:
        ValueError: no cases or no candidates.
    """
    stats: list[EtStats] = []
    for item in cases_probs_and_refs:
        if isinstance(item, EtStats):
            stats.append(item)
            continue
        pred, ref = item
        pred = np.asarray(pred)
        if pred.ndim == 4:
            pred = probabilities_to_label(pred)
        stats.append(et_stats(pred, ref))
    if not stats:
        raise ValueError("tune_et_threshold needs at least one case")
    if not candidates:
        raise ValueError("tune_et_threshold needs at least one candidate")
    mean_dice = {
        int(c): float(np.mean([s.dice_after(int(c)) for s in stats])) for c in sorted(candidates)
    }
    best = max(mean_dice, key=lambda c: (mean_dice[c], -c))
    return TuneResult(best=best, mean_dice=mean_dice, n_cases=len(stats))


def tune_postprocess(
    run_dir: str | Path,
    data: str | Path,
    *,
    cases: str = "val",
    candidates: Sequence[int] = DEFAULT_ET_CANDIDATES,
    options: PredictOptions | None = None,
    write: bool = True,
    lesion_score: LesionScore | None = None,
    lesion_candidates: Sequence[int] | None = None,
    lesion_objective: str = "",
) -> TuneResult:
    """Pick a run's ET threshold on validation cases and store it in ``run_dir/postprocess.json``.

    The run's models (snapshots, else best/last) predict each case without post-processing; the
    candidate with the best mean ET Dice (:func:`tune_et_threshold`) is written as
    ``{"et_min_voxels": N, ...}``, which :func:`cascadeseg.inference.load_models` and ``predict``
    then use. With ``lesion_score``, the per-region component-size thresholds are tuned first
    (:func:`~.lesion_postprocess.tune_min_lesion_voxels`), written as ``"min_lesion_voxels"``,
    and the ET threshold is tuned on labels with them applied (the order ``predict`` applies
    them in).

    Args:
        run_dir: a training run directory (``checkpoints/``, ``split.json``).
        data: dataset folder holding the cases (any supported layout).
        cases: ``val`` (the ``val`` ids of ``split.json``), ``test``, or ``all`` (every labelled
            case of ``data``, e.g. a separate validation folder).
        candidates: thresholds in voxels (0 = off).
        options: prediction options (``et_min_voxels`` is ignored: raw predictions are tuned).
        write: write ``postprocess.json`` (atomically).
        lesion_score: ``score(pred_mask, ref_mask, spacing)`` of one region to maximise, e.g. the
            BraTS 2023 lesion-wise Dice (``tune-postprocess`` passes it); ``None`` tunes the ET
            threshold only.
        lesion_candidates: component-size thresholds in voxels (default
            :data:`~.lesion_postprocess.DEFAULT_LESION_CANDIDATES`).
        lesion_objective: a name for ``lesion_score``, recorded in ``postprocess.json``.

    Returns:
        The :class:`TuneResult`.

    Raises:
        InputError: no labelled case to tune on, or ``split.json`` lacks the subset.
    """
    run_dir = Path(run_dir)
    pairs = _raw_predictions(run_dir, tuning_cases(run_dir, Path(data), cases), options)
    lesion = None
    if lesion_score is not None:
        lesion = tune_min_lesion_voxels(
            pairs, lesion_score, lesion_candidates or DEFAULT_LESION_CANDIDATES
        )
        # The labels with the chosen thresholds applied, as the tuning left them.
        pairs = [(p, r, sp) for p, (_, r, sp) in zip(lesion.processed, pairs)]
    stats = [et_stats(pred, ref_label) for pred, ref_label, _ in pairs]
    result = dataclasses.replace(tune_et_threshold(stats, candidates), lesion=lesion)
    if write:
        record = _postprocess_record(result, cases, str(data), lesion_objective)
        write_json_atomic(record, run_dir / "postprocess.json", indent=1)
    return result


def tuning_cases(run_dir: Path, data: Path, cases: str) -> list[CaseRef]:
    """The labelled cases of ``data`` to tune on: all (``cases="all"``), or those of the
    ``cases`` subset of ``run_dir/split.json``.

    Raises:
        InputError: ``split.json`` lacks the subset, or no labelled case is left.
    """
    refs = [r for r in discover_cases(data) if "seg" in r.files]
    if cases != "all":
        split_file = run_dir / "split.json"
        split = load_split(split_file)
        if cases not in split:
            raise InputError(f"{split_file}: no {cases!r} subset (has {', '.join(split)})")
        wanted = set(split[cases])
        refs = [r for r in refs if r.case_id in wanted]
    if not refs:
        raise InputError(f"{data}: no labelled {cases} case to tune the ET threshold on")
    return refs


def _raw_predictions(
    run_dir: Path, refs: Sequence[CaseRef], options: PredictOptions | None
) -> list[LabelPair]:
    """The run's predictions of ``refs`` without any post-processing, with their references."""
    off = {"wt": 0, "tc": 0, "et": 0}
    opts = dataclasses.replace(options or PredictOptions(), et_min_voxels=0, min_lesion_voxels=off)
    models = load_models([run_dir], resolve_device(opts.device))
    pairs: list[LabelPair] = []
    for ref in tqdm(refs, desc="tuning post-processing", unit="case", disable=not opts.progress):
        case = read_case(ref)
        assert case.label is not None
        prediction = predict_case(case, models, opts)
        pairs.append((prediction.label, case.label, tuple(case.meta.spacing)))
    return pairs


def _postprocess_record(
    result: TuneResult, cases: str, data: str, lesion_objective: str
) -> dict[str, object]:
    """The ``postprocess.json`` record of a tuning result."""
    record: dict[str, object] = {
        "et_min_voxels": result.best,
        "mean_et_dice": {str(k): v for k, v in result.mean_dice.items()},
        "n_cases": result.n_cases,
        "cases": cases,
        "data": data,
    }
    lesion = result.lesion
    if lesion is not None:
        record["min_lesion_voxels"] = lesion.best
        record["lesion_objective"] = lesion_objective
        record["mean_lesion_score"] = {
            region: {str(k): (None if math.isnan(v) else v) for k, v in scores.items()}
            for region, scores in lesion.mean_score.items()
        }
    return record
