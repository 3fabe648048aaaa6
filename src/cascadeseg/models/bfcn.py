"""BFCN: a boundary-aware fully convolutional network (Shen, Wang, Zhang and McKenna, MICCAI 2017).

One of the five methods of the CU-Net paper's Table 1. What the sources at hand state: the CU-Net
paper's summary ("two branches to learn two tasks separately, one for tumor tissue
classification and the other for tumor boundary classification", and that it keeps the
traditional FCN's "series of up-samplings after convolution"), and the BFCN paper's introduction
(a 2D FCN on multi-modal MRI slices, trained end to end, up-sampling or deconvolution layers back
to the input size). The BFCN paper's method section was not available, so everything below that
goes beyond those sentences is a choice, each a constructor argument or a ``loss.`` value of the
recipe: a shared FCN down-sampling path feeding a tissue branch supervised by the label map and a
boundary branch supervised by the label map's boundaries, the boundary branch refining the
tissue prediction through a fusion layer, all three outputs trained jointly.

* Shared encoder: ``levels`` VGG-style levels of ``convs_per_level`` 3x3 conv-BN-ReLU layers,
  ``base_width * 2**i`` channels at level ``i`` (64/128/256/512, VGG's widths), 2x2 max
  pooling between levels (an FCN down-sampling path). Inputs are zero-padded to multiples of
  ``2**(levels - 1)``.
* Branches (FCN-style multi-level up-sampling): for each branch, every one of the deepest
  ``side_levels`` encoder levels gets a 3x3 conv-BN-ReLU to ``branch_width`` channels, a
  transposed convolution with kernel = stride = the level's down-sampling factor back to the
  input resolution (none at full resolution), and the up-sampled maps are summed; a 1x1
  convolution then gives the branch's logits: tissue = the 4 internal labels, boundary = 2
  classes (boundary or not).
* Fusion: the summed features of both branches are concatenated and pass a 3x3 conv-BN-ReLU
  (``branch_width``) and a 1x1 convolution to the 4 labels: the boundary branch refines the
  tissue prediction. The fused logits are the network's segmentation (``region_probabilities``
  uses them).
* Loss (:class:`cascadeseg.losses.composite.BFCNLoss`): cross-entropy of the tissue and fused
  outputs against the labels plus ``loss.boundary_weight`` (1) times the cross-entropy of the
  boundary output against label boundaries ``loss.boundary_width`` (2) pixels wide
  (:func:`cascadeseg.losses.composite.label_boundaries`), each over the brain.
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
from cascadeseg.models.outputs import BFCNOutput
from cascadeseg.models.registry import register


class _Branch(nn.Module):
    """Multi-level up-sampling branch: ``[(B, w_i, H/2^i, W/2^i)] -> (B, width, H, W)`` summed."""

    def __init__(self, level_widths: list[int], factors: list[int], width: int) -> None:
        super().__init__()
        self.sides = nn.ModuleList()
        for channels, factor in zip(level_widths, factors):
            layers: list[nn.Module] = [ConvNormAct(channels, width, spatial_dims=2)]
            if factor > 1:
                layers.append(conv_transpose(2, width, width, factor))
            self.sides.append(nn.Sequential(*layers))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.sides[0](features[0])
        for side, f in zip(self.sides[1:], features[1:]):
            out = out + side(f)
        return out


@register("bfcn")
class BFCN(nn.Module):
    """Boundary-aware FCN for 2D slices (see the module docstring for the layout).

    Args:
        in_channels: 4 modalities of one axial slice (times ``2 * context + 1`` with neighbours).
        out_channels: tissue classes (4 internal labels).
        boundary_channels: boundary classes (2: not boundary, boundary).
        base_width: channels of the first encoder level; level ``i`` has ``base_width * 2**i``.
        levels: encoder levels (``levels - 1`` poolings).
        convs_per_level: 3x3 conv-BN-ReLU layers per encoder level.
        side_levels: how many of the deepest encoder levels feed each branch (``levels``: all).
        branch_width: channels of the branches' and the fusion's features.

    ``(B, in_channels, H, W) ->`` :class:`BFCNOutput`, any ``H, W``.
    """

    spatial_dims = 2
    output_kind = "bfcn"

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 4,
        boundary_channels: int = 2,
        base_width: int = 64,
        levels: int = 4,
        convs_per_level: int = 2,
        side_levels: int = 4,
        branch_width: int = 64,
    ) -> None:
        super().__init__()
        if levels < 1 or convs_per_level < 1 or not 1 <= side_levels <= levels:
            raise ValueError("need levels >= 1, convs_per_level >= 1, 1 <= side_levels <= levels")
        self.in_channels = in_channels
        self.size_multiple = 2 ** (levels - 1)
        widths = [base_width * 2**i for i in range(levels)]
        self.pool = max_pool(2)
        self.encoder = nn.ModuleList()
        for i, width in enumerate(widths):
            cin = in_channels if i == 0 else widths[i - 1]
            layers = [ConvNormAct(cin, width, spatial_dims=2)]
            layers += [
                ConvNormAct(width, width, spatial_dims=2) for _ in range(convs_per_level - 1)
            ]
            self.encoder.append(nn.Sequential(*layers))
        self.first_side = levels - side_levels
        side_widths = widths[self.first_side :]
        factors = [2**i for i in range(self.first_side, levels)]
        self.tissue_branch = _Branch(side_widths, factors, branch_width)
        self.boundary_branch = _Branch(side_widths, factors, branch_width)
        self.tissue_out = conv(2, branch_width, out_channels, 1)
        self.boundary_out = conv(2, branch_width, boundary_channels, 1)
        self.fusion = nn.Sequential(
            ConvNormAct(2 * branch_width, branch_width, spatial_dims=2),
            conv(2, branch_width, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> BFCNOutput:
        x, crop = pad_to_multiple(x, self.size_multiple)
        features = []
        for i, level in enumerate(self.encoder):
            x = level(x if i == 0 else self.pool(x))
            features.append(x)
        sides = features[self.first_side :]
        tissue = self.tissue_branch(sides)
        boundary = self.boundary_branch(sides)
        fused = self.fusion(torch.cat([tissue, boundary], dim=1))
        return BFCNOutput(
            crop_to(self.tissue_out(tissue), crop),
            crop_to(self.boundary_out(boundary), crop),
            crop_to(fused, crop),
        )
