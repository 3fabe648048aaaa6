"""The peers of the CPU comparison: nnU-Net's default BraTS network and MONAI's SegResNet.

- nnU-Net's default BraTS network, ``dynamic_network_architectures.PlainConvUNet`` as nnU-Net v2
  plans it for BraTS 3d_fullres (6 stages, 32..320 features, 2 convolutions per stage,
  InstanceNorm, LeakyReLU, 128^3 patches, no deep supervision at inference), in fp32 (its
  default): one 128^3 patch timed, the case **extrapolated** as patches x 8 mirrorings, the
  number of patches given by nnU-Net's sliding-window rule (step 0.5) on the same brain crop;
  nnU-Net's own preprocessing, Gaussian weighting and export are not counted (in its favour).
  ``dynamic_network_architectures`` is not a dependency (it pulls a CUDA build of PyTorch):
  install it beside the environment (``pip install --no-deps --target DIR``, ``PYTHONPATH``).
- MONAI's SegResNet (init_filters=16, blocks 1-2-2-4, MONAI's BraTS tutorial), fp32, one pass
  on the same crop timed, 8 flips extrapolated as 8 passes.

A pass's time is the best of ``repeats`` after ``warmup`` (as for cascadeseg's rows). Each
``*_row`` returns the row (a dict) or a skip reason (a string).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cascadeseg.bench.models import segresnet_peer
from cascadeseg.bench.timing import timed
from cascadeseg.models.inspect import count_input_flops
from cascadeseg.runtime import autocast

#: nnU-Net v2's 3d_fullres plan for BraTS (Dataset137_BraTS2021): 128^3 patches, 6 stages.
NNUNET_PATCH = (128, 128, 128)
NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)
#: nnU-Net's predictor defaults: step 0.5 of the patch, mirroring on all 3 axes (2^3 passes).
NNUNET_STEP = 0.5
NNUNET_MIRRORINGS = 8
#: ``--quick``: the same 6 stages with an eighth of the features at 64^3 (2^3 at the bottom).
QUICK_NNUNET_PATCH = (64, 64, 64)
QUICK_NNUNET_FEATURES = (4, 8, 16, 32, 40, 40)


def sliding_window_steps(
    image_size: Sequence[int], patch_size: Sequence[int], step: float = NNUNET_STEP
) -> list[list[int]]:
    """Patch start positions per axis, by nnU-Net v2's rule (``compute_steps_for_sliding_window``).

    Re-derived here so that nnU-Net need not be installed: the image is first padded to at
    least the patch size; per axis the number of patches is ``ceil((image - patch) /
    (patch * step)) + 1`` and the starts are spread evenly from 0 to ``image - patch``, rounded.

    Args:
        image_size: spatial size of the (cropped) image, voxels.
        patch_size: network patch size, voxels.
        step: step as a fraction of the patch (nnU-Net's default 0.5).

    Returns:
        One list of start indices per axis.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    steps = []
    for image, patch in zip(image_size, patch_size):
        image = max(int(image), int(patch))  # nnU-Net pads smaller images to the patch
        n = math.ceil((image - patch) / (patch * step)) + 1
        stride = (image - patch) / (n - 1) if n > 1 else 0.0
        steps.append([int(np.round(stride * i)) for i in range(n)])
    return steps


def nnunet_patches(image_size: Sequence[int], patch_size: Sequence[int]) -> int:
    """Number of sliding-window patches nnU-Net's predictor runs on ``image_size``."""
    return int(np.prod([len(s) for s in sliding_window_steps(image_size, patch_size)]))


def build_nnunet(features: Sequence[int] = NNUNET_FEATURES) -> torch.nn.Module:
    """PlainConvUNet as nnU-Net v2 configures it for BraTS 3d_fullres (4 inputs, 3 regions).

    Raises:
        ImportError: ``dynamic_network_architectures`` is not installed.
    """
    # Optional: not a dependency of cascadeseg (see the module docstring).
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(features)
    return PlainConvUNet(
        input_channels=4,
        n_stages=n,
        features_per_stage=list(features),
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        num_classes=3,  # BraTS is trained region-based in nnU-Net: WT, TC, ET
        n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


def pass_fn(model: torch.nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    """One forward pass of ``model`` on ``x`` under ``precision``'s autocast, no gradients."""

    def run() -> None:
        with torch.inference_mode(), autocast(precision, "cpu"):
            model(x)

    return run


def nnunet_row(
    crop: Sequence[int], *, quick: bool, repeats: int, warmup: int
) -> dict[str, Any] | str:
    """nnU-Net's default BraTS network: one patch timed, the case extrapolated."""
    try:
        model = build_nnunet(QUICK_NNUNET_FEATURES if quick else NNUNET_FEATURES).eval()
    except ImportError:
        return "dynamic_network_architectures is not installed: the nnU-Net row is left out"
    patch = QUICK_NNUNET_PATCH if quick else NNUNET_PATCH
    features = "-".join(map(str, QUICK_NNUNET_FEATURES if quick else NNUNET_FEATURES))
    torch.manual_seed(0)
    x = torch.randn((1, 4, *patch))
    one = dict(timed(pass_fn(model, x, "fp32"), repeats=repeats, warmup=warmup))
    patches = nnunet_patches(crop, patch)
    flops = count_input_flops(model, x.shape)
    return {
        "id": "nnunet",
        "what": f"nnU-Net default BraTS 3d_fullres (PlainConvUNet {features}, "
        f"{'x'.join(map(str, patch))} patches), {patches} patches x {NNUNET_MIRRORINGS} "
        "mirrorings, fp32",
        "tool": "nnU-Net",
        "precision": "fp32",
        "peak_precision": "fp32",
        "backend": "torch",
        "seconds_per_case": one["min_s"] * patches * NNUNET_MIRRORINGS,
        "how": f"EXTRAPOLATED: one patch timed x {patches} patches (step {NNUNET_STEP}) x "
        f"{NNUNET_MIRRORINGS} mirrorings; network only",
        "seconds_per_pass": one["min_s"],
        "pass_timing": one,
        "patches": patches,
        "steps": sliding_window_steps(crop, patch),
        "passes": patches * NNUNET_MIRRORINGS,
        "gflop_per_pass": flops / 1e9,
        "gflops_per_s": flops / one["min_s"] / 1e9,
        "input_size": list(patch),
    }


def segresnet_row(
    size: Sequence[int], *, quick: bool, repeats: int, warmup: int
) -> dict[str, Any] | str:
    """MONAI's SegResNet on the same crop, fp32: one pass timed, 8 flips extrapolated."""
    width = 8 if quick else 16
    model = segresnet_peer(width)
    if model is None:
        return "monai is not installed: the SegResNet row is left out"
    model.eval()
    x = torch.randn((1, 4, *size))
    one = dict(timed(pass_fn(model, x, "fp32"), repeats=repeats, warmup=warmup))
    flops = count_input_flops(model, x.shape)
    return {
        "id": "segresnet",
        "what": f"MONAI SegResNet init_filters={width}, 8 flips, fp32",
        "tool": "MONAI",
        "precision": "fp32",
        "peak_precision": "fp32",
        "backend": "torch",
        "seconds_per_case": one["min_s"] * 8,
        "how": "EXTRAPOLATED: one whole-crop pass timed x 8 flips; network only",
        "seconds_per_pass": one["min_s"],
        "pass_timing": one,
        "passes": 8,
        "gflop_per_pass": flops / 1e9,
        "gflops_per_s": flops / one["min_s"] / 1e9,
        "input_size": list(size),
    }
