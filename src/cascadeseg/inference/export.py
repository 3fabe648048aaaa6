"""ONNX export of the inference network, and the predictor's ``--backend onnx`` members.

The exported graph is the eval-mode network followed by its output activation
(:func:`cascadeseg.models.outputs.region_probabilities`), so it maps a ``(B, C, *spatial)`` image to
``(B, 3, *spatial)`` probabilities ``[WT, TC, ET]`` and needs no cascadeseg code to be used. Batch
and spatial axes are dynamic (any size that is a multiple of the network's down-sampling factor).
Several checkpoints (a run directory's snapshots) export as one graph that averages them.

Everything the predictor needs to use the file alone (spatial dims, channels, slice context,
preprocessing recipe, stored ET threshold, the recipe's label thresholds, padding multiple) is
written as JSON into the model's ``metadata_props`` under the key ``cascadeseg``;
:func:`cascadeseg.inference.loading.load_onnx_model` reads it back, so
``cascadeseg predict --model model.onnx`` works without the checkpoint.

The TorchScript-based exporter (``dynamo=False``) is used: the ``torch.export``-based one needs the
``onnxscript`` package, which is not a dependency.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cascadeseg.errors import ModelError
from cascadeseg.fsutil import atomic_path
from cascadeseg.inference.ensemble import ensemble_et_min_voxels, ensemble_min_lesion_voxels
from cascadeseg.inference.loading import (
    ONNX_FORMAT,
    ONNX_METADATA_KEY,
    LoadedModel,
    OnnxNetwork,
    check_member,
    load_models,
    member_of_network,
    recipe_inference_values,
)
from cascadeseg.models.outputs import region_probabilities

#: Lowest opset accepted (GroupNormalization-free graphs work from 13, but 17 is what we test).
MIN_OPSET = 17


class ProbabilityHead(nn.Module):
    """Eval-mode network(s) + output activation: ``(B, C, *s) -> (B, 3, *s)`` probabilities.

    With several members of one architecture the output is their mean (a snapshot ensemble in
    one graph).
    """

    def __init__(self, networks: Sequence[nn.Module], output_kind: str) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.output_kind = output_kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for net in self.networks:
            out = net(x)
            probs = (
                out
                if self.output_kind == "probabilities"
                else region_probabilities(out, self.output_kind)
            )
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(self.networks)


#: Recipe values (``inference.*``) an export carries: the ones that turn probabilities into labels.
LABEL_KEYS: tuple[str, ...] = ("threshold", "tc_threshold_without_et")


def _metadata(members: Sequence[LoadedModel]) -> dict[str, Any]:
    first = members[0]
    return {
        "format": ONNX_FORMAT,
        "model_name": first.name,
        "members": len(members),
        "sources": [str(m.source) for m in members],
        "spatial_dims": first.spatial_dims,
        "in_channels": first.in_channels,
        "slice_context": first.slice_context,
        "output_kind": first.output_kind,
        "preprocess": first.preprocess.to_dict(),
        "patch_size": list(first.patch_size),
        "size_divisor": first.size_divisor,
        "et_min_voxels": ensemble_et_min_voxels(members),
        "min_lesion_voxels": ensemble_min_lesion_voxels(members),
        "missing_fill": first.missing_fill,
        # How probabilities become labels, so that an export labels as its run does; the
        # other inference settings (TTA, precision, the TTA region) belong to the backend.
        "inference": {
            k: v for k, v in recipe_inference_values(members)[0].items() if k in LABEL_KEYS
        },
    }


def _as_members(model_or_ckpt: Any) -> list[LoadedModel]:
    if isinstance(model_or_ckpt, LoadedModel):
        return [model_or_ckpt]
    if isinstance(model_or_ckpt, (str, Path)):
        return load_models([model_or_ckpt], "cpu")
    if isinstance(model_or_ckpt, (list, tuple)) and all(
        isinstance(m, LoadedModel) for m in model_or_ckpt
    ):
        return list(model_or_ckpt)
    if isinstance(model_or_ckpt, nn.Module):
        return [member_of_network(model_or_ckpt.eval())]
    raise TypeError(f"cannot export {type(model_or_ckpt).__name__}")


def export_onnx_bytes(
    model_or_ckpt: Any,
    *,
    example_size: Sequence[int] | None = None,
    opset: int = MIN_OPSET,
) -> bytes:
    """The ONNX model (bytes) of a model, checkpoint, run directory or list of members.

    Args:
        model_or_ckpt: a :class:`LoadedModel`, a list of them (one architecture), an ``nn.Module``
            with ``spatial_dims``/``in_channels``/``output_kind``, or a ``.pt``/run-dir path.
        example_size: spatial size of the tracing input (default: twice the padding multiple per
            axis); any multiple of the padding multiple works afterwards.
        opset: ONNX opset (>= 17).

    Returns:
        The serialized model with cascadeseg metadata.
    """
    # onnx is an optional dependency, needed only to export.
    import onnx

    if opset < MIN_OPSET:
        raise ModelError(f"opset must be >= {MIN_OPSET}, got {opset}")
    members = _as_members(model_or_ckpt)
    first = members[0]
    for m in members[1:]:
        if (m.name, m.model_args, m.output_kind, m.in_channels) != (
            first.name,
            first.model_args,
            first.output_kind,
            first.in_channels,
        ):
            raise ModelError(f"{m.source}: export of an ensemble needs one architecture")
    networks = []
    for m in members:
        if not isinstance(m.network, nn.Module):
            raise ModelError(f"{m.source}: only PyTorch networks can be exported")
        networks.append(m.network)
    head = ProbabilityHead(networks, first.output_kind).eval().cpu()
    size = tuple(example_size or (2 * first.size_divisor,) * first.spatial_dims)
    if len(size) != first.spatial_dims:
        raise ModelError(f"example_size needs {first.spatial_dims} values, got {list(size)}")
    example = torch.zeros((1, first.in_channels, *size))
    axes = {0: "batch", **{2 + i: f"dim{i}" for i in range(first.spatial_dims)}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            head,
            (example,),
            buffer,  # type: ignore[arg-type]  # file-like objects are accepted
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": axes, "probabilities": axes},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(_metadata(members))
    return bytes(proto.SerializeToString())


def export_onnx(
    model_or_ckpt: Any,
    out_path: str | Path,
    *,
    example_size: Sequence[int] | None = None,
    opset: int = MIN_OPSET,
) -> Path:
    """Export the eval-mode network (with its output activation) to an ONNX file, atomically.

    See :func:`export_onnx_bytes` for the arguments. Returns the written path.
    """
    data = export_onnx_bytes(model_or_ckpt, example_size=example_size, opset=opset)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out


def to_onnx_member(member: LoadedModel) -> LoadedModel:
    """The same member run by ONNX Runtime (exported in memory; nothing is written to disk)."""
    if member.output_kind == "probabilities":
        return member
    data = export_onnx_bytes(member)
    onnx_member = replace(
        member, network=OnnxNetwork(data, member.device), output_kind="probabilities"
    )
    check_member(onnx_member)
    return onnx_member


def onnx_max_abs_diff(member: LoadedModel, onnx_network: OnnxNetwork, x: torch.Tensor) -> float:
    """Max absolute difference between PyTorch and ONNX Runtime probabilities on ``x``."""
    with torch.inference_mode():
        ref = member.probabilities(x.to(member.device)).float().cpu()
    out = onnx_network(x.cpu()).float()
    return float((ref - out).abs().max())
