"""Post-processing of label maps and its tuning on validation cases.

* :func:`postprocess_et`: two-stage paper, sec. 3.4, "we replace enhancing tumor with necrosis when
  the volume of predicted enhancing tumor is less than the threshold". A case without ET in its
  reference scores ET Dice 0 for any false-positive ET voxel but 1 for an empty prediction (BraTS
  convention), so removing small ET predictions pays off on such cases.
* :func:`tune_et_threshold`: "the threshold is chosen for each experiment independently": the
  candidate with the best mean ET Dice over validation cases.
* :func:`fuse_brain_mask`: CU-Net paper, sec. 2.2, "we extract the non-brain mask in advance and
  fuse it with the outputs of branch1 and branch2": no tumour outside the brain.
* Lesion-aware post-processing (:mod:`cascadeseg.inference.lesion_postprocess`): predicted
  connected components below a per-region size are removed, thresholds tuned for the lesion-wise
  Dice of the BraTS ranking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cascadeseg.data.labels import ET, NCR
from cascadeseg.fsutil import write_json_atomic

if TYPE_CHECKING:
    from cascadeseg.inference.lesion_postprocess import LesionScore, LesionTuneResult
    from cascadeseg.inference.predictor import PredictOptions

#: Default candidates of ``tune-postprocess`` in voxels (1 mm^3 on BraTS data). Public BraTS
#: solutions settle between 200 and 1000 voxels (nnU-Net's BraTS 2020 entry tuned this range).
DEFAULT_ET_CANDIDATES: tuple[int, ...] = (0, 50, 100, 200, 300, 500, 750, 1000, 1500)


def postprocess_et(label: np.ndarray, et_min_voxels: int) -> np.ndarray:
    """Replace enhancing tumour by necrosis when the predicted ET volume is below a threshold.

    Two-stage paper, sec. 3.4. The whole ET of the case is relabelled (not per component), so WT
    and TC are unchanged and only ET moves.

    Args:
        label: ``(X, Y, Z)`` internal label map (0 background, 1 NCR, 2 ED, 3 ET).
        et_min_voxels: ET volumes with fewer voxels than this become NCR; ``<= 0`` disables.

    Returns:
        A new ``(X, Y, Z)`` label map of the same dtype (the input is not modified).
    """
    out = np.array(label, copy=True)
    if et_min_voxels <= 0:
        return out
    et = out == ET
    count = int(np.count_nonzero(et))
    if 0 < count < et_min_voxels:
        out[et] = NCR
    return out


def fuse_brain_mask(probabilities: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Zero the region probabilities outside the brain (CU-Net paper, sec. 2.2, testing).

    Args:
        probabilities: ``(3, X, Y, Z)`` region probabilities ``[WT, TC, ET]``.
        brain_mask: ``(X, Y, Z)`` bool, True inside the brain.

    Returns:
        ``(3, X, Y, Z)`` float32 probabilities, 0 outside the brain.
    """
    return np.where(brain_mask[None], probabilities, 0.0).astype(np.float32, copy=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; both empty counts as 1 (BraTS convention)."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


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
    from cascadeseg.data.labels import probabilities_to_label

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
    import dataclasses

    from tqdm import tqdm

    from cascadeseg.data.layouts import discover_cases, read_case
    from cascadeseg.data.splits import load_split
    from cascadeseg.errors import InputError
    from cascadeseg.inference.ensemble import load_models
    from cascadeseg.inference.predictor import PredictOptions as _Options
    from cascadeseg.inference.predictor import predict_case, resolve_device

    run_dir = Path(run_dir)
    from cascadeseg.inference.lesion_postprocess import (
        DEFAULT_LESION_CANDIDATES,
        remove_small_lesions,
        tune_min_lesion_voxels,
    )

    off = {"wt": 0, "tc": 0, "et": 0}
    opts = dataclasses.replace(options or _Options(), et_min_voxels=0, min_lesion_voxels=off)
    refs = [r for r in discover_cases(Path(data)) if "seg" in r.files]
    if cases != "all":
        split_file = run_dir / "split.json"
        split = load_split(split_file)
        if cases not in split:
            raise InputError(f"{split_file}: no {cases!r} subset (has {', '.join(split)})")
        wanted = set(split[cases])
        refs = [r for r in refs if r.case_id in wanted]
    if not refs:
        raise InputError(f"{data}: no labelled {cases} case to tune the ET threshold on")
    models = load_models([run_dir], resolve_device(opts.device))
    pairs: list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]] = []
    for ref in tqdm(refs, desc="tuning post-processing", unit="case", disable=not opts.progress):
        case = read_case(ref)
        assert case.label is not None
        prediction = predict_case(case, models, opts)
        pairs.append((prediction.label, case.label, tuple(case.meta.spacing)))
    lesion = None
    if lesion_score is not None:
        lesion = tune_min_lesion_voxels(
            pairs, lesion_score, lesion_candidates or DEFAULT_LESION_CANDIDATES
        )
        pairs = [(remove_small_lesions(p, lesion.best), r, sp) for p, r, sp in pairs]
    stats = [et_stats(pred, ref_label) for pred, ref_label, _ in pairs]
    result = dataclasses.replace(tune_et_threshold(stats, candidates), lesion=lesion)
    if write:
        record: dict[str, object] = {
            "et_min_voxels": result.best,
            "mean_et_dice": {str(k): v for k, v in result.mean_dice.items()},
            "n_cases": result.n_cases,
            "cases": cases,
            "data": str(data),
        }
        if lesion is not None:
            record["min_lesion_voxels"] = lesion.best
            record["lesion_objective"] = lesion_objective
            record["mean_lesion_score"] = {
                region: {str(k): (None if math.isnan(v) else v) for k, v in scores.items()}
                for region, scores in lesion.mean_score.items()
            }
        path = run_dir / "postprocess.json"
        write_json_atomic(record, path, indent=1)
    return result
