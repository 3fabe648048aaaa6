"""Loading trained models for inference, and averaging their probabilities.

What a ``--model`` argument may be (:func:`expand_model_paths`):

* a run directory: its snapshots ``checkpoints/snapshot_*.pt`` when present (the two-stage paper
  keeps "eight weights of the model in the last time of the training progress", sec. 3.3), else
  ``checkpoints/best.pt``, else ``checkpoints/last.pt``;
* a ``.pt`` checkpoint: one model;
* a ``.onnx`` file written by ``cascadeseg export`` (ONNX Runtime backend);
* several of these together: one ensemble (e.g. the k run directories of a k-fold
  cross-validation, the two-stage paper's "ensemble of 5-fold").

The snapshots of one run form a *snapshot ensemble* (:func:`flip_plan`): by default
(``paired``) snapshot ``i`` runs flip ``i`` only, as the two-stage paper does (8 snapshots, 8
flips, 8 passes; other counts: :func:`cascadeseg.inference.tta.paired_flip_indices`);
``product`` runs every flip on every snapshot (64 passes for 8 snapshots). Every other member
(a ``best.pt``, a lone checkpoint, an ONNX file) runs all flips in both modes.

Checkpoints are read with ``torch.load(weights_only=True)``
(:func:`cascadeseg.models.checkpoint.load_checkpoint`), so a file from an untrusted source cannot
execute code. Members must agree on the spatial dimensionality and the preprocessing recipe and
take the four modalities (times the slice context for 2.5D models); otherwise :class:`ModelError`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cascadeseg.data.case import MODALITIES
from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.errors import ConfigError, ModelError
from cascadeseg.models.checkpoint import load_checkpoint

OUTPUT_KINDS: tuple[str, ...] = ("regions", "labels", "cunet", "bfcn", "probabilities")

#: How the snapshots of one run share the TTA flips (see :func:`flip_plan`).
ENSEMBLE_MODES: tuple[str, ...] = ("paired", "product")

#: Down-sampling factor assumed when a model does not say (``size_divisor`` attribute): 16 covers
#: four stride-2 levels (CU-Net) and three (two-stage, 8).
DEFAULT_SIZE_DIVISOR = 16


@dataclass(eq=False)
class LoadedModel:
    """One ensemble member, ready for inference.

    Attributes:
        network: eval-mode ``nn.Module`` (or an ONNX Runtime wrapper with the same call).
        name: registry name (``two_stage``, ``cunet``, ...).
        spatial_dims: 3 (whole volumes) or 2 (axial slices).
        output_kind: ``regions``, ``labels``, ``cunet`` (raw network outputs, see
            :func:`cascadeseg.models.outputs.region_probabilities`) or ``probabilities``
            (the network already returns ``[WT, TC, ET]`` probabilities: ONNX exports).
        in_channels: input channels, ``4 * (2 * slice_context + 1)``.
        slice_context: neighbouring slices on each side (2.5D models; 0 for 3D).
        preprocess: the recipe's preprocessing (reorientation, spacing, N4, crop margin).
        patch_size: training patch, the default sliding-window size.
        size_divisor: inputs are padded to a multiple of this (network down-sampling factor).
        et_min_voxels: stored ET post-processing threshold in voxels, or ``None``.
        min_lesion_voxels: stored per-region component-size thresholds in voxels
            (``{"wt": N, "tc": N, "et": N}``, :mod:`~.lesion_postprocess`), or ``None``.
        source: the checkpoint file.
        run_dir: its run directory, if it lies in one.
        config: the resolved recipe (plain dict), ``{}`` when unknown.
        model_args: constructor arguments.
        device: where ``network`` runs.
    """

    network: Callable[..., Any]
    name: str
    spatial_dims: int
    output_kind: str
    in_channels: int
    slice_context: int
    preprocess: PreprocessConfig
    patch_size: tuple[int, ...]
    size_divisor: int
    et_min_voxels: int | None
    source: Path
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    min_lesion_voxels: dict[str, int] | None = None

    def probabilities(
        self, x: torch.Tensor, network: Callable[..., Any] | None = None
    ) -> torch.Tensor:
        """``(B, 3, *spatial)`` probabilities ``[WT, TC, ET]`` of a ``(B, C, *spatial)`` input.

        ``network`` replaces :attr:`network` for this call (its compiled form, say).
        """
        out = (network or self.network)(x)
        if self.output_kind == "probabilities":
            assert isinstance(out, torch.Tensor)
            return out
        from cascadeseg.models.outputs import region_probabilities

        return region_probabilities(out, self.output_kind)


# --------------------------------------------------------------------------------------------
# paths


def checkpoints_of_run(run_dir: Path) -> list[Path]:
    """The checkpoints a run directory stands for: snapshots, else best.pt, else last.pt."""
    ckpt_dir = run_dir / "checkpoints"
    snapshots = sorted(ckpt_dir.glob("snapshot_*.pt"))
    if snapshots:
        return snapshots
    for name in ("best.pt", "last.pt"):
        if (ckpt_dir / name).is_file():
            return [ckpt_dir / name]
    raise ModelError(
        f"{run_dir}: no checkpoints/snapshot_*.pt, best.pt or last.pt (is this a run directory?)"
    )


def expand_model_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Checkpoint files of the ``--model`` arguments, in order (see the module docstring)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(checkpoints_of_run(path))
        elif path.is_file():
            out.append(path)
        else:
            raise ModelError(f"{path}: no such checkpoint or run directory")
    if not out:
        raise ModelError("no model given")
    return out


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding ``checkpoint`` (``RUN/checkpoints/x.pt``), or ``None``."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else None


def read_postprocess_json(run_dir: Path) -> int | None:
    """``et_min_voxels`` stored by ``tune-postprocess`` in ``run_dir/postprocess.json``."""
    path = run_dir / "postprocess.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        value = data["et_min_voxels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: cannot read et_min_voxels ({exc})") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelError(f"{path}: et_min_voxels must be a non-negative integer, got {value!r}")
    return value


def read_min_lesion_voxels(run_dir: Path) -> dict[str, int] | None:
    """``min_lesion_voxels`` stored by ``tune-postprocess`` in ``run_dir/postprocess.json``."""
    from cascadeseg.inference.lesion_postprocess import check_min_lesion_voxels

    path = run_dir / "postprocess.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("min_lesion_voxels")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path}: cannot read min_lesion_voxels ({exc})") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: min_lesion_voxels must be a mapping, got {value!r}")
    try:
        return check_min_lesion_voxels(value, str(path))
    except ConfigError as exc:
        raise ModelError(str(exc)) from None


def stored_min_lesion_voxels(ckpt: dict[str, Any], run_dir: Path | None) -> dict[str, int] | None:
    """Stored component-size thresholds: ``postprocess.json`` of the run, else the
    checkpoint's ``extra``, else ``None``."""
    if run_dir is not None:
        value = read_min_lesion_voxels(run_dir)
        if value is not None:
            return value
    extra = ckpt.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("min_lesion_voxels"), dict):
        from cascadeseg.inference.lesion_postprocess import check_min_lesion_voxels

        try:
            return check_min_lesion_voxels(extra["min_lesion_voxels"], "checkpoint extra")
        except ConfigError as exc:
            raise ModelError(str(exc)) from None
    return None


# --------------------------------------------------------------------------------------------
# recipe helpers


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) if isinstance(config, dict) else None
    return value if isinstance(value, dict) else {}


def preprocess_config_of(config: dict[str, Any]) -> PreprocessConfig:
    """The :class:`PreprocessConfig` of a resolved recipe's ``data`` section, defaults for what
    is missing."""
    try:
        return PreprocessConfig.from_dict(_section(config, "data"))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint config: invalid preprocessing ({exc})") from None


def stored_et_min_voxels(ckpt: dict[str, Any], run_dir: Path | None) -> int | None:
    """Stored ET threshold: ``postprocess.json`` of the run, else the checkpoint's ``extra``,
    else the recipe's ``inference.et_min_voxels`` when non-zero, else ``None``."""
    if run_dir is not None:
        value = read_postprocess_json(run_dir)
        if value is not None:
            return value
    extra = ckpt.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("et_min_voxels"), int):
        return int(extra["et_min_voxels"])
    recipe = _section(ckpt.get("config", {}), "inference").get("et_min_voxels")
    if isinstance(recipe, int) and recipe > 0:
        return recipe
    return None


#: Recipe values (``inference.*``) that ``predict`` takes from the model when no flag is given.
RECIPE_INFERENCE_KEYS: tuple[str, ...] = (
    "tta",
    "sliding_window",
    "overlap",
    "precision",
    "threshold",
)


def recipe_inference_values(members: Sequence[LoadedModel]) -> tuple[dict[str, Any], str]:
    """The ``inference.*`` values stored with the models' recipe, and where they come from.

    The first member that stores a recipe decides (folds and snapshots of one recipe agree;
    an ensemble mixing recipes takes its first model's, named in the second value). Only the
    keys of :data:`RECIPE_INFERENCE_KEYS` are read; ONNX exports store no recipe.

    Returns:
        ``(values, source)``: e.g. ``({"tta": True, "precision": "bf16"}, "run/checkpoints/
        snapshot_0.pt")``; ``({}, "")`` when no member stores one.
    """
    for member in members:
        section = _section(member.config, "inference")
        values = {k: section[k] for k in RECIPE_INFERENCE_KEYS if k in section}
        if values:
            return values, str(member.source)
    return {}, ""


def size_divisor_of(network: Any) -> int:
    """Padding multiple of a network: its ``size_multiple`` (cascadeseg models) or
    ``size_divisor`` attribute, else :data:`DEFAULT_SIZE_DIVISOR`."""
    for attribute in ("size_multiple", "size_divisor"):
        value = getattr(network, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_SIZE_DIVISOR


def expected_in_channels(spatial_dims: int, slice_context: int) -> int:
    """Input channels that fit the data: 4 modalities, times ``2k + 1`` slices for 2.5D."""
    return len(MODALITIES) * (2 * slice_context + 1 if spatial_dims == 2 else 1)


def check_member(member: LoadedModel) -> None:
    """Refuse a member whose input or output does not fit BraTS data (:class:`ModelError`)."""
    if member.spatial_dims not in (2, 3):
        raise ModelError(f"{member.source}: spatial_dims must be 2 or 3, got {member.spatial_dims}")
    if member.output_kind not in OUTPUT_KINDS:
        raise ModelError(
            f"{member.source}: unknown output kind {member.output_kind!r} "
            f"(known: {', '.join(OUTPUT_KINDS)})"
        )
    want = expected_in_channels(member.spatial_dims, member.slice_context)
    if member.in_channels != want:
        what = (
            f"{len(MODALITIES)} modalities x {2 * member.slice_context + 1} slices"
            if member.spatial_dims == 2
            else f"{len(MODALITIES)} modalities ({', '.join(MODALITIES)})"
        )
        raise ModelError(
            f"{member.source}: model takes {member.in_channels} input channels, "
            f"the data give {want} ({what})"
        )


def probe_output(member: LoadedModel) -> None:
    """Run a tiny input through ``member``; check it yields ``(1, 3, *spatial)`` probabilities."""
    side = member.size_divisor * (2 if member.spatial_dims == 3 else 4)
    x = torch.zeros((1, member.in_channels, *([side] * member.spatial_dims)), device=member.device)
    try:
        with torch.inference_mode():
            probs = member.probabilities(x)
    except Exception as exc:
        raise ModelError(
            f"{member.source}: the network fails on a {side}^{member.spatial_dims} input "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    want = (1, 3, *([side] * member.spatial_dims))
    if tuple(probs.shape) != want:
        raise ModelError(
            f"{member.source}: the network's region probabilities have shape "
            f"{tuple(probs.shape)}, expected {want} ([WT, TC, ET]): its label space does not fit"
        )


def check_compatible(members: Sequence[LoadedModel]) -> None:
    """Refuse an ensemble whose members disagree on spatial dims or preprocessing."""
    first = members[0]
    for other in members[1:]:
        if other.spatial_dims != first.spatial_dims:
            raise ModelError(
                f"{other.source}: {other.spatial_dims}D model cannot join an ensemble with the "
                f"{first.spatial_dims}D model {first.source}"
            )
        if other.preprocess != first.preprocess:
            raise ModelError(
                f"{other.source}: preprocessing {other.preprocess.to_dict()} differs from "
                f"{first.source} ({first.preprocess.to_dict()}); ensemble members must share it"
            )


def ensemble_et_min_voxels(members: Sequence[LoadedModel]) -> int | None:
    """One stored threshold for an ensemble: the median of the members' stored values
    (fold runs each tune their own; their median is robust to one odd fold), or ``None``."""
    values = [m.et_min_voxels for m in members if m.et_min_voxels is not None]
    if not values:
        return None
    return round(statistics.median(values))


def ensemble_min_lesion_voxels(members: Sequence[LoadedModel]) -> dict[str, int] | None:
    """Per region, the median of the members' stored thresholds (as
    :func:`ensemble_et_min_voxels`), or ``None`` when no member stores any."""
    stored = [m.min_lesion_voxels for m in members if m.min_lesion_voxels is not None]
    if not stored:
        return None
    regions = sorted({r for values in stored for r in values})
    return {r: round(statistics.median([v[r] for v in stored if r in v])) for r in regions}


# --------------------------------------------------------------------------------------------
# loading


def load_checkpoint_model(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """One :class:`LoadedModel` from a cascadeseg ``.pt`` checkpoint (no code runs on load)."""
    from cascadeseg.models.registry import build_saved_model

    device = torch.device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    name = ckpt["model_name"]
    model_args = ckpt["model_args"]
    if not isinstance(model_args, dict):
        raise ModelError(f"{path}: model_args must be a mapping")
    try:
        network = build_saved_model(name, model_args)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot build model {name!r} ({exc})") from None
    try:
        network.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: weights do not fit model {name!r} ({first})") from None
    eval_network(network).to(device)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    assert isinstance(config, dict)
    data = _section(config, "data")
    spatial_dims = int(getattr(network, "spatial_dims", 3))
    # 2.5D context: the model's own argument (CU-Net) or the recipe's data.slice_context.
    context = model_args.get("slice_context", data.get("slice_context", 0))
    slice_context = int(context or 0) if spatial_dims == 2 else 0
    patch = tuple(int(s) for s in (data.get("patch_size") or (128, 128, 128)))
    run_dir = run_dir_of(path)
    return LoadedModel(
        network=network,
        name=str(name),
        spatial_dims=spatial_dims,
        output_kind=str(getattr(network, "output_kind", "regions")),
        in_channels=int(getattr(network, "in_channels", len(MODALITIES))),
        slice_context=slice_context,
        preprocess=preprocess_config_of(config),
        patch_size=patch[:spatial_dims],
        size_divisor=size_divisor_of(network),
        et_min_voxels=stored_et_min_voxels(ckpt, run_dir),
        min_lesion_voxels=stored_min_lesion_voxels(ckpt, run_dir),
        source=path,
        run_dir=run_dir,
        config=config,
        model_args=dict(model_args),
        device=device,
    )


def load_models(
    paths: Sequence[str | Path], device: torch.device | str = "cpu", *, probe: bool = True
) -> list[LoadedModel]:
    """Load every model the ``--model`` arguments name (run dirs, ``.pt``, ``.onnx`` files).

    Args:
        paths: run directories and/or checkpoint files (see the module docstring).
        device: ``cpu``, ``cuda`` or a ``torch.device`` (ONNX members run on ONNX Runtime's CPU
            or CUDA provider).
        probe: run a tiny input through each member to check its output fits ``[WT, TC, ET]``.

    Returns:
        One :class:`LoadedModel` per checkpoint, eval mode, on ``device``.

    Raises:
        ModelError: a path is missing or not a checkpoint, a checkpoint needs code execution, the
            weights do not fit, the channels do not fit 4 modalities (x slice context), or the
            members disagree on spatial dims or preprocessing.
    """
    members: list[LoadedModel] = []
    for path in expand_model_paths(paths):
        if path.suffix.lower() == ".onnx":
            from cascadeseg.inference.export import load_onnx_model

            member = load_onnx_model(path, device)
        else:
            member = load_checkpoint_model(path, device)
        check_member(member)
        if probe:
            probe_output(member)
        members.append(member)
    check_compatible(members)
    return members


# --------------------------------------------------------------------------------------------
# snapshot ensembles


def is_snapshot(member: LoadedModel) -> bool:
    """Whether ``member`` is a training snapshot (``RUN/checkpoints/snapshot_*.pt``)."""
    name = member.source.name
    return member.run_dir is not None and name.startswith("snapshot_") and name.endswith(".pt")


def flip_plan(
    members: Sequence[LoadedModel], mode: str = "paired", tta: bool = True
) -> list[list[tuple[int, ...]]]:
    """The TTA flips each member runs.

    Args:
        members: the ensemble, in ``--model`` order (a run's snapshots sorted by name).
        mode: ``paired``: the snapshots of each run directory share the flips out
            (:func:`cascadeseg.inference.tta.paired_flip_indices`: snapshot ``i`` with flip
            ``i`` for 8 snapshots, the two-stage paper's procedure); ``product``: every member
            runs every flip.
        tta: without TTA every member runs the identity only (one pass each), in both modes.

    Returns:
        One list of flips (items of :func:`cascadeseg.inference.tta.flip_combinations`) per
        member. The ensemble mean gives every member the same weight, each member's map being
        the mean over its own passes (so with 3 snapshots and 8 flips, each snapshot weighs 1/3
        whether it ran 3 flips or 2).
    """
    from cascadeseg.inference.tta import flip_combinations, paired_flip_indices

    if mode not in ENSEMBLE_MODES:
        raise ConfigError(f"ensemble mode must be one of {ENSEMBLE_MODES}, got {mode!r}")
    identity: list[tuple[int, ...]] = [()]
    plan = [flip_combinations(m.spatial_dims) if tta else list(identity) for m in members]
    if mode == "product" or not tta:
        return plan
    runs: dict[Path, list[int]] = {}
    for index, member in enumerate(members):
        if is_snapshot(member):
            assert member.run_dir is not None
            runs.setdefault(member.run_dir.resolve(), []).append(index)
    for indices in runs.values():
        flips = flip_combinations(members[indices[0]].spatial_dims)
        for index, share in zip(indices, paired_flip_indices(len(indices), len(flips))):
            plan[index] = [flips[j] for j in share]
    return plan


# --------------------------------------------------------------------------------------------
# averaging


def average_probabilities(
    probabilities: Sequence[np.ndarray | torch.Tensor],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and voxel-wise variance of several members' probabilities.

    Args:
        probabilities: ``N`` arrays of identical shape, e.g. ``(3, X, Y, Z)`` ``[WT, TC, ET]``.

    Returns:
        ``(mean, variance)`` float32 arrays of that shape; the variance is the population
        variance over the ``N`` members (0 for a single member).
    """
    if not probabilities:
        raise ValueError("average_probabilities needs at least one array")
    arrays = [
        p.detach().float().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        for p in probabilities
    ]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"shapes differ: {[a.shape for a in arrays]}")
    total = np.zeros(shape, dtype=np.float64)
    total_sq = np.zeros(shape, dtype=np.float64)
    for a in arrays:
        total += a
        total_sq += np.square(a, dtype=np.float64)
    mean = total / len(arrays)
    variance = np.maximum(total_sq / len(arrays) - mean**2, 0.0)
    return mean.astype(np.float32), variance.astype(np.float32)


def eval_network(network: nn.Module) -> nn.Module:
    """``network`` in eval mode with gradients off for its parameters (inference only)."""
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network
