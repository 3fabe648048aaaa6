"""Small blocks the networks of both papers are assembled from (2D or 3D by ``spatial_dims``).

Shapes: tensors are ``(B, C, *spatial)`` with ``len(spatial) == spatial_dims`` (``(B, C, H, W)``
for 2D, ``(B, C, X, Y, Z)`` for 3D). Every block keeps the spatial size unless it says otherwise.

* :class:`PreActResBlock`: GN, ReLU, conv3, GN, ReLU, conv3, + identity (two-stage paper,
  section 2.2 and Table 1; He et al. 2016, "Identity mappings").
* :class:`ResidualUnit`: conv-BN-ReLU, conv-BN, + identity or 1x1 projection, ReLU (CU-Net
  paper, section 2.1: "a residual block stacked by two 3x3 convolution blocks").
* :class:`DownConv`: 3x3(x3) convolution with stride 2 (two-stage paper, EnDown).
* :class:`UpBlock`: 1x1(x1) convolution then 2x upsampling by a 2x2(x2) stride-2 transposed
  convolution, or by (bi/tri)linear interpolation (two-stage paper, DeUp; section 2.3).
* :func:`pad_to_multiple` / :func:`crop_to`: whole-image inputs of any size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_DROPOUT: dict[int, type[nn.Module]] = {2: nn.Dropout2d, 3: nn.Dropout3d}
_MAX_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_LINEAR_MODE: dict[int, str] = {2: "bilinear", 3: "trilinear"}


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    bias: bool = True,
    dilation: int = 1,
) -> nn.Module:
    """A ``kernel_size``-wide convolution with 'same' padding (output size = input / stride).

    Bias defaults to on, as PyTorch's own default and the papers' PyTorch code. ``dilation``
    spreads the kernel (DRN); the padding grows with it, so the size rule holds.
    """
    return _CONV[_check_dims(spatial_dims)](
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        bias=bias,
    )


def conv_transpose(
    spatial_dims: int, in_channels: int, out_channels: int, factor: int = 2
) -> nn.Module:
    """Transposed convolution with kernel = stride = ``factor``: spatial size times ``factor``."""
    return _CONV_T[_check_dims(spatial_dims)](
        in_channels, out_channels, kernel_size=factor, stride=factor
    )


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    """``BatchNorm2d`` / ``BatchNorm3d``."""
    return _BATCH_NORM[_check_dims(spatial_dims)](channels)


def dropout(spatial_dims: int, p: float) -> nn.Module:
    """Channel-wise (spatial) dropout, ``Dropout2d`` / ``Dropout3d``, as Myronenko's network."""
    return _DROPOUT[_check_dims(spatial_dims)](p)


def max_pool(spatial_dims: int) -> nn.Module:
    """2x2(x2) max pooling with stride 2 (Ronneberger et al.'s U-Net downsampling)."""
    return _MAX_POOL[_check_dims(spatial_dims)](kernel_size=2, stride=2)


def _use_checkpoint(enabled: bool, module: nn.Module, x: torch.Tensor) -> bool:
    # Checkpointing only saves memory when a backward pass will follow; in eval mode or under
    # no_grad it would only cost time.
    return enabled and module.training and torch.is_grad_enabled() and x.requires_grad


class PreActResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv3(relu(gn(conv3(relu(gn(x))))))``.

    Two-stage paper, section 2.2 ("two 3x3x3 convolutions with Group Normalization with group
    size of 8 and ReLU, followed by additive identity skip connection"); we read "group size of 8"
    as 8 groups, as Myronenko's network and MONAI's SegResNet do.

    Args:
        channels: input = output channels.
        spatial_dims: 2 or 3.
        norm_groups: groups of each ``GroupNorm``.
        checkpointing: recompute the block's activations in backward instead of storing them
            (``torch.utils.checkpoint``; the paper needed it to fit 12 GB, section 3.2).

    Shapes: ``(B, channels, *S) -> (B, channels, *S)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        norm_groups: int = 8,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, channels)
        self.conv1 = conv(spatial_dims, channels, channels, 3)
        self.norm2 = nn.GroupNorm(norm_groups, channels)
        self.conv2 = conv(spatial_dims, channels, channels, 3)
        self.checkpointing = checkpointing

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_checkpoint(self.checkpointing, self, x):
            residual = checkpoint(self._residual, x, use_reentrant=False)
        else:
            residual = self._residual(x)
        return x + residual


class ResidualUnit(nn.Module):
    """CU-Net basic unit: conv-BN-ReLU, conv-BN, + shortcut, ReLU (post-activation).

    CU-Net paper, section 2.1: "each basic unit ... is constructed by a residual block stacked by
    two 3x3 convolution blocks", a convolution block being conv-BN-ReLU. We use the original
    post-activation ordering of He et al. (2016a) rather than pre-activation: the paper's blocks
    put the normalisation after the convolution, and each unit's output feeds max pooling,
    skip concatenations and auxiliary heads, which expect normalised, activated features rather
    than a raw residual sum. The shortcut is the identity when the channels match, otherwise a
    1x1 convolution + BN projection (He et al.'s option B), since nearly every U-Net unit changes
    its width. With ``dilation > 1`` both 3x3 convolutions are dilated: the basic block of
    Yu et al.'s dilated residual networks (DRN).

    Shapes: ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, spatial_dims: int = 2, dilation: int = 1
    ) -> None:
        super().__init__()
        # No conv bias before BatchNorm: BN's shift makes it redundant.
        self.conv1 = conv(spatial_dims, in_channels, out_channels, 3, bias=False, dilation=dilation)
        self.norm1 = batch_norm(spatial_dims, out_channels)
        self.conv2 = conv(
            spatial_dims, out_channels, out_channels, 3, bias=False, dilation=dilation
        )
        self.norm2 = batch_norm(spatial_dims, out_channels)
        self.shortcut: nn.Module
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                conv(spatial_dims, in_channels, out_channels, 1, bias=False),
                batch_norm(spatial_dims, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ConvNormAct(nn.Sequential):
    """``conv3 -> norm -> ReLU`` (plain U-Net layer). ``norm`` is ``"batch"`` or ``"group"``.

    ``dilation``: of the 3x3 convolution (DRN), padded to keep the size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int,
        norm: str = "batch",
        norm_groups: int = 8,
        dilation: int = 1,
    ) -> None:
        norm_layer = (
            batch_norm(spatial_dims, out_channels)
            if norm == "batch"
            else nn.GroupNorm(norm_groups, out_channels)
        )
        super().__init__(
            conv(spatial_dims, in_channels, out_channels, 3, bias=False, dilation=dilation),
            norm_layer,
            nn.ReLU(inplace=True),
        )


class DownConv(nn.Module):
    """Stride-2 3x3(x3) convolution: halves each side, ``in_channels -> out_channels``.

    Two-stage paper, Table 1 (EnDown: "Conv3 stride 2"), doubling the channels. Shapes:
    ``(B, in, *S) -> (B, out, *S/2)`` (sides must be even).
    """

    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = conv(spatial_dims, in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpBlock(nn.Module):
    """1x1(x1) convolution to ``out_channels``, then 2x upsampling.

    Two-stage paper, section 2.2 ("Before up-sampling, we use 1x1x1 convolutions to reduce the
    number of features by a factor of 2 ... a deconvolution with kernel size 2x2x2 and a stride
    of 2") and section 2.3 (the second decoder uses trilinear interpolation instead).

    Args:
        mode: ``"transposed"`` (2x2(x2) stride-2 transposed conv, ``out -> out`` channels) or
            ``"interpolate"`` (bi/trilinear, ``align_corners=False``, no weights).

    Shapes: ``(B, in, *S) -> (B, out, *2S)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        mode: str = "transposed",
    ) -> None:
        super().__init__()
        if mode not in ("transposed", "interpolate"):
            raise ValueError(f"mode must be 'transposed' or 'interpolate', got {mode!r}")
        self.mode = mode
        self.spatial_dims = spatial_dims
        self.reduce = conv(spatial_dims, in_channels, out_channels, 1)
        self.up: nn.Module | None = (
            conv_transpose(spatial_dims, out_channels, out_channels, 2)
            if mode == "transposed"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        if self.up is not None:
            return self.up(x)
        return F.interpolate(
            x, scale_factor=2.0, mode=_LINEAR_MODE[self.spatial_dims], align_corners=False
        )


def pad_amounts(size: Sequence[int], multiple: int) -> list[tuple[int, int]]:
    """Zero-padding ``(before, after)`` per side so every side becomes a multiple of ``multiple``.

    The padding is split evenly (the extra voxel goes after), so the image stays centred.

    >>> pad_amounts((5, 8, 9), 8)
    [(1, 2), (0, 0), (3, 4)]
    """
    out = []
    for side in size:
        total = (-int(side)) % multiple
        out.append((total // 2, total - total // 2))
    return out


def pad_to_multiple(
    x: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """Zero-pad the spatial sides of ``(B, C, *S)`` up to multiples of ``multiple``.

    Zero is the background value of z-scored inputs (the brain is normalised, outside is 0).

    Returns:
        the padded tensor and the index that crops an output of the padded size back to ``S``
        (``None`` when nothing was padded).
    """
    amounts = pad_amounts(x.shape[2:], multiple)
    if not any(before or after for before, after in amounts):
        return x, None
    # F.pad takes the last dimension first.
    flat = [v for before_after in reversed(amounts) for v in before_after]
    spatial = (slice(before, before + side) for (before, _), side in zip(amounts, x.shape[2:]))
    index = (slice(None), slice(None), *spatial)
    return F.pad(x, flat), index


def crop_to(x: torch.Tensor, index: tuple[slice, ...] | None) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on an output of the padded size (``None``: unchanged)."""
    return x if index is None else x[index]
