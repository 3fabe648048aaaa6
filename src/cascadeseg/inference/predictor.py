"""Segment cases with one or more trained models: from files on disk to label maps on disk.

Per case (:func:`predict_case`):

1. **Preprocess** with the models' recipe (:func:`cascadeseg.data.preprocess.preprocess_case`):
   reorientation to RAS, the recipe's spacing (if it fixes one), brain crop, z-score.
2. **Network** per ensemble member (:mod:`cascadeseg.inference.volume`):

   * 3D: the whole brain in one pass (two-stage paper, sec. 3.3: "we segment the whole brain region
     at once instead of using a sliding window"), padded to the network's multiple; a Gaussian
     sliding window takes over when memory is short (:class:`~.memory.AdaptiveForward`).
   * 2D: axial slices in batches (with the recipe's slice context); CU-Net's whole-tumour branch
     gives WT and its substructure branch TC/ET inside WT
     (:func:`cascadeseg.models.outputs.region_probabilities`), fused with the non-brain mask
     (CU-Net paper, sec. 2.2: "we extract the non-brain mask in advance and fuse it with the
     outputs of branch1 and branch2").
3. **Flip TTA** (8 flips in 3D, 4 in-plane flips in 2D) and the **ensemble average** of the region
   probabilities ``[WT, TC, ET]``; the voxel-wise variance over all passes of all members is the
   uncertainty map. The snapshots of one run share the flips out by default (snapshot ``i`` with
   flip ``i``: 8 passes for 8 snapshots, as the two-stage paper does; ``ensemble_mode``,
   :func:`cascadeseg.inference.ensemble.flip_plan`).
4. **Restore** the probabilities to the exact source grid
   (:func:`cascadeseg.data.preprocess.restore_to_source`, linear where the recipe resampled, as
   nnU-Net resamples probabilities rather than labels), **threshold** at 0.5 with ET inside TC
   inside WT (:func:`cascadeseg.data.labels.probabilities_to_label`; the core of a case without
   enhancing tumour at the recipe's ``tc_threshold_without_et`` where it sets one), and
   **post-process**
   (lesion-wise component sizes, :mod:`~.lesion_postprocess`; two-stage paper, sec. 3.4: ET
   below ``et_min_voxels`` becomes necrosis).

:func:`predict` runs that over a folder or four files and writes each case's files
(:mod:`cascadeseg.inference.outputs`). A failing case is reported and skipped; existing files are
never overwritten without ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cascadeseg.data.cache import PreprocessCache
from cascadeseg.data.case import Case
from cascadeseg.data.labels import ET, label_and_core_threshold
from cascadeseg.data.missing import present_flags, substitute_missing, without_sequences
from cascadeseg.data.preprocess import Preprocessed, preprocess_case, restore_to_source
from cascadeseg.errors import CascadesegError, ConfigError, InputError
from cascadeseg.inference.ensemble import MomentSum, ensemble_min_lesion_voxels, flip_plan
from cascadeseg.inference.export import to_onnx_member
from cascadeseg.inference.lesion_postprocess import postprocess_lesions, summarise_lesions
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.memory import free_memory
from cascadeseg.inference.options import (
    PredictOptions,
    resolve_et_min_voxels,
    resolve_region,
    run_precision,
)
from cascadeseg.inference.outputs import (
    CaseResult,
    Prediction,
    complete_outputs,
    format_result,
    output_paths,
    region_volumes_ml,
    summary_lines,
    write_prediction,
)
from cascadeseg.inference.plan import Source, check_outputs, existing_outputs, resolve_inputs
from cascadeseg.inference.postprocess import postprocess_et
from cascadeseg.inference.roi import Box, case_region, resolve_tta_region
from cascadeseg.inference.shards import Share, env_int, folder_lock, gather
from cascadeseg.inference.volume import member_moments
from cascadeseg.runtime import resolve_device, tune_device

# --------------------------------------------------------------------------------------------
# one case


def members_for_backend(models: Sequence[LoadedModel], backend: str) -> list[LoadedModel]:
    """The members as the backend runs them: as they are (``torch``), or exported in memory to
    ONNX Runtime (``onnx``; members that already are ONNX stay as they are)."""
    if backend == "torch":
        return list(models)
    return [to_onnx_member(m) for m in models]


def _fuses_brain_mask(member: LoadedModel, options: PredictOptions) -> bool:
    """Whether ``member``'s probabilities are zeroed outside the brain.

    2D members (CU-Net and the 2D U-Net) are trained on brain pixels only (LWS / brain-masked
    cross-entropy), so outside the brain their output means nothing: the CU-Net paper fuses the
    non-brain mask at test time, and the same holds for unet2d.
    """
    if options.fuse_brain_mask is not None:
        return options.fuse_brain_mask
    return member.spatial_dims == 2 or member.output_kind == "cunet"


def supports_missing(models: Sequence[LoadedModel]) -> bool:
    """Whether every member was trained with sequence dropout (:attr:`LoadedModel.missing_fill`):
    only then may cases lack sequence files without ``--substitute-missing``."""
    return bool(models) and all(m.missing_fill is not None for m in models)


def network_image(
    image: np.ndarray,
    models: Sequence[LoadedModel],
    missing: Sequence[str],
    substitute: str | None,
) -> tuple[np.ndarray, dict[str, str]]:
    """The ``(4, x, y, z)`` normalised image the members see for a case lacking ``missing``.

    The one place missing sequences are filled for every model: members trained with sequence
    dropout get them zero-filled, as in training (the ``mask`` fill's availability channels are
    appended later, per network input); the others get ``substitute`` (``sibling`` or
    ``zero``, :func:`cascadeseg.data.missing.substitute_missing`).

    Returns:
        ``(image, substituted)``: the image (``image`` itself when nothing is missing) and
        ``{missing sequence: what replaced it}`` (empty for dropout-trained members).

    Raises:
        ConfigError: sequences missing, members trained without sequence dropout, no
            ``substitute``.
    """
    if not missing:
        return image, {}
    if supports_missing(models):
        return substitute_missing(image, missing, "zero")[0], {}
    if substitute is None:
        raise ConfigError(
            f"the case lacks {', '.join(missing)} and the model was trained without sequence "
            "dropout: it needs all four sequences (--substitute-missing sibling or zero fills "
            "them, as a baseline)"
        )
    return substitute_missing(image, missing, substitute)


def _case_region(options: PredictOptions, tumour_box: Box | None, tta_region: str) -> Any:
    """The case's tumour region of ``--tta-region tumour`` (``None`` for ``volume``), with the
    benchmarks' given box; ``tta_region``: ``options.tta_region`` resolved."""
    region = case_region(tta_region, options.tta_region_threshold, options.tta_region_margin)
    if tumour_box is not None:
        if region is None:
            raise ConfigError("a given tumour box needs tta_region 'tumour'")
        region.given = tuple((int(lo), int(hi)) for lo, hi in tumour_box)
    return region


def predict_preprocessed(
    pre: Preprocessed,
    models: Sequence[LoadedModel],
    options: PredictOptions,
    *,
    device: torch.device | None = None,
    missing: Sequence[str] = (),
    tumour_box: Box | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Ensemble + TTA region probabilities on the preprocessed grid.

    ``missing``: the sequences the case lacks; the network input is built from ``pre.image``
    and ``missing`` alone (:func:`network_image`: zero-filled for members trained with
    sequence dropout, which with the ``mask`` fill also get the matching availability channels;
    ``options.substitute_missing`` for the others), so the channels of ``missing`` may hold
    anything. ``tumour_box`` (benchmarks only, with ``tta_region="tumour"``): the tumour's box
    on the grid of ``pre`` (before the margin), used instead of the one the first pass finds
    (:attr:`~.roi.TumourRegion.given`).

    Raises:
        ConfigError: no model, or sequences missing for members trained without sequence
            dropout and no ``options.substitute_missing``.

    Returns:
        ``(mean, variance, info)``: ``(3, x, y, z)`` float32 arrays ``[WT, TC, ET]`` on the grid
        of ``pre`` and a JSON-friendly dict of what ran.
    """
    if not models:
        raise ConfigError("no model given")
    device = device or resolve_device(options.device)
    precision, note = run_precision(options, device)
    moments = MomentSum()
    members_info = []
    plan = flip_plan(models, options.ensemble_mode, options.tta)
    tta_region = resolve_tta_region(options.tta_region, device.type, models)
    region = _case_region(options, tumour_box, tta_region)
    present = present_flags(missing)
    image, substituted = network_image(pre.image, models, missing, options.substitute_missing)
    for member, flips in zip(models, plan):
        mean_t, mean_sq_t, info = member_moments(
            member,
            image,
            options,
            device,
            precision,
            flips,
            region=region,
            present=present,
        )
        mean, mean_sq = mean_t.numpy(), mean_sq_t.numpy()
        if _fuses_brain_mask(member, options):
            mean = mean * pre.brain_mask[None]
            mean_sq = mean_sq * pre.brain_mask[None]
            info["brain_mask_fused"] = True
        info["source"] = str(member.source)
        info["flips"] = [list(f) for f in flips]
        members_info.append(info)
        moments.add(mean, mean_sq, info.get("covers"))
    mean_all, variance = moments.result()
    info_all = {
        "device": str(device),
        "precision": precision,
        "precision_requested": options.precision,
        "precision_note": note,
        "ensemble_mode": options.ensemble_mode,
        # Network passes over the whole case, all members (8 for a paired run of 8 snapshots).
        "passes": int(sum(m["passes"] for m in members_info)),
        "members": members_info,
        "tta_region": tta_region,
        "missing_sequences": list(missing),
        "missing_fill": [m.missing_fill for m in models],
        # Ignored (None) for members trained with sequence dropout.
        "substitute_missing": None if supports_missing(models) else options.substitute_missing,
        "substituted": substituted,
    }
    if region is not None:
        info_all["tta_region_box"] = region.record()
    return mean_all, variance, info_all


def postprocess_label(
    label: np.ndarray,
    models: Sequence[LoadedModel],
    options: PredictOptions,
    spacing: Sequence[float],
) -> tuple[np.ndarray, dict[str, Any], dict[str, dict[str, Any]]]:
    """Lesion-wise component removal, then the ET threshold, with the options' values, else the
    models' stored ones.

    Returns:
        ``(label, info, lesions)``: the post-processed ``(X, Y, Z)`` label map, what was applied
        (JSON-friendly) and the lesion counts and volumes per region of the result (each region's
        components labelled once).
    """
    stored_lesions = ensemble_min_lesion_voxels(models)
    label, info, sizes = postprocess_lesions(label, stored_lesions, options.min_lesion_voxels)
    et_min, et_source = resolve_et_min_voxels(options, models)
    et_before = int(np.count_nonzero(label == ET))
    label = postprocess_et(label, et_min)
    replaced = bool(et_before and not np.any(label == ET))
    if replaced:  # the whole ET became necrosis: TC and WT keep their components
        sizes["et"] = np.zeros(0, dtype=np.int64)
    info.update(
        {
            "et_min_voxels": et_min,
            "et_min_voxels_source": et_source,
            "et_replaced_by_necrosis": replaced,
        }
    )
    return label, info, summarise_lesions(sizes, spacing)


def predict_case(
    case: Case,
    models: Sequence[LoadedModel],
    options: PredictOptions | None = None,
    *,
    tumour_box: Box | None = None,
) -> Prediction:
    """Segment one case with an ensemble (see the module docstring for the steps).

    Args:
        case: the input :class:`Case` (its label, if any, is ignored); the sequences it lacks
            (``case.missing``, zero-filled) are told to members with the ``mask`` fill.
        models: ensemble members from :func:`cascadeseg.inference.load_models` (one recipe).
        options: prediction options.
        tumour_box: benchmarks only (networks with random weights find no tumour): the box
            the passes after the first run on with ``tta_region="tumour"``, on the
            preprocessed grid, before the margin (:func:`predict_preprocessed`).

    Returns:
        A :class:`Prediction` on the source grid of ``case`` (same shape as ``case.image[0]``).
    """
    options = options or PredictOptions()
    models = members_for_backend(models, options.backend)
    start = time.perf_counter()
    if options.cache_dir is not None:
        cache = PreprocessCache(options.cache_dir, models[0].preprocess)
        pre = cache.get_case(case.with_label(None))
    else:
        pre = preprocess_case(case.with_label(None), models[0].preprocess)
    t_pre = time.perf_counter() - start
    mean, variance, info = predict_preprocessed(
        pre, models, options, missing=case.missing, tumour_box=tumour_box
    )
    t_net = time.perf_counter() - start - t_pre
    probabilities = restore_to_source(mean, pre, order=1)
    uncertainty = restore_to_source(variance, pre, order=1) if options.save_uncertainty else None
    # The threshold the core got (the recipe's tc_threshold_without_et in a case without ET).
    label, info["tc_threshold"] = label_and_core_threshold(
        probabilities, options.threshold, options.tc_threshold_without_et
    )
    label, post_info, lesions = postprocess_label(label, models, options, case.meta.spacing)
    info.update(post_info)
    t_total = time.perf_counter() - start
    info.update(
        {
            "tta": options.tta,
            "threshold": options.threshold,
            "tc_threshold_without_et": options.tc_threshold_without_et,
            "sliding_window": options.sliding_window,
            "overlap": options.overlap,
            "settings_origin": dict(options.settings_origin),
            "backend": options.backend,
            "preprocessing": models[0].preprocess.to_dict(),
            # The grid the network ran on (brain crop, target spacing), before padding.
            "network_input_size": [int(v) for v in pre.image.shape[1:]],
            "seconds": {
                "preprocess": round(t_pre, 3),
                "network": round(t_net, 3),
                "total": round(t_total, 3),
            },
        }
    )
    return Prediction(
        case_id=case.case_id,
        label=label.astype(np.uint8),
        probabilities=probabilities.astype(np.float32, copy=False),
        uncertainty=None if uncertainty is None else uncertainty.astype(np.float32, copy=False),
        volumes_ml=region_volumes_ml(label, case.meta.spacing),
        info=info,
        lesions=lesions,
    )


# --------------------------------------------------------------------------------------------
# a batch


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, CascadesegError):
        return text or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _lock_command() -> str:
    """The command line shown to a second run into the same folder."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if name in ("__main__.py", "cascadeseg"):
        name = "cascadeseg"
    return " ".join([name, *sys.argv[1:]])


def check_missing(options: PredictOptions, models: Sequence[LoadedModel]) -> None:
    """``--missing`` for a model trained without sequence dropout needs
    ``--substitute-missing``: a :class:`ConfigError` without it."""
    if options.missing and not supports_missing(models) and options.substitute_missing is None:
        raise ConfigError(
            f"--missing {','.join(options.missing)}: the model was trained without sequence "
            "dropout and needs all four sequences; add --substitute-missing sibling or zero to "
            "fill them (a baseline, not what the model learnt)"
        )


def check_uncertainty(options: PredictOptions, models: Sequence[LoadedModel]) -> None:
    """``save_uncertainty`` with a single pass has nothing to vary over: a :class:`ConfigError`."""
    if options.save_uncertainty and not options.tta and len(models) == 1:
        raise ConfigError(
            "--save-uncertainty: one model without TTA makes one pass, so there is nothing to "
            "vary over; drop --no-tta, or give several models (or a run with snapshots)"
        )


def plan_outputs(
    sources: Sequence[Source], output_dir: Path, options: PredictOptions
) -> dict[str, dict[str, Path]]:
    """Output files of every case whose id is a safe file name (others fail when their turn
    comes), checked against the inputs (:func:`cascadeseg.inference.plan.check_outputs`)."""
    planned: dict[str, dict[str, Path]] = {}
    for source in sources:
        with contextlib.suppress(InputError):
            planned[source.case_id] = output_paths(source.case_id, output_dir, options)
    check_outputs(planned, sources)
    return planned


def predict(
    models: Sequence[LoadedModel],
    inputs: Path | str | Sequence[Path | str],
    output_dir: Path | str,
    options: PredictOptions | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    case_id: str | None = None,
    share: Share | None = None,
) -> list[CaseResult]:
    """Segment every case of ``inputs`` and write the results to ``output_dir``.

    Before any inference: the inputs are resolved (one id per case, over all inputs), every
    output path is checked not to be an input file (:mod:`cascadeseg.inference.plan`), the
    output folder is checked to be a writable folder and locked against a second run
    (:func:`cascadeseg.fsutil.output_lock`, which also removes an interrupted run's temporary
    files).

    Args:
        models: ensemble members (:func:`cascadeseg.inference.load_models`).
        inputs: a case folder, a dataset folder in any supported layout, several folders, or
            four modality files (FLAIR, T1, T1ce, T2; recognised by name when possible).
        output_dir: folder for ``<case_id>.nii.gz``, ``<case_id>.json`` and the optional maps
            (created; nothing is written elsewhere).
        options: prediction options.
        echo: where the per-case line and the summary go (default: ``tqdm.write`` under the
            progress bar, else ``print``).
        case_id: the case id of four modality files (default: the files' common prefix).
        share: predict only this process's share of the cases (``--part i/n`` and/or a
            torchrun rank; :mod:`cascadeseg.inference.shards`); ``None``: every case. Every
            case is still checked first; a share holds a lock of its own on ``output_dir``.
            Under torchrun (a joined process group) the ranks wait for each other at the end,
            rank 0 prints the summary of all cases, and every rank returns all ranks' results.

    Returns:
        One :class:`CaseResult` per case of the share (all ranks' cases under torchrun), in
        input order. A case that cannot be read or predicted is ``failed`` and the others
        continue; a case whose outputs exist is ``skipped`` unless ``overwrite`` (or only
        asked-for maps are missing: see :func:`~cascadeseg.inference.plan.existing_outputs`).

    Raises:
        InputError: no case, two cases with one id, an output that is an input, an output
            folder that is a file, not writable or locked by another run.
        ConfigError: ``save_uncertainty`` with a single pass; ``missing`` for a model trained
            without sequence dropout and no ``substitute_missing``.
    """
    options = resolve_region(options or PredictOptions(), models)
    output_dir = Path(output_dir)
    takes_missing = supports_missing(models) or options.substitute_missing is not None
    check_missing(options, models)
    sources = resolve_inputs(inputs, case_id, allow_missing=takes_missing)
    check_uncertainty(options, models)
    planned = plan_outputs(sources, output_dir, options)
    share = share or Share()
    mine = share.select(sources, key=lambda s: s.case_id)
    say = echo or (tqdm.write if options.progress else print)
    if options.substitute_missing is not None and supports_missing(models):
        say(
            f"note: --substitute-missing {options.substitute_missing} ignored: the model was "
            "trained with sequence dropout and fills missing sequences as it was trained"
        )
    if not share.whole:
        say(f"{share.tag}: {len(mine)} of {len(sources)} case(s)")
    device = resolve_device(options.device, env_int("LOCAL_RANK", 0))
    tune_device(device)
    with folder_lock(output_dir, share, _lock_command(), say):
        results = _predict_sources(mine, planned, output_dir, models, options, device, say)
    if share.world_size > 1:  # wait for every rank, then rank 0 reports all cases
        order = {s.case_id: i for i, s in enumerate(sources)}
        results = sorted(gather(results, share), key=lambda r: order.get(r.case_id, -1))
        if share.rank != 0:
            return results
    for line in summary_lines(results, output_dir):
        say(line)
    return results


def _predict_sources(
    sources: Sequence[Source],
    planned: dict[str, dict[str, Path]],
    output_dir: Path,
    models: Sequence[LoadedModel],
    options: PredictOptions,
    device: torch.device,
    say: Callable[[str], None],
) -> list[CaseResult]:
    """Predict ``sources`` one by one on ``device``, saying each case's line."""
    # Converted once here (ONNX export in memory); predict_case leaves them as they are.
    members = members_for_backend(models, options.backend)
    case_options = dataclasses.replace(options, device=str(device))
    _, precision_note = run_precision(options, device)
    if precision_note:
        say(f"note: {precision_note}")
    results: list[CaseResult] = []
    for source in tqdm(sources, desc="predicting", unit="case", disable=not options.progress):
        result = _predict_source(
            source, planned.get(source.case_id), output_dir, members, case_options
        )
        if result.status == "failed":
            free_memory(device)
        results.append(result)
        say(format_result(result))
    return results


def _predict_source(
    source: Source,
    paths: dict[str, Path] | None,
    output_dir: Path,
    members: Sequence[LoadedModel],
    options: PredictOptions,
) -> CaseResult:
    """Read, predict and write one case (or skip it); never raises for a case's own fault."""
    start = time.perf_counter()
    result = CaseResult(case_id=source.case_id, status="failed")
    try:
        paths = paths or output_paths(source.case_id, output_dir, options)
        action, keep, reason = existing_outputs(paths, members, options)
        if action == "skip":
            result.status, result.message = "skipped", reason
        else:
            case = without_sequences(source.read(), options.missing)
            result.missing = case.missing
            if case.case_id != source.case_id:  # the reader named it differently
                raise InputError(
                    f"{source.files[0]}: read as case {case.case_id!r}, not "
                    f"{source.case_id!r}; nothing written"
                )
            prediction = predict_case(case, members, options)
            if action == "complete":
                result.outputs = complete_outputs(prediction, case, paths, keep)
                names = ", ".join(p.name for p in result.outputs[:-1])
                result.message = f"{paths['label'].name} kept; added {names}"
            else:
                result.outputs = write_prediction(prediction, case, paths, options)
            result.status = "ok"
            result.volumes_ml = prediction.volumes_ml
            result.substituted = dict(prediction.info.get("substituted") or {})
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        result.status = "failed"
        result.message = _one_line(exc)
    result.seconds = round(time.perf_counter() - start, 3)
    return result
