"""Held-out Dice of issue 20's speed levers on a trained model, against fp32 on the whole volume.

The CPU comparison (:mod:`cascadeseg.bench.cpu_compare`) times the levers with random weights;
whether they change the segmentation needs a trained model and cases with labels. For each case
of a data folder and each lever of :data:`LEVERS` (bf16 autocast, flips on the tumour box,
ONNX Runtime, OpenVINO fp32 / bf16 / int8), the ensemble of a run folder predicts the case on
its preprocessed grid (:func:`cascadeseg.inference.predictor.predict_preprocessed`: flips,
snapshots and the tumour box as ``predict`` runs them; post-processing and writing left out),
timed; the label map is scored by Dice per region ``[WT, TC, ET]`` against the case's label,
and the difference from the baseline (``fp32``: fp32 on the whole volume, the paper's
inference) is kept per case and summarised (mean, worst).

The tumour-box levers (``*-roi``) use the box the model's first pass finds, as ``predict
--tta-region tumour`` does; the row records its fraction of the volume and, once per case,
whether every whole-volume pass of the ensemble labels the voxels outside the box as the first
pass does (:func:`pass_disagreement`; 0 voxels: the passes outside the box could have changed
nothing, for a mean that labels as each of them does).

int8 is NNCF's post-training quantisation, calibrated on crops of other cases' images
(``calibration``: the ranges of the activations only, no labels).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cascadeseg.bench.cpu_rows import VARIANTS, Variant
from cascadeseg.bench.openvino_backend import calibration_crops, openvino_member
from cascadeseg.data.labels import label_to_regions, probabilities_to_label
from cascadeseg.data.preprocess import Preprocessed
from cascadeseg.evaluation.metrics import region_dice
from cascadeseg.inference.ensemble import flip_plan
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.options import PredictOptions, run_precision
from cascadeseg.inference.predictor import members_for_backend, predict_preprocessed
from cascadeseg.inference.volume import member_moments
from cascadeseg.runtime import cpu_bf16_is_fast

#: The levers: the CPU benchmark's variants (:data:`cascadeseg.bench.cpu_rows.VARIANTS`) that
#: change what a prediction computes (torch.compile does not, and is left out).
LEVERS: dict[str, Variant] = {
    k: VARIANTS[k]
    for k in (
        "fp32",
        "bf16",
        "fp32-roi",
        "bf16-roi",
        "onnx-fp32",
        "openvino-fp32",
        "openvino-bf16",
        "openvino-int8",
        "openvino-bf16-roi",
    )
}
#: The reference every other lever is compared with.
BASELINE = "fp32"
DEFAULT_LEVERS: tuple[str, ...] = tuple(k for k in LEVERS if k != "openvino-bf16-roi")


def lever_skip_reason(lever: Variant) -> str | None:
    """Why ``lever`` cannot run here (a missing package, no native bf16), or ``None``."""
    reason = lever.unavailable()
    if reason is None and lever.needs_native_bf16 and not cpu_bf16_is_fast():
        reason = "no native bf16 on this CPU: predict runs fp32 instead (the fp32 row)"
    return reason


def lever_members(
    models: Sequence[LoadedModel], lever: Variant, calibration: Sequence[np.ndarray] | None
) -> list[LoadedModel]:
    """The ensemble as ``lever`` runs it (exported to ONNX Runtime or OpenVINO when asked)."""
    if lever.backend == "torch":
        return list(models)
    if lever.backend == "onnx":
        return members_for_backend(models, "onnx")
    return [openvino_member(m, lever.precision, calibration=calibration) for m in models]


def lever_options(base: PredictOptions, lever: Variant) -> PredictOptions:
    """``base`` with the lever's precision, region and backend (OpenVINO's precision is its
    network's: PyTorch's autocast stays fp32 around it)."""
    return dataclasses.replace(
        base,
        precision=lever.precision if lever.backend == "torch" else "fp32",
        tta_region="tumour" if lever.roi else "volume",
        backend="onnx" if lever.backend == "onnx" else "torch",
    )


def calibration_set(
    pres: Sequence[Preprocessed], models: Sequence[LoadedModel]
) -> list[np.ndarray]:
    """int8 calibration crops of the preprocessed images ``pres``."""
    return calibration_crops([p.image for p in pres], models[0].size_divisor)


# --------------------------------------------------------------------------------------------
# one case


def timed_prediction(
    pre: Preprocessed, models: Sequence[LoadedModel], options: PredictOptions, device: torch.device
) -> tuple[np.ndarray, dict[str, Any], float]:
    """``(label, info, seconds)`` of one prediction on the preprocessed grid."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    mean, _, info = predict_preprocessed(pre, models, options, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return probabilities_to_label(mean, options.threshold), info, seconds


def outside_mask(shape: Sequence[int], box: Sequence[Sequence[int]]) -> np.ndarray:
    """``(X, Y, Z)`` bool: True outside ``box`` (``[[lo, hi], ...]``)."""
    outside = np.ones(tuple(shape), bool)
    outside[tuple(slice(lo, hi) for lo, hi in box)] = False
    return outside


def pass_disagreement(
    pre: Preprocessed,
    models: Sequence[LoadedModel],
    options: PredictOptions,
    device: torch.device,
    outside: np.ndarray,
) -> tuple[int, int]:
    """Voxels outside the box where any whole-volume pass labels otherwise than the first pass,
    and the passes compared (the first included)."""
    precision, _ = run_precision(options, device)
    first: np.ndarray | None = None
    differs = np.zeros(outside.shape, bool)
    passes = 0
    for member, flips in zip(models, flip_plan(models, options.ensemble_mode, options.tta)):
        for flip in flips:
            mean, _, _ = member_moments(member, pre.image, options, device, precision, [flip])
            label = probabilities_to_label(mean.numpy(), options.threshold)
            passes += 1
            if first is None:
                first = label
            else:
                differs |= label != first
    return int(np.count_nonzero(differs & outside)), passes


def lever_result(
    pre: Preprocessed,
    members: Sequence[LoadedModel],
    options: PredictOptions,
    device: torch.device,
) -> tuple[dict[str, Any], np.ndarray]:
    """One lever on one case: ``({"seconds", "passes", "dice"?, "box"?...}, label)``."""
    label, info, seconds = timed_prediction(pre, members, options, device)
    out: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "passes": info["passes"],
        "precision": info["precision"],
    }
    if "tta_region_box" in info:
        out["box"] = info["tta_region_box"]["box"]
        out["box_fraction"] = info["tta_region_box"]["box_fraction"]
    if pre.label is not None:
        dice = region_dice(label_to_regions(label), label_to_regions(pre.label))
        out["dice"] = [round(float(d), 5) for d in dice]
    return out, label


def measure_case(
    pre: Preprocessed,
    built: dict[str, tuple[list[LoadedModel], PredictOptions]],
    device: torch.device,
    *,
    agreement: bool = True,
) -> dict[str, Any]:
    """One row: every lever's seconds, passes, Dice and difference from the baseline; the box
    fraction and the pass agreement outside the box of the first ``roi`` lever."""
    row: dict[str, Any] = {
        "case_id": pre.case_id,
        "shape": [int(s) for s in pre.shape],
        "levers": {},
    }
    labels = {}
    for lever_id, (members, options) in built.items():
        row["levers"][lever_id], labels[lever_id] = lever_result(pre, members, options, device)
    base = row["levers"].get(BASELINE, {})
    for lever_id, result in row["levers"].items():
        if "dice" in result and "dice" in base:
            result["dice_difference"] = [
                round(a - b, 6) for a, b in zip(result["dice"], base["dice"])
            ]
        if BASELINE in labels:
            result["label_differences"] = int(
                np.count_nonzero(labels[lever_id] != labels[BASELINE])
            )
    roi = next((k for k in built if LEVERS[k].roi and "box" in row["levers"][k]), None)
    if roi is not None and agreement and BASELINE in built:
        members, options = built[BASELINE]
        outside = outside_mask(pre.shape, row["levers"][roi]["box"])
        disagree, passes = pass_disagreement(pre, members, options, device, outside)
        row.update(
            agreement_box_from=roi,
            box_fraction=row["levers"][roi]["box_fraction"],
            outside_voxels=int(np.count_nonzero(outside)),
            passes_compared=passes,
            outside_pass_disagreement_voxels=disagree,
            all_passes_agree_outside=disagree == 0,
        )
    return row


# --------------------------------------------------------------------------------------------
# summary


def summarise(rows: Sequence[dict[str, Any]], levers: Sequence[str]) -> dict[str, Any]:
    """Per lever: cases, mean Dice, mean and worst difference from the baseline, median
    seconds; over the cases: median box fraction and the pass agreement outside the box."""
    summary: dict[str, Any] = {"cases": len(rows), "baseline": BASELINE, "levers": {}}
    for lever_id in levers:
        results = [r["levers"][lever_id] for r in rows if lever_id in r["levers"]]
        if not results:
            continue
        entry: dict[str, Any] = {
            "cases": len(results),
            "median_seconds": statistics.median(r["seconds"] for r in results),
        }
        dice = np.array([r["dice"] for r in results if "dice" in r])
        if dice.size:
            entry["mean_dice"] = [round(float(d), 5) for d in dice.mean(0)]
        diff = np.array([r["dice_difference"] for r in results if "dice_difference" in r])
        if diff.size:
            entry["mean_dice_difference"] = [round(float(d), 6) for d in diff.mean(0)]
            entry["worst_dice_difference"] = [round(float(d), 6) for d in diff.min(0)]
        changed = [r["label_differences"] for r in results if "label_differences" in r]
        if changed:
            entry["median_label_differences"] = statistics.median(changed)
        fractions = [r["box_fraction"] for r in results if "box_fraction" in r]
        if fractions:
            entry["median_box_fraction"] = statistics.median(fractions)
        summary["levers"][lever_id] = entry
    agreed = [r for r in rows if "all_passes_agree_outside" in r]
    if agreed:
        summary["cases_all_passes_agree_outside"] = sum(
            r["all_passes_agree_outside"] for r in agreed
        )
        summary["cases_checked_outside"] = len(agreed)
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The summary as a Markdown table, with the skipped levers and the agreement count."""
    summary = result["summary"]
    lines = [
        "| lever | cases | mean Dice WT / TC / ET | mean difference from fp32 | worst difference "
        "| voxels labelled otherwise (median) | median s per case | box fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lever_id, entry in summary["levers"].items():
        lines.append(
            f"| {lever_id} | {entry['cases']} | {_triple(entry.get('mean_dice'), '.4f')} "
            f"| {_triple(entry.get('mean_dice_difference'), '+.4f')} "
            f"| {_triple(entry.get('worst_dice_difference'), '+.4f')} "
            f"| {entry.get('median_label_differences', '')} "
            f"| {entry['median_seconds']:.2f} "
            f"| {_fraction(entry.get('median_box_fraction'))} |"
        )
    if "cases_checked_outside" in summary:
        lines.append(
            f"\nEvery whole-volume pass labels the voxels outside the box as the first pass in "
            f"{summary['cases_all_passes_agree_outside']} of {summary['cases_checked_outside']} "
            "cases."
        )
    lines += [f"Skipped {s['id']}: {s['reason']}" for s in result.get("skipped", [])]
    return "\n".join(lines) + "\n"


def _triple(values: Sequence[float] | None, fmt: str) -> str:
    return "" if values is None else " / ".join(f"{v:{fmt}}" for v in values)


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


#: Issue 20: a lever is kept only with held-out Dice unchanged within this (mean, per region).
DICE_TOLERANCE = 0.005


def within_tolerance(entry: dict[str, Any]) -> bool | None:
    """Whether a lever's mean Dice difference from the baseline is at most
    :data:`DICE_TOLERANCE` in every region, either way (``None``: no difference measured)."""
    diff = entry.get("mean_dice_difference")
    if diff is None:
        return None
    return all(abs(d) <= DICE_TOLERANCE for d in diff)


def render_section(result: dict[str, Any]) -> str:
    """The ``docs/performance.md`` section of a ``lever_dice.py`` result: what ran, the table
    and the verdict per lever against :data:`DICE_TOLERANCE`."""
    machine, summary = result["machine"], result["summary"]
    verdicts = []
    for lever_id, entry in summary["levers"].items():
        ok = within_tolerance(entry)
        if lever_id != summary["baseline"] and ok is not None:
            verdicts.append(f"{lever_id} {'yes' if ok else '**no**'}")
    threads = machine.get("torch_threads")
    return "\n".join(
        [
            "## Held-out Dice of the speed levers (issue 20)\n",
            f"{result['date'][:16].replace('T', ' ')} UTC, {machine.get('cpu')} "
            f"({machine.get('cores')} cores, {result['cpu_identity'].get('core', '')}), "
            f"torch {machine.get('torch')} on {threads} thread(s). Trained model(s): "
            f"{', '.join(f'`{m}`' for m in result['models'])}; {summary['cases']} held-out cases. "
            "Predictions on the preprocessed grid before post-processing; differences are "
            f"the lever's Dice minus {summary['baseline']} on the whole volume, per case. The "
            "seconds are this run's (its thread count, other jobs possibly beside it): the "
            "speed figures are those of the CPU inference section. Command:\n",
            f"```bash\n{result['command']}\n```\n",
            markdown(result),
            f"Mean Dice unchanged within {DICE_TOLERANCE} in every region (the issue's "
            f"condition to keep a lever): {', '.join(verdicts) or 'none measured'}.\n",
        ]
    )
