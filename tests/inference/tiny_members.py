"""A :class:`LoadedModel` around any tiny 3D network, for prediction tests (no checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.inference.ensemble import LoadedModel


def tiny_member(
    network: Any,
    *,
    source: str | Path = "tiny.pt",
    name: str = "tiny",
    output_kind: str = "probabilities",
    **fields: Any,
) -> LoadedModel:
    """A 3D member of 4 input channels, padded to multiples of 8, with a 16^3 patch.

    Args:
        network: callable ``(B, 4, X, Y, Z) -> (B, 3, X, Y, Z)``.
        source: the checkpoint path it claims to come from.
        name: its registry name.
        output_kind: how its output becomes probabilities (default: it already is).
        fields: other :class:`LoadedModel` fields (``run_dir``, ``config``, ...).
    """
    return LoadedModel(
        network=network,
        name=name,
        spatial_dims=3,
        output_kind=output_kind,
        in_channels=4,
        slice_context=0,
        preprocess=PreprocessConfig(),
        patch_size=(16, 16, 16),
        size_divisor=8,
        et_min_voxels=None,
        source=Path(source),
        **fields,
    )
