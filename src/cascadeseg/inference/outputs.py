"""What ``predict`` writes and reports: per case ``<case_id>.nii.gz`` (the input's header, affine
and label convention), optional ``<case_id>_probabilities.nii.gz`` and
``<case_id>_uncertainty.nii.gz`` (4D float32, volumes ``[WT, TC, ET]``) and ``<case_id>.json``
(region volumes in mL, lesions, the settings used); the console line of each case and the summary
of a batch. Every file is written to a temporary name in the output folder and renamed into place,
so it appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg import __version__
from cascadeseg.data.case import Case, Meta
from cascadeseg.data.labels import REGIONS, label_to_regions
from cascadeseg.data.layouts import write_label_map
from cascadeseg.data.nifti import save_nifti
from cascadeseg.errors import InputError
from cascadeseg.fsutil import write_json_atomic
from cascadeseg.inference.options import PredictOptions


@dataclass(frozen=True, eq=False)
class Prediction:
    """The result of :func:`~cascadeseg.inference.predictor.predict_case`, on the source grid.

    Attributes:
        case_id: the case id.
        label: ``(X, Y, Z)`` uint8 internal labels (0 bg, 1 NCR, 2 ED, 3 ET), post-processed.
        probabilities: ``(3, X, Y, Z)`` float32 region probabilities ``[WT, TC, ET]``.
        uncertainty: ``(3, X, Y, Z)`` float32 voxel-wise variance of the probabilities over all
            TTA passes of all members, or ``None`` when not asked for.
        volumes_ml: region volumes ``{"WT", "TC", "ET"}`` in mL (voxel size from the header).
        info: settings used and timings (JSON-friendly).
        lesions: lesion counts and volumes per region
            (:func:`~cascadeseg.inference.lesion_postprocess.summarise_lesions`).
    """

    case_id: str
    label: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray | None
    volumes_ml: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    lesions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CaseResult:
    """What happened to one case in :func:`~cascadeseg.inference.predictor.predict`.

    Attributes:
        case_id: the case id.
        status: ``ok``, ``skipped`` (outputs exist, no ``overwrite``) or ``failed``.
        outputs: files written.
        message: why it failed or was skipped ("" when ok).
        volumes_ml: region volumes in mL (ok cases).
        seconds: wall time of the case (reading, prediction and writing).
        missing: the sequences the case lacked (zero-filled; ``--missing`` included).
        substituted: ``{missing sequence: what replaced it}`` for a model trained without
            sequence dropout (``--substitute-missing``; e.g. ``{"t1ce": "t1"}``).
    """

    case_id: str
    status: str
    outputs: list[Path] = field(default_factory=list)
    message: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    missing: tuple[str, ...] = ()
    substituted: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# volumes


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL."""
    return math.prod(abs(float(s)) for s in spacing) / 1000.0


def region_volumes_ml(label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes of ``[WT, TC, ET]`` in mL (1 mL = 1000 mm^3) of an internal label map."""
    voxel_ml = voxel_volume_ml(spacing)
    regions = label_to_regions(label)
    return {
        name: round(int(np.count_nonzero(r)) * voxel_ml, 4) for name, r in zip(REGIONS, regions)
    }


# --------------------------------------------------------------------------------------------
# files


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def output_paths(case_id: str, output_dir: Path, options: PredictOptions) -> dict[str, Path]:
    """Files written for a case, by kind (``label``, ``json``, ``probabilities``,
    ``uncertainty``). Raises InputError for a case id that could leave ``output_dir``."""
    if not _SAFE_ID.match(case_id) or ".." in case_id:
        raise InputError(f"case id {case_id!r} is not a safe file name; nothing written")
    paths = {
        "label": output_dir / f"{case_id}.nii.gz",
        "json": output_dir / f"{case_id}.json",
    }
    if options.save_probabilities:
        paths["probabilities"] = output_dir / f"{case_id}_probabilities.nii.gz"
    if options.save_uncertainty:
        paths["uncertainty"] = output_dir / f"{case_id}_uncertainty.nii.gz"
    return paths


def _float_header(meta: Meta) -> Any:
    if meta.header is None:
        return None
    header = meta.header.copy()
    # Probabilities are in [0, 1]: the source's display window would hide them.
    header["cal_min"] = 0
    header["cal_max"] = 0
    return header


def _write_4d(array: np.ndarray, meta: Meta, path: Path) -> Path:
    """``(3, X, Y, Z)`` -> a 4D NIfTI ``(X, Y, Z, 3)`` float32 on the input's grid (atomic)."""
    data = np.ascontiguousarray(np.moveaxis(array.astype(np.float32, copy=False), 0, -1))
    return save_nifti(data, np.asarray(meta.affine), _float_header(meta), path)


def write_prediction(
    prediction: Prediction, case: Case, paths: dict[str, Path], options: PredictOptions
) -> list[Path]:
    """Write a prediction's files (each atomically; the JSON last, marking the case complete)."""
    written: list[Path] = []
    if "probabilities" in paths:
        written.append(_write_4d(prediction.probabilities, case.meta, paths["probabilities"]))
    if "uncertainty" in paths and prediction.uncertainty is not None:
        written.append(_write_4d(prediction.uncertainty, case.meta, paths["uncertainty"]))
    convention = options.labels or case.meta.label_convention
    # The writer names the file after meta.case_id: make that the planned name, so that no other
    # path (possibly an input's, which the plan did not check) is ever written.
    meta = dataclasses.replace(case.meta, case_id=paths["label"].name[: -len(".nii.gz")])
    written.append(
        write_label_map(prediction.label, meta, paths["label"].parent, convention=convention)
    )
    voxel_ml = voxel_volume_ml(case.meta.spacing)
    record = {
        "case_id": prediction.case_id,
        "version": __version__,
        "volumes_ml": prediction.volumes_ml,
        "voxel_volume_ml": voxel_ml,
        "label_convention": convention,
        "shape": list(case.meta.shape),
        "spacing_mm": list(case.meta.spacing),
        "inputs": {k: str(v) for k, v in case.meta.files.items() if k not in case.missing},
        "missing_sequences": list(case.missing),
        # {missing sequence: the sequence copied, or "zero"} (--substitute-missing).
        "substituted": dict(prediction.info.get("substituted") or {}),
        "outputs": {k: p.name for k, p in paths.items() if k != "json"},
        "probability_volumes": list(REGIONS),
        "lesions": prediction.lesions,
        "settings": prediction.info,
    }
    written.append(write_json_atomic(record, paths["json"], indent=1))
    return written


# --------------------------------------------------------------------------------------------
# a batch


def complete_outputs(
    prediction: Prediction, case: Case, paths: dict[str, Path], keep: set[str]
) -> list[Path]:
    """Write the maps of ``paths`` not in ``keep``, and list them in the case's JSON record
    (whose volumes and settings describe the kept segmentation and stay as they are)."""
    written: list[Path] = []
    maps = {"probabilities": prediction.probabilities, "uncertainty": prediction.uncertainty}
    for kind, array in maps.items():
        if kind in paths and kind not in keep and array is not None:
            written.append(_write_4d(array, case.meta, paths[kind]))
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    record.setdefault("outputs", {}).update({k: p.name for k, p in paths.items() if k != "json"})
    written.append(write_json_atomic(record, paths["json"], indent=1))
    return written


# --------------------------------------------------------------------------------------------
# console


def format_result(result: CaseResult) -> str:
    """The console line of one case."""
    if result.status == "ok":
        vols = "  ".join(f"{k} {v:8.2f} mL" for k, v in result.volumes_ml.items())
        note = f"  [{result.message}]" if result.message else ""
        gone = f"  missing: {', '.join(result.missing)}" if result.missing else ""
        if result.substituted:
            gone += f" ({substitution_text(result.substituted)})"
        return f"{result.case_id}  {vols}  ({result.seconds:.1f} s){gone}{note}"
    return f"{result.case_id}  {result.status.upper()}: {result.message}"


def substitution_text(substituted: dict[str, str]) -> str:
    """``{"t1ce": "t1", "t2": "zero"}`` -> ``"t1ce <- t1, t2 <- zero"``."""
    return ", ".join(f"{k} <- {v}" for k, v in substituted.items())


def summary_lines(results: Sequence[CaseResult], output_dir: Path) -> list[str]:
    """Summary printed after a batch: counts, and the failed cases with their reasons."""
    ok = [r for r in results if r.status == "ok"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    lines = [
        f"{len(results)} case(s): {len(ok)} written to {output_dir}, "
        f"{len(skipped)} skipped, {len(failed)} failed"
    ]
    if skipped:
        lines.append(
            "skipped (outputs exist; --overwrite replaces them): "
            + ", ".join(r.case_id for r in skipped)
        )
    kinds: dict[str, int] = {}
    for r in ok:
        if r.substituted:
            text = substitution_text(r.substituted)
            kinds[text] = kinds.get(text, 0) + 1
    if kinds:
        lines.append(
            "missing sequences substituted (--substitute-missing): "
            + "; ".join(f"{text} in {n} case(s)" for text, n in kinds.items())
        )
    for r in failed:
        lines.append(f"failed: {r.case_id}: {r.message}")
    return lines


def results_to_json(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """JSON-friendly form of :func:`~cascadeseg.inference.predictor.predict`'s results."""
    out = []
    for r in results:
        d = asdict(r)
        d["outputs"] = [str(p) for p in r.outputs]
        out.append(d)
    return out
