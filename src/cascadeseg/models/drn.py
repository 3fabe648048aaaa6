"""DRN: a dilated residual network without pooling (Lopez and Ventura, BrainLes 2017).

One of the five methods of the CU-Net paper's Table 1. What the DRN paper publishes (its
abstract and the CU-Net paper's summary of it): a 2D network "based on the Dilated Residual
Network" of Yu et al. (2017), residual blocks whose dilated convolutions give "multi-scale
analysis ... without losing resolution by downsampling the input": no pooling and no strided
convolution, so every layer works at the input resolution. Choices where that description is
silent (each a constructor argument, so a recipe can change it):

* Layout after Yu et al.'s DRN-C: a stem (two 3x3 conv-BN-ReLU layers), then groups of
  ``blocks_per_group`` basic residual blocks (two 3x3 conv-BN-ReLU with an identity or 1x1
  projection shortcut, as ResNet-18/DRN-C-26), then DRN-C's "degridding" layers: one 3x3
  conv-BN-ReLU layer per entry of ``degrid_dilations`` without residual connections (removes the
  gridding artefacts of large dilations).
* Widths and dilations: ``widths`` 32/32/64/64/128/128 with ``dilations`` 1/1/2/4/8/16 (the
  receptive field doubles with each group from the third on, reaching about 130 pixels, half a
  BraTS slice, where DRN-C reaches the whole image by downsampling 8x then dilating 2 and 4).
  The widths are a quarter of DRN-C-26's at its 1/8-resolution levels: at full resolution the
  network has 1.8 M parameters and costs 0.20 TFLOP per 240 x 240 slice, 2.4 times the 2D U-Net
  baseline's 0.085 with 6% of its parameters (``cascadeseg info drn``): the time and memory
  cost of full resolution the CU-Net paper points out.
* Output: a 1x1 convolution to the 4 internal labels (softmax cross-entropy over the brain, as
  the other 2D baselines of the comparison, ``output_kind = "labels"``).
* Training data: the DRN paper trains on class-balanced patches; the recipes (``drn_cpu``,
  ``drn_brats17``) train it on whole slices like the other methods of the CU-Net comparison (the
  network is fully convolutional, so patches or slices are a recipe choice, not a model one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cascadeseg.models.blocks import ConvNormAct, ResidualUnit
from cascadeseg.models.registry import register

# State-dict names of the residual blocks' layers in checkpoints written while DRN had blocks of
# its own (conv-BN pairs in ``body``), and their names in ResidualUnit: old checkpoints load.
_OLD_BLOCK_NAMES = {
    "body.0.0.": "conv1.",
    "body.0.1.": "norm1.",
    "body.1.0.": "conv2.",
    "body.1.1.": "norm2.",
}


@register("drn")
class DRN(nn.Module):
    """Dilated residual network for 2D slices, full resolution throughout (see module docstring).

    Args:
        in_channels: 4 modalities of one axial slice (times ``2 * context + 1`` with neighbours).
        out_channels: classes (4 internal labels).
        stem_width: channels of the two stem convolutions.
        widths: channels of each residual group.
        dilations: dilation of each residual group (same length as ``widths``).
        blocks_per_group: residual blocks per group (2, as DRN-C-26).
        degrid_dilations: dilations of the plain conv-BN-ReLU layers after the groups (DRN-C:
            2 then 1; empty = none), at the last group's width.

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits, any ``H, W``.
    """

    spatial_dims = 2
    output_kind = "labels"

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 4,
        stem_width: int = 32,
        widths: tuple[int, ...] = (32, 32, 64, 64, 128, 128),
        dilations: tuple[int, ...] = (1, 1, 2, 4, 8, 16),
        blocks_per_group: int = 2,
        degrid_dilations: tuple[int, ...] = (2, 1),
    ) -> None:
        super().__init__()
        if len(widths) != len(dilations) or not widths:
            raise ValueError("widths and dilations need the same, non-zero length")
        if blocks_per_group < 1 or min(dilations) < 1 or min(widths) < 1:
            raise ValueError("blocks_per_group, widths and dilations must be >= 1")
        self.in_channels = in_channels
        self.size_multiple = 1  # no down-sampling: any slice size
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, stem_width, spatial_dims=2),
            ConvNormAct(stem_width, stem_width, spatial_dims=2),
        )
        groups: list[nn.Module] = []
        channels = stem_width
        for width, dilation in zip(widths, dilations):
            for _ in range(blocks_per_group):
                groups.append(ResidualUnit(channels, width, spatial_dims=2, dilation=dilation))
                channels = width
        self.groups = nn.Sequential(*groups)
        self.degrid = nn.Sequential(
            *[ConvNormAct(channels, channels, spatial_dims=2, dilation=d) for d in degrid_dilations]
        )
        self.end_conv = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.end_conv(self.degrid(self.groups(self.stem(x))))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Renames the residual blocks' layers of old checkpoints (_OLD_BLOCK_NAMES) in the copy
        # load_state_dict passes down, before the blocks read it.
        for key in [k for k in state_dict if k.startswith(prefix + "groups.")]:
            block, _, rest = key[len(prefix + "groups.") :].partition(".")
            for old, new in _OLD_BLOCK_NAMES.items():
                if rest.startswith(old):
                    renamed = f"{prefix}groups.{block}.{new}{rest[len(old) :]}"
                    state_dict[renamed] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
