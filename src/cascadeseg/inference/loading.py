"""Loading trained models for inference: checkpoints and ONNX files become :class:`LoadedModel`.

What a ``--model`` argument may be (:func:`expand_model_paths`):

* a run directory: its snapshots ``checkpoints/snapshot_*.pt`` when present (the two-stage paper
  keeps "eight weights of the model in the last time of the training progress", sec. 3.3), else
  ``checkpoints/best.pt``, else ``checkpoints/last.pt``;
* a ``.pt`` checkpoint: one model;
* a ``.onnx`` file written by ``cascadeseg export`` (ONNX Runtime backend, :class:`OnnxNetwork`);
* several of these together: one ensemble (e.g. the k run directories of a k-fold
  cross-validation, the two-stage paper's "ensemble of 5-fold"; :mod:`~.ensemble`).

Checkpoints are read with ``torch.load(weights_only=True)``
(:func:`cascadeseg.models.checkpoint.load_checkpoint`), so a file from an untrusted source cannot
execute code. Members must agree on the spatial dimensionality and the preprocessing recipe and
take the four modalities (times the slice context for 2.5D models); otherwise :class:`ModelError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from cascadeseg.data.case import MODALITIES
from cascadeseg.data.missing import extra_input_channels, missing_fill_of_recipe
from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.errors import ConfigError, ModelError
from cascadeseg.inference.lesion_postprocess import check_min_lesion_voxels
from cascadeseg.models import build_saved_model
from cascadeseg.models.checkpoint import inference_state, load_checkpoint
from cascadeseg.models.outputs import region_probabilities

OUTPUT_KINDS: tuple[str, ...] = ("regions", "labels", "cunet", "bfcn", "probabilities")

#: Key of the cascadeseg metadata in an exported ONNX model's ``metadata_props``.
ONNX_METADATA_KEY = "cascadeseg"
ONNX_FORMAT = "cascadeseg-onnx-1"


@dataclass(eq=False)
class LoadedModel:
    """One ensemble member, ready for inference.

    Attributes:
        network: eval-mode ``nn.Module`` (or an ONNX Runtime wrapper with the same call).
        name: registry name (``two_stage``, ``cunet``, ...).
        spatial_dims: 3 (whole volumes) or 2 (axial slices).
        output_kind: ``regions``, ``labels``, ``cunet``, ``bfcn`` (raw network outputs, see
            :func:`cascadeseg.models.outputs.region_probabilities`) or ``probabilities``
            (the network already returns ``[WT, TC, ET]`` probabilities: ONNX exports).
        in_channels: input channels, ``4 * (2 * slice_context + 1)``, plus 4 availability
            channels with the ``mask`` fill.
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
        missing_fill: ``None``: trained without sequence dropout, every sequence must be
            there; ``mask`` or ``zero``: trained with it, a case may lack sequences, filled so
            (:mod:`cascadeseg.data.missing`; from the checkpoint's recipe, ``data.*``).
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
    missing_fill: str | None = None

    def to_probabilities(self, output: Any) -> torch.Tensor:
        """``(B, 3, *spatial)`` probabilities ``[WT, TC, ET]`` of one output of :attr:`network`."""
        if self.output_kind == "probabilities":
            assert isinstance(output, torch.Tensor)
            return output
        return region_probabilities(output, self.output_kind)

    def probabilities(
        self, x: torch.Tensor, network: Callable[..., Any] | None = None
    ) -> torch.Tensor:
        """``(B, 3, *spatial)`` probabilities ``[WT, TC, ET]`` of a ``(B, C, *spatial)`` input.

        ``network`` replaces :attr:`network` for this call (its compiled form, say).
        """
        return self.to_probabilities((network or self.network)(x))


def size_divisor_of(network: nn.Module) -> int:
    """The multiple a network's input sides are padded to: its ``size_multiple`` (the product of
    its down-sampling strides; every registered network has it)."""
    net: Any = network  # attributes of the network contract, not of nn.Module
    return int(net.size_multiple)


def member_of_network(
    network: nn.Module,
    *,
    slice_context: int | None = None,
    patch_size: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    missing_fill: str | None = None,
) -> LoadedModel:
    """A :class:`LoadedModel` around a network in memory (a model being trained, say).

    Args:
        network: a registered network (attributes ``spatial_dims``, ``in_channels``,
            ``output_kind``, ``model_args``, ``size_multiple``); used as it is (its mode and
            device are left alone).
        slice_context: neighbouring slices on each side of a 2D network's input (default: what
            its ``in_channels = 4 * (2k + 1)`` implies).
        patch_size: the sliding-window size (default 128 per axis).
        device: where ``network`` runs.
        missing_fill: how the network takes missing sequences (:attr:`LoadedModel.missing_fill`).
    """
    net: Any = network  # attributes of the network contract, not of nn.Module
    spatial_dims = int(net.spatial_dims)
    in_channels = int(net.in_channels)
    if slice_context is None:
        image_channels = in_channels - extra_input_channels(missing_fill)
        slice_context = max(0, (image_channels // len(MODALITIES) - 1) // 2)
    return LoadedModel(
        network=network,
        name=type(network).__name__,
        spatial_dims=spatial_dims,
        output_kind=str(net.output_kind),
        in_channels=in_channels,
        slice_context=slice_context if spatial_dims == 2 else 0,
        preprocess=PreprocessConfig(),
        patch_size=tuple(int(s) for s in (patch_size or (128,) * spatial_dims))[:spatial_dims],
        size_divisor=size_divisor_of(network),
        et_min_voxels=None,
        source=Path(f"<{type(network).__name__}>"),
        model_args=dict(net.model_args),
        device=torch.device(device),
        missing_fill=missing_fill,
    )


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


# --------------------------------------------------------------------------------------------
# stored post-processing thresholds


class StoredThresholds(NamedTuple):
    """Post-processing thresholds stored with a model (``None``: not stored).

    Attributes:
        et_min_voxels: ET threshold in voxels (two-stage paper, sec. 3.4).
        min_lesion_voxels: per-region component-size thresholds ``{"wt": N, ...}``.
    """

    et_min_voxels: int | None = None
    min_lesion_voxels: dict[str, int] | None = None


def _checked_et_min_voxels(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelError(f"{where}: et_min_voxels must be a non-negative integer, got {value!r}")
    return value


def _checked_min_lesion_voxels(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ModelError(f"{where}: min_lesion_voxels must be a mapping, got {value!r}")
    try:
        return check_min_lesion_voxels(value, where)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None


def read_postprocess_json(run_dir: Path) -> StoredThresholds:
    """The thresholds ``tune-postprocess`` stored in ``run_dir/postprocess.json`` (read once).

    Raises:
        ModelError: the file exists but cannot be read, or holds an invalid threshold.
    """
    path = run_dir / "postprocess.json"
    if not path.is_file():
        return StoredThresholds()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the stored thresholds ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    et = data.get("et_min_voxels")
    lesions = data.get("min_lesion_voxels")
    return StoredThresholds(
        et_min_voxels=None if et is None else _checked_et_min_voxels(et, str(path)),
        min_lesion_voxels=None
        if lesions is None
        else _checked_min_lesion_voxels(lesions, str(path)),
    )


def stored_thresholds(ckpt: dict[str, Any], run_dir: Path | None) -> StoredThresholds:
    """Each threshold from the first place that stores it: ``postprocess.json`` of the run, else
    the checkpoint's ``extra``, else (ET only) the recipe's ``inference.et_min_voxels`` when
    non-zero."""
    tuned = read_postprocess_json(run_dir) if run_dir is not None else StoredThresholds()
    extra = ckpt.get("extra") if isinstance(ckpt.get("extra"), dict) else {}
    assert isinstance(extra, dict)
    et = tuned.et_min_voxels
    if et is None and isinstance(extra.get("et_min_voxels"), int):
        et = int(extra["et_min_voxels"])
    recipe = _section(ckpt.get("config", {}), "inference").get("et_min_voxels")
    if et is None and isinstance(recipe, int) and recipe > 0:
        et = recipe
    lesions = tuned.min_lesion_voxels
    if lesions is None and isinstance(extra.get("min_lesion_voxels"), dict):
        lesions = _checked_min_lesion_voxels(extra["min_lesion_voxels"], "checkpoint extra")
    return StoredThresholds(et, lesions)


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


#: Recipe values (``inference.*``) that ``predict`` takes from the model when no flag is given.
#: (``inference.et_min_voxels`` is a stored threshold: :func:`stored_thresholds`.)
RECIPE_INFERENCE_KEYS: tuple[str, ...] = (
    "tta",
    "sliding_window",
    "overlap",
    "precision",
    "threshold",
    "tc_threshold_without_et",
    "tta_region",
    "tta_region_threshold",
    "tta_region_margin",
)


def recipe_inference_values(members: Sequence[LoadedModel]) -> tuple[dict[str, Any], str]:
    """The ``inference.*`` values stored with the models' recipe, and where they come from.

    The first member that stores a recipe decides (folds and snapshots of one recipe agree;
    an ensemble mixing recipes takes its first model's, named in the second value). Only the
    keys of :data:`RECIPE_INFERENCE_KEYS` are read; ONNX exports store only the values that
    turn probabilities into labels (:data:`cascadeseg.inference.export.LABEL_KEYS`).

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


# --------------------------------------------------------------------------------------------
# checks


def expected_in_channels(spatial_dims: int, slice_context: int, missing_fill: str | None) -> int:
    """Input channels that fit the data: 4 modalities, times ``2k + 1`` slices for 2.5D, plus 4
    availability channels with the ``mask`` fill."""
    slices = 2 * slice_context + 1 if spatial_dims == 2 else 1
    return len(MODALITIES) * slices + extra_input_channels(missing_fill)


def check_member(member: LoadedModel) -> None:
    """Refuse a member whose input or output does not fit BraTS data (:class:`ModelError`)."""
    if member.spatial_dims not in (2, 3):
        raise ModelError(f"{member.source}: spatial_dims must be 2 or 3, got {member.spatial_dims}")
    if member.output_kind not in OUTPUT_KINDS:
        raise ModelError(
            f"{member.source}: unknown output kind {member.output_kind!r} "
            f"(known: {', '.join(OUTPUT_KINDS)})"
        )
    want = expected_in_channels(member.spatial_dims, member.slice_context, member.missing_fill)
    if member.in_channels != want:
        what = (
            f"{len(MODALITIES)} modalities x {2 * member.slice_context + 1} slices"
            if member.spatial_dims == 2
            else f"{len(MODALITIES)} modalities ({', '.join(MODALITIES)})"
        )
        if member.missing_fill == "mask":
            what += " + 4 availability channels"
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


# --------------------------------------------------------------------------------------------
# checkpoints


def eval_network(network: nn.Module) -> nn.Module:
    """``network`` in eval mode with gradients off for its parameters (inference only)."""
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def _network_of_checkpoint(path: Path, ckpt: dict[str, Any]) -> nn.Module:
    """The registered network a checkpoint names, with its weights, in eval mode."""
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
        network.load_state_dict(inference_state(path, ckpt), strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: weights do not fit model {name!r} ({first})") from None
    return eval_network(network)


def load_checkpoint_model(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """One :class:`LoadedModel` from a cascadeseg ``.pt`` checkpoint (no code runs on load)."""
    device = torch.device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    network = _network_of_checkpoint(path, ckpt).to(device)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    assert isinstance(config, dict)
    try:
        member = member_of_recipe(network, config, dict(ckpt["model_args"]), device=device)
    except ConfigError as exc:
        raise ModelError(f"{path}: {exc}") from None
    run_dir = run_dir_of(path)
    thresholds = stored_thresholds(ckpt, run_dir)
    return replace(
        member,
        name=str(ckpt["model_name"]),
        et_min_voxels=thresholds.et_min_voxels,
        min_lesion_voxels=thresholds.min_lesion_voxels,
        source=path,
        run_dir=run_dir,
    )


def member_of_recipe(
    network: nn.Module,
    config: dict[str, Any],
    model_args: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """A :class:`LoadedModel` around ``network`` as its resolved recipe ``config`` (a dict, as a
    checkpoint stores it) describes it: 2.5D slice context, sliding-window size
    (``data.patch_size``), missing-sequence fill, preprocessing, the recipe itself.

    Raises:
        ConfigError: the recipe's missing-sequence settings are invalid.
        ModelError: its preprocessing settings are invalid.
    """
    data = _section(config, "data")
    # 2.5D context: the model's own argument (CU-Net) or the recipe's data.slice_context.
    context = model_args.get("slice_context", data.get("slice_context", 0))
    member = member_of_network(
        network,
        slice_context=int(context or 0),
        patch_size=tuple(int(s) for s in (data.get("patch_size") or (128, 128, 128))),
        device=device,
        missing_fill=missing_fill_of_recipe(config),
    )
    preprocess = preprocess_config_of(config)
    return replace(member, preprocess=preprocess, config=config, model_args=model_args)


# --------------------------------------------------------------------------------------------
# ONNX Runtime members


class OnnxNetwork:
    """An ONNX Runtime session called like a network: torch tensor in, probabilities out.

    Args:
        model: path to an ``.onnx`` file or its bytes.
        device: ``cuda`` uses the CUDA execution provider when ONNX Runtime has it, else CPU.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(
        self,
        model: str | Path | bytes,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> None:
        # onnxruntime is an optional dependency, needed only for ONNX members.
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in (
            ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            where = "<bytes>" if isinstance(model, bytes) else str(model)
            raise ModelError(f"{where}: ONNX Runtime cannot load the model ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(np.asarray(out)).to(x.device)

    def metadata(self) -> dict[str, Any]:
        """The cascadeseg metadata stored at export (``{}`` if absent)."""
        props = self.session.get_modelmeta().custom_metadata_map
        raw = props.get(ONNX_METADATA_KEY)
        return json.loads(raw) if raw else {}


def load_onnx_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """A :class:`LoadedModel` from an ``.onnx`` file written by
    :func:`cascadeseg.inference.export.export_onnx`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX model not found")
    network = OnnxNetwork(path, device)
    meta = network.metadata()
    if meta.get("format") != ONNX_FORMAT:
        raise ModelError(f"{path}: not exported by cascadeseg (no {ONNX_METADATA_KEY!r} metadata)")
    return LoadedModel(
        network=network,
        name=str(meta.get("model_name", "onnx")),
        spatial_dims=int(meta["spatial_dims"]),
        output_kind="probabilities",
        in_channels=int(meta["in_channels"]),
        slice_context=int(meta.get("slice_context", 0)),
        preprocess=PreprocessConfig.from_dict(meta.get("preprocess") or {}),
        patch_size=tuple(int(s) for s in meta.get("patch_size", ())),
        size_divisor=int(meta.get("size_divisor", 16)),
        et_min_voxels=meta.get("et_min_voxels"),
        min_lesion_voxels=meta.get("min_lesion_voxels"),
        source=path,
        device=torch.device(device),
        missing_fill=meta.get("missing_fill"),
        config={"inference": dict(meta.get("inference") or {})},
    )


# --------------------------------------------------------------------------------------------
# the ensemble's members


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
            member = load_onnx_model(path, device)
        else:
            member = load_checkpoint_model(path, device)
        check_member(member)
        if probe:
            probe_output(member)
        members.append(member)
    check_compatible(members)
    return members
