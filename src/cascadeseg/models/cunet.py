"""CU-Net: two 2D U-Nets in cascade with between-net connections (Liu et al., BraTS 2017).

Section 2.1 and Fig. 1 of the CU-Net paper. Choices where the text is silent (each a parameter):

* Widths: a standard U-Net's (Ronneberger et al.), ``base_width`` 64 -> 64/128/256/512 on the
  four encoder levels and 1024 at the bottom, the same in both nets. Fig. 1 prints the channel
  numbers but its image is not in our copy of the paper; the standard U-Net is what the paper
  compares against (its Table 1), so the cascade at the same widths is the like-for-like choice.
* Levels: "4 down / 4 up": encoder units at H, H/2, H/4, H/8, a bottom unit at H/16, and four
  decoding layers at H/8, H/4, H/2, H. Down by 2x2 max pooling and up by 2x2 stride-2 transposed
  convolutions halving the channels, skips by concatenation (Ronneberger's U-Net).
* Basic unit: :class:`~cascadeseg.models.blocks.ResidualUnit` (two conv-BN-ReLU 3x3 blocks with
  a shortcut; see there for the post-activation choice).
* Between-net connections: decoding layer ``k`` of U-Net 1 (at H/2^(k-1)) is concatenated into
  encoding layer ``k`` of U-Net 2 at the same resolution (section 2.1). For ``k = 1`` this is
  U-Net 2's input: U-Net 1's last decoder features. The paper sends U-Net 2 only "the extracted
  features" of U-Net 1; ``unet2_image_input`` (default off, as the paper) also concatenates the
  image into U-Net 2's input (4 more channels; auto-context as in the two-stage paper), an option
  beyond the paper.
* Supervision (section 2.1 and the Fig. 1 caption): 2 branch supervisions, 1x1 convs on each
  net's last (full-resolution) decoding layer, and 8 auxiliary supervisions, 4 per net, each "a
  deconvolution ... to up-sample the feature maps to the same resolution as input" then a 1x1
  conv. Every auxiliary head thus up-samples, so with ``aux_from="coarse"`` (default) the 4 heads
  of a net attach to its 4 coarser-than-input stages where decoding happens: the bottom unit
  (H/16, where the expanding path starts) and the decoding layers at H/8, H/4 and H/2, each a
  transposed conv with kernel = stride = 16, 8, 4, 2 (``aux_width`` channels), then a 1x1 conv
  to the target's channels; the full-resolution decoding layer is supervised by its branch
  output only. ``aux_from="decoders"`` attaches them to the 4 decoding layers instead (H/8 ...
  H; the full-resolution head is then a 1x1 conv alone, a second copy of the branch head).
  U-Net 1 predicts whole tumour vs rest (2 channels), U-Net 2 the internal labels 0-3 (4
  channels). Aux outputs exist in training mode only (or when ``forward(x, aux=True)``).
"""

from __future__ import annotations

import torch
from torch import nn

from cascadeseg.models.blocks import (
    ResidualUnit,
    conv,
    conv_transpose,
    crop_to,
    max_pool,
    pad_to_multiple,
)
from cascadeseg.models.outputs import CUNetOutput
from cascadeseg.models.registry import register

_MODALITIES = 4


class AuxHead(nn.Module):
    """Auxiliary supervision branch: upsample by ``factor`` (transposed conv), then 1x1 conv.

    ``(B, in, H/f, W/f) -> (B, out, H, W)``; with ``factor == 1`` only the 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, *, factor: int, width: int) -> None:
        super().__init__()
        self.up: nn.Module | None = None
        if factor > 1:
            self.up = conv_transpose(2, in_channels, width, factor)
            in_channels = width
        self.out = conv(2, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            x = self.up(x)
        return self.out(x)


class UNet2D(nn.Module):
    """One residual 2D U-Net of the cascade, with optional extra inputs at every encoder level.

    Args:
        in_channels: input channels of the first encoding layer.
        widths: channels of the encoder levels, shallowest first, the last being the bottom
            (e.g. 64/128/256/512/1024).
        extra_channels: channels concatenated into encoding layers 2..len(widths)-1 (between-net
            connections; 0 = none), shallowest first.

    ``forward(x, extras)`` returns the bottom unit's and the decoding layers' features, deepest
    first: ``[(B, widths[-1], H/16, W/16), (B, widths[-2], H/8, W/8), ..., (B, widths[0], H, W)]``
    for 5 widths.
    """

    def __init__(
        self, *, in_channels: int, widths: list[int], extra_channels: list[int] | None = None
    ) -> None:
        super().__init__()
        depth = len(widths) - 1
        extra = extra_channels or [0] * (depth - 1)
        self.depth = depth
        self.pool = max_pool(2)
        self.encoders = nn.ModuleList()
        for level, width in enumerate(widths):
            cin = in_channels if level == 0 else widths[level - 1]
            if 0 < level < depth:
                cin += extra[level - 1]
            self.encoders.append(ResidualUnit(cin, width, spatial_dims=2))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            self.ups.append(conv_transpose(2, widths[level + 1], widths[level], 2))
            self.decoders.append(ResidualUnit(2 * widths[level], widths[level], spatial_dims=2))

    def forward(
        self, x: torch.Tensor, extras: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
                if extras is not None and level < self.depth:
                    x = torch.cat([x, extras[level - 1]], dim=1)
            x = encoder(x)
            skips.append(x)
        decoded = [x]
        for i, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
            x = decoder(torch.cat([up(x), skips[self.depth - 1 - i]], dim=1))
            decoded.append(x)
        return decoded


# Checkpoints written before aux_from existed had their heads on the decoding layers.
@register("cunet", saved_defaults={"aux_from": "decoders"})
class CUNet(nn.Module):
    """Cascaded U-Net (CU-Net, Liu et al. 2018), section 2.1 and Fig. 1.

    Args:
        slice_context: neighbouring axial slices on each side stacked as extra channels (0: the
            four modalities of one slice, as the paper); ``in_channels = 4 * (2 * slice_context
            + 1)``.
        base_width: channels of the first level (64, a standard U-Net); level ``i`` has
            ``base_width * 2**i``.
        depth: downsampling steps per U-Net (4); inputs are padded to multiples of ``2**depth``.
        wt_channels: U-Net 1's output channels (2: rest, whole tumour).
        label_channels: U-Net 2's output channels (4: internal labels 0..3).
        unet2_image_input: U-Net 2's first layer also sees the image (not in the paper; see the
            module docstring).
        aux_width: channels of the auxiliary heads' transposed convs (``None``: ``base_width``).
        aux_from: ``"coarse"`` (the bottom unit and the decoding layers at H/8..H/2, each head
            up-sampling, as the paper) or ``"decoders"`` (the 4 decoding layers, H/8..H).

    Input ``(B, in_channels, H, W)``; output :class:`CUNetOutput` (``aux=()`` in eval mode).
    """

    spatial_dims = 2
    output_kind = "cunet"

    def __init__(
        self,
        *,
        slice_context: int = 0,
        base_width: int = 64,
        depth: int = 4,
        wt_channels: int = 2,
        label_channels: int = 4,
        unet2_image_input: bool = False,
        aux_width: int | None = None,
        aux_from: str = "coarse",
    ) -> None:
        super().__init__()
        if slice_context < 0 or depth < 1:
            raise ValueError("slice_context must be >= 0 and depth >= 1")
        if aux_from not in ("coarse", "decoders"):
            raise ValueError(f"aux_from must be 'coarse' or 'decoders', got {aux_from!r}")
        self.in_channels = _MODALITIES * (2 * slice_context + 1)
        self.unet2_image_input = unet2_image_input
        self.size_multiple = 2**depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        stage_widths = widths[::-1]  # bottom unit, then the decoding layers, deepest first
        self.unet1 = UNet2D(in_channels=self.in_channels, widths=widths)
        # Between-net connections: U-Net 1's decoding layers 2..depth feed U-Net 2's encoding
        # layers at the same resolution; its full-resolution layer is U-Net 2's input.
        self.unet2 = UNet2D(
            in_channels=widths[0] + (self.in_channels if unet2_image_input else 0),
            widths=widths,
            extra_channels=widths[1:depth],
        )
        self.branch1 = conv(2, widths[0], wt_channels, 1)
        self.branch2 = conv(2, widths[0], label_channels, 1)
        head_width = aux_width or base_width
        # Stage i of the features (deepest first) is at H / 2**(depth - i).
        self.aux_stages = list(range(depth)) if aux_from == "coarse" else list(range(1, depth + 1))
        factors = [2 ** (depth - i) for i in self.aux_stages]
        self.aux1 = nn.ModuleList(
            AuxHead(stage_widths[i], wt_channels, factor=f, width=head_width)
            for i, f in zip(self.aux_stages, factors)
        )
        self.aux2 = nn.ModuleList(
            AuxHead(stage_widths[i], label_channels, factor=f, width=head_width)
            for i, f in zip(self.aux_stages, factors)
        )

    def training_only_modules(self) -> list[nn.Module]:
        """Modules used only in training mode (the auxiliary heads)."""
        return [self.aux1, self.aux2]

    def forward(self, x: torch.Tensor, *, aux: bool | None = None) -> CUNetOutput:
        """``aux``: compute the 8 auxiliary outputs (``None``: in training mode only)."""
        x, crop = pad_to_multiple(x, self.size_multiple)
        stages1 = self.unet1(x)
        first = torch.cat([x, stages1[-1]], dim=1) if self.unet2_image_input else stages1[-1]
        # Deepest first; U-Net 2's encoding layers 2..depth take the decoding layers at
        # H/2..H/2^(depth-1), shallowest first.
        extras = stages1[-2:0:-1]
        stages2 = self.unet2(first, extras)
        branch1 = crop_to(self.branch1(stages1[-1]), crop)
        branch2 = crop_to(self.branch2(stages2[-1]), crop)
        aux_out: tuple[torch.Tensor, ...] = ()
        if self.training if aux is None else aux:
            aux_out = tuple(
                crop_to(head(stages[i]), crop)
                for heads, stages in ((self.aux1, stages1), (self.aux2, stages2))
                for head, i in zip(heads, self.aux_stages)
            )
        return CUNetOutput(branch1, branch2, aux_out)
