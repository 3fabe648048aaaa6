"""What the benchmarks run on: sizes and widths, synthetic cases, batches and label maps.

Whole-brain inputs are the two-stage paper's inference crop, 160 x 192 x 128 voxels; ``--quick``
shrinks sizes to :data:`QUICK_3D` and networks to :data:`QUICK_ARGS`. Cases are written by the
synthetic generator (once per process, :func:`synthetic_data`); training batches, LWS slices
and the metrics' label maps are drawn here without files. Networks have random weights: speed
does not depend on them.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from cascadeseg.config import load_config
from cascadeseg.data.augment import crop
from cascadeseg.data.cache import PreprocessCache
from cascadeseg.data.labels import ED, ET, NCR, from_internal
from cascadeseg.data.layouts import CaseRef, discover_cases
from cascadeseg.data.nifti import save_nifti
from cascadeseg.data.preprocess import Preprocessed
from cascadeseg.data.synth import SynthConfig, synthesize_dataset
from cascadeseg.errors import ConfigError

#: Whole-brain crop of the two-stage paper's inference (Myronenko's 160 x 192 x 128).
WHOLE_BRAIN = (160, 192, 128)
#: Tiny sizes and networks of ``--quick`` (8 is a multiple of every quick network's stride).
QUICK_3D = (8, 8, 8)
QUICK_WIDTH = 8
#: ``--quick`` synthetic cases: 30 x 30 x 19 voxels (the generator's grid x 0.125).
QUICK_SYNTH_SCALE = 0.125
QUICK_ARGS: dict[str, dict[str, Any]] = {
    "two_stage": {"base_width": QUICK_WIDTH, "blocks": (1, 1, 1)},
    "unet3d": {"base_width": QUICK_WIDTH, "depth": 2},
    "cunet": {"base_width": QUICK_WIDTH, "depth": 2},
}
#: Paper widths are the registry defaults; ``--quick`` overrides ``base_width``.
MODELS_3D = ("two_stage", "unet3d")
MODELS_2D = ("cunet",)


def quick_overrides(name: str, quick: bool) -> dict[str, Any]:
    """Constructor overrides: none (paper width) or the tiny ``--quick`` network."""
    return dict(QUICK_ARGS[name]) if quick else {}


def cpu_recipe(name: str, fallback_size: Sequence[int], fallback_width: int) -> dict[str, Any]:
    """Patch size, model overrides and batch of the shipped ``<name>_cpu`` recipe.

    Returns ``{"size", "args", "batch", "source"}``; falls back to ``fallback_size`` /
    ``base_width=fallback_width`` / batch 1 (3D) or 8 (2D) when the recipe is not shipped.
    """
    dims = len(fallback_size)
    try:
        cfg = load_config(f"{name}_cpu")
    except ConfigError:
        return {
            "size": tuple(fallback_size),
            "args": {"base_width": fallback_width},
            "batch": 1 if dims == 3 else 8,
            "source": "built-in fallback (no shipped CPU recipe)",
        }
    return {
        "size": tuple(int(s) for s in cfg.data.patch_size[:dims]),
        "args": dict(cfg.model.args),
        "batch": int(cfg.train.batch_size),
        "source": f"{name}_cpu.yaml",
    }


# --------------------------------------------------------------------------------------------
# a synthetic case on disk


@dataclass(frozen=True)
class SyntheticData:
    """One synthetic case on disk and its cached preprocessed version.

    Attributes:
        root: dataset folder (``brats2021`` layout, one case).
        ref: the case's :class:`~cascadeseg.data.layouts.CaseRef`.
        pre: the preprocessed case (memory-mapped cache entry, as training reads it).
    """

    root: Path
    ref: CaseRef
    pre: Preprocessed


_DATA: dict[bool, SyntheticData] = {}


def synthetic_data(quick: bool) -> SyntheticData:
    """One synthetic case written once per process (240x240x155, or 30x30x19 when quick)."""
    if quick not in _DATA:
        tmp = Path(tempfile.mkdtemp(prefix="cascadeseg_bench_data_"))
        atexit.register(shutil.rmtree, tmp, True)
        config = SynthConfig(shape_scale=QUICK_SYNTH_SCALE if quick else 1.0)
        root = tmp / "dataset"
        synthesize_dataset(root, 1, seed=0, layout="brats2021", progress=False, config=config)
        ref = discover_cases(root)[0]
        pre = PreprocessCache(tmp / "cache").get(ref)
        _DATA[quick] = SyntheticData(root=root, ref=ref, pre=pre)
    return _DATA[quick]


def case_input(pre: Preprocessed, size: Sequence[int], *, batch: int = 1) -> torch.Tensor:
    """A network input cut from a preprocessed case, centred, zero-padded where it is smaller.

    3 sides: ``(1, 4, X, Y, Z)``. 2 sides: the ``batch`` middle axial slices ``(batch, 4, H, W)``.
    """
    image = np.asarray(pre.image, dtype=np.float32)
    if len(size) == 3:
        start = [(s - t) // 2 for s, t in zip(image.shape[1:], size)]
        return torch.from_numpy(crop(image, start, size))[None]
    depth = image.shape[-1]
    z0 = max(0, depth // 2 - batch // 2)
    slices = np.moveaxis(image[..., z0 : z0 + batch], -1, 0)  # (b, 4, X, Y)
    start = [(s - t) // 2 for s, t in zip(slices.shape[2:], size)]
    out = crop(slices, start, size)
    if out.shape[0] < batch:  # fewer slices than asked for: repeat them
        out = np.concatenate([out] * math.ceil(batch / out.shape[0]))[:batch]
    return torch.from_numpy(np.ascontiguousarray(out))


# --------------------------------------------------------------------------------------------
# batches and slices without files


def synthetic_batch(
    batch: int, size: Sequence[int], *, in_channels: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batch shaped like the datasets' (``image``, ``label``, ``regions``, ``brain_mask``).

    The label is a nested tumour (edema shell, enhancing rim, necrotic core) centred in an
    ellipsoidal brain, so every loss (LWS included) has all its regions.

    Args:
        batch: batch size.
        size: spatial size, 3 values (3D) or 2 (2D), voxels.
    """
    gen = torch.Generator().manual_seed(seed)
    spatial = tuple(int(s) for s in size)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in spatial], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))  # type: ignore[arg-type]
    brain = radius <= 0.9
    label = torch.zeros(spatial, dtype=torch.int64)
    label[radius <= 0.45] = ED
    label[radius <= 0.3] = ET
    label[radius <= 0.18] = NCR
    image = torch.randn((batch, in_channels, *spatial), generator=gen) * brain
    labels = label.expand(batch, *spatial).clone()
    regions = torch.stack([labels > 0, (labels == NCR) | (labels == ET), labels == ET], 1)
    return {
        "image": image,
        "label": labels,
        "regions": regions.float(),
        "brain_mask": brain.expand(batch, *spatial).clone(),
    }


def synthetic_slices(
    batch: int, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` label slices ``(B, size, size)`` (int64, internal labels) and their brain masks.

    Brain ellipses with a round tumour (edema ring, core, enhancing rim) per slice.
    """
    coords = torch.arange(size, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centre = size / 2
    brain = ((yy - centre) / (0.4 * size)) ** 2 + ((xx - centre) / (0.33 * size)) ** 2 <= 1
    labels = torch.zeros(batch, size, size, dtype=torch.int64, device=device)
    for b in range(batch):
        cy, cx = centre + (b % 3 - 1) * 0.1 * size, centre + (b % 2) * 0.08 * size
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        radius = 0.06 * size + b
        labels[b][dist <= radius] = 2
        labels[b][dist <= 0.6 * radius] = 3
        labels[b][dist <= 0.4 * radius] = 1
    return labels, brain.expand(batch, size, size).clone()


# --------------------------------------------------------------------------------------------
# label maps of the metrics benchmarks


def make_benchmark_case(
    seed: int, shape: tuple[int, int, int] = (240, 240, 155), radius: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    """A realistic ``(prediction, reference)`` pair of internal label maps (uint8, ``shape``).

    The reference is a lumpy sphere of radius ``radius`` voxels (about 110k voxels at 30):
    edema outside, enhancing tumour, necrosis inside. The prediction is the reference shifted
    by ``(2, -1, 1)`` voxels with its whole-tumour boundary eroded by one voxel.
    """
    rng = np.random.default_rng(seed)
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2 + rng.integers(-10, 10, 3)
    stretch = rng.uniform(0.85, 1.15, 3)
    dist = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, stretch)))
    lumps = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 4) * 8
    dist = dist + lumps
    ref = np.zeros(shape, dtype=np.uint8)
    ref[dist < radius] = 2
    ref[dist < radius * 0.6] = 3
    ref[dist < radius * 0.33] = 1
    pred = np.roll(ref, (2, -1, 1), axis=(0, 1, 2))
    pred = np.where(ndimage.binary_erosion(pred > 0), pred, 0).astype(np.uint8)
    return pred, ref


def make_lesion_benchmark_case(
    seed: int, shape: tuple[int, int, int] = (240, 240, 155), n_lesions: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-lesion ``(prediction, reference)`` pair of internal label maps (uint8, ``shape``).

    ``n_lesions`` reference lesions of radius 2-14 voxels (edema with a necrotic and enhancing
    core when large enough), spread over the grid; the prediction shifts each by one voxel,
    misses one, splits one in two, and adds two small false positives far from every lesion.
    """
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    margin = np.array([20, 20, 20])
    for k in range(n_lesions):
        radius = float(rng.uniform(2.0, 14.0))
        centre = rng.uniform(margin, np.array(shape) - margin)
        box = tuple(
            slice(max(int(c - radius - 2), 0), min(int(c + radius + 3), n))
            for c, n in zip(centre, shape)
        )
        grid = np.ogrid[box]
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        lesion = np.zeros(dist.shape, dtype=np.uint8)
        lesion[dist < radius] = 2
        lesion[dist < radius * 0.6] = 3
        lesion[dist < radius * 0.33] = 1
        ref[box] = np.maximum(ref[box], lesion)
        if k == 0:
            continue  # missed
        moved = np.roll(lesion, 1, axis=k % 3)
        if k == 1:  # split in two
            moved[moved.shape[0] // 2 - 1 : moved.shape[0] // 2 + 1] = 0
        pred[box] = np.maximum(pred[box], moved)
    for corner in ((5, 5, 5), (shape[0] - 9, 5, shape[2] - 9)):
        pred[tuple(slice(c, c + 3) for c in corner)] = 2
    return pred, ref


def write_label_folders(root: Path, n: int, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """``n`` prediction/reference label maps (BraTS 2021 labels) in two flat folders under
    ``root``: ``pred`` and ``ref``, one ``BraTS2021_<i>.nii.gz`` per case in each."""
    pred_dir, ref_dir = root / "pred", root / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    radius = min(30.0, min(shape) / 5)
    for i in range(n):
        pred, ref = make_benchmark_case(i, shape, radius=radius)
        case_id = f"BraTS2021_{i:05d}"
        for label, folder in ((pred, pred_dir), (ref, ref_dir)):
            path = folder / f"{case_id}.nii.gz"
            save_nifti(from_internal(label, "brats2021"), np.eye(4), None, path)
    return pred_dir, ref_dir
