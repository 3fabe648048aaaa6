"""A :class:`LoadedModel` around any tiny 3D network, for prediction tests (no checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cascadeseg.config import Config, apply_overrides, to_dict
from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.data.splits import save_split
from cascadeseg.data.writers import write_case
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.models import build_model
from cascadeseg.models.checkpoint import atomic_torch_save, make_checkpoint
from toy import make_tiny_case


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
        fields: other :class:`LoadedModel` fields (``run_dir``, ``config``, ...) or other values of
            the fixed ones (``et_min_voxels``, ...).
    """
    defaults: dict[str, Any] = dict(
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
    )
    return LoadedModel(**{**defaults, **fields})


def save_model_checkpoint(
    path: Path,
    name: str,
    model: Any,
    *,
    overrides: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """``model`` (built by ``build_model(name, ...)``) saved as an epoch-1 checkpoint at ``path``.

    Args:
        overrides: ``key=value`` changes to the default recipe stored with it (``model.name`` is
            set to ``name`` first).
        extra: the checkpoint's ``extra`` entries (stored thresholds, ...).
    """
    ckpt = make_checkpoint(
        model_name=name,
        model_args=model.model_args,
        model_state=model.state_dict(),
        config=to_dict(apply_overrides(Config(), [f"model.name={name}", *overrides])),
        epoch=1,
        extra=extra,
    )
    atomic_torch_save(ckpt, path)
    return path


def tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """An untrained 3D U-Net (width 4, depth 1) saved as a checkpoint at ``path``.

    Args:
        seed: seed of its random weights.
        overrides: ``key=value`` changes to the default recipe stored with it.
        extra: the checkpoint's ``extra`` entries (stored thresholds, ...).
    """
    torch.manual_seed(seed)
    model = build_model("unet3d", base_width=4, depth=1, norm_groups=2)
    return save_model_checkpoint(path, "unet3d", model, overrides=overrides, extra=extra)


def tiny_run(root: Path, *, last_without_et: bool = False) -> tuple[Path, Path]:
    """A run folder (``best.pt`` + ``split.json``: 1 training, 2 validation cases) and its data.

    Returns:
        ``(run_dir, data_dir)``: three 24x24x16 toy cases in the brats2021 layout; with
        ``last_without_et`` the third has no enhancing tumour.
    """
    data, run = root / "data", root / "run"
    ids = []
    for i in range(3):
        with_et = not (last_without_et and i == 2)
        case = make_tiny_case((24, 24, 16), seed=i, case_id=f"BraTS2021_{i:05d}", with_et=with_et)
        write_case(case, data, "brats2021")
        ids.append(case.case_id)
    tiny_checkpoint(run / "checkpoints" / "best.pt")
    save_split({"train": ids[:1], "val": ids[1:]}, run / "split.json")
    return run, data
