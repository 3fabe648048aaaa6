"""Plain U-Net baselines for the papers' comparisons.

* ``unet2d``: Ronneberger et al.'s 2D U-Net (the CU-Net paper's Table 1 baseline), with the
  modern changes every current implementation makes: 'same' padding (output = input size,
  no cropping of skips) and BatchNorm after each convolution.
* ``unet3d``: a plain 3D U-Net (Çiçek et al. 2016 layout: two conv-norm-ReLU per level, max-pool
  down, transposed-conv up, concatenated skips) starting at stage 1's 16 channels, with
  GroupNorm(8) as stage 1. Depth 4 (16/32/64/128/256) gives 5.6 M parameters and 0.244 TFLOP per
  eval-mode forward of one ``(1, 4, 128, 128, 128)`` input, against stage 1's 4.7 M and 0.298
  TFLOP on the same input (FLOP counter of :mod:`cascadeseg.models.inspect`, as ``cascadeseg info
  unet3d`` and ``cascadeseg info two_stage_stage1`` print; depth 3 would have only 1.4 M).
"""

from __future__ import annotations

import torch
from torch import nn

from cascadeseg.models.blocks import (
    ConvNormAct,
    conv,
    conv_transpose,
    crop_to,
    max_pool,
    pad_to_multiple,
)
from cascadeseg.models.registry import register


class PlainUNet(nn.Module):
    """U-Net with two conv-norm-ReLU layers per level, 2D or 3D.

    Level ``i`` has ``base_width * 2**i`` channels for ``i = 0..depth`` (the last is the bottom);
    inputs are zero-padded to multiples of ``2**depth`` and the output cropped back.
    ``(B, in_channels, *S) -> (B, out_channels, *S)`` logits.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_width: int,
        depth: int,
        norm: str,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.size_multiple = 2**depth

        def double_conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                ConvNormAct(
                    cin, cout, spatial_dims=spatial_dims, norm=norm, norm_groups=norm_groups
                ),
                ConvNormAct(
                    cout, cout, spatial_dims=spatial_dims, norm=norm, norm_groups=norm_groups
                ),
            )

        self.pool = max_pool(spatial_dims)
        self.encoders = nn.ModuleList(
            double_conv(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)
        )
        self.ups = nn.ModuleList(
            conv_transpose(spatial_dims, widths[i + 1], widths[i], 2)
            for i in range(depth - 1, -1, -1)
        )
        self.decoders = nn.ModuleList(
            double_conv(2 * widths[i], widths[i]) for i in range(depth - 1, -1, -1)
        )
        self.end_conv = conv(spatial_dims, widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, crop = pad_to_multiple(x, self.size_multiple)
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        for i, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
            x = decoder(torch.cat([up(x), skips[-2 - i]], dim=1))
        return crop_to(self.end_conv(x), crop)


@register("unet2d")
class UNet2d(PlainUNet):
    """Ronneberger-style 2D U-Net: ``(B, in_channels, H, W) -> (B, 4, H, W)`` logits over the
    internal labels 0..3 (softmax applied by the loss / inference).

    Args:
        in_channels: 4 modalities of one axial slice (times ``2 * context + 1`` with neighbours).
        out_channels: classes (4).
        base_width: first level's channels (64, Ronneberger et al.).
        depth: downsampling steps (4).
    """

    spatial_dims = 2
    output_kind = "labels"

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 4,
        base_width: int = 64,
        depth: int = 4,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            base_width=base_width,
            depth=depth,
            norm="batch",
        )
        self.in_channels = in_channels


@register("unet3d")
class UNet3d(PlainUNet):
    """Plain 3D U-Net: ``(B, 4, X, Y, Z) -> (B, 3, X, Y, Z)`` region logits [WT, TC, ET].

    Args:
        in_channels: modalities (4).
        out_channels: regions (3).
        base_width: first level's channels (16, stage 1's).
        depth: downsampling steps (4: 16/32/64/128/256 channels, the parameter count closest
            to stage 1's; see the module docstring).
        norm_groups: GroupNorm groups (8, as stage 1).
    """

    spatial_dims = 3
    output_kind = "regions"

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 3,
        base_width: int = 16,
        depth: int = 4,
        norm_groups: int = 8,
    ) -> None:
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            base_width=base_width,
            depth=depth,
            norm="group",
            norm_groups=norm_groups,
        )
        self.in_channels = in_channels
