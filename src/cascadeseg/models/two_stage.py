"""The two-stage cascaded U-Net (Jiang et al., BraTS 2019 winner), 3D.

Stage 1 follows Table 1 of the paper exactly (names in brackets are the module names here)::

    Input       4 x 128^3
    InitConv    Conv3 (4 -> 16), Dropout 0.2                       [encoder.init_conv]
    EnBlock1    1 pre-activation residual block, 16 x 128^3         [encoder.en_block1]
    EnDown1     Conv3 stride 2, 16 -> 32, 64^3                      [encoder.en_down1]
    EnBlock2    2 blocks, 32 x 64^3                                 [encoder.en_block2]
    EnDown2     Conv3 stride 2, 32 -> 64, 32^3                      [encoder.en_down2]
    EnBlock3    2 blocks, 64 x 32^3                                 [encoder.en_block3]
    EnDown3     Conv3 stride 2, 64 -> 128, 16^3                     [encoder.en_down3]
    EnBlock4    4 blocks, 128 x 16^3                                [encoder.en_block4]
    DeUp3       Conv1 128 -> 64, ConvTranspose 2^3, + EnBlock3      [decoder.de_up3]
    DeBlock3    1 block, 64 x 32^3                                  [decoder.de_block3]
    DeUp2       Conv1, ConvTranspose, + EnBlock2 -> 32 x 64^3       [decoder.de_up2]
    DeBlock2    1 block                                             [decoder.de_block2]
    DeUp1       Conv1, ConvTranspose, + EnBlock1 -> 16 x 128^3      [decoder.de_up1]
    DeBlock1    1 block                                             [decoder.de_block1]
    EndConv     Conv1 16 -> 3 ([WT, TC, ET] logits)                 [decoder.end_conv]

(The table prints the last up block as a second "DeUp2"; it is the first level's, DeUp1.)

Stage 2 (section 2.3; its Table 2 is missing from the text): the same encoder with the initial
filters doubled (32/64/128/256), fed with the 4 modalities concatenated with stage 1's 3 sigmoid
probabilities, and two decoders of identical structure: one upsampling by transposed convolutions
(``stage2.decoder``, used at inference), one by trilinear interpolation (``stage2.interp_decoder``,
training only, a regulariser of the shared encoder). The cascade is trained end-to-end: stage 1's
probabilities are not detached, so stage 2's loss reaches stage 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cascadeseg.models.blocks import (
    DownConv,
    PreActResBlock,
    UpBlock,
    conv,
    crop_to,
    dropout,
    pad_to_multiple,
)
from cascadeseg.models.outputs import TwoStageOutput
from cascadeseg.models.registry import register


def _res_blocks(count: int, channels: int, norm_groups: int, checkpointing: bool) -> nn.Sequential:
    return nn.Sequential(
        *(
            PreActResBlock(
                channels, spatial_dims=3, norm_groups=norm_groups, checkpointing=checkpointing
            )
            for _ in range(count)
        )
    )


def _checked_blocks(blocks: Sequence[int], base_width: int, norm_groups: int) -> tuple[int, ...]:
    """``blocks`` as a tuple of ints, after checking the arguments every stage network shares.

    Raises:
        ValueError: a block count below 1, no level, or ``base_width`` not divisible by
            ``norm_groups``.
    """
    counts = tuple(int(b) for b in blocks)
    if len(counts) < 1 or min(counts) < 1:
        raise ValueError(f"blocks must be positive counts, got {list(counts)}")
    if base_width % norm_groups:
        raise ValueError(f"base_width {base_width} is not divisible by norm_groups {norm_groups}")
    return counts


class Encoder(nn.Module):
    """Residual encoder of one stage (Table 1, "Encoder" rows).

    Level ``i`` (1-based) has ``width * 2**(i-1)`` channels, ``blocks[i-1]`` residual blocks and
    runs at ``1 / 2**(i-1)`` of the input size. Returns the feature of every level, shallowest
    first: ``[(B, w, S), (B, 2w, S/2), (B, 4w, S/4), (B, 8w, S/8)]`` for ``blocks`` of length 4.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        width: int,
        blocks: Sequence[int],
        dropout_p: float,
        norm_groups: int,
        checkpointing: bool,
    ) -> None:
        super().__init__()
        self.init_conv = nn.Sequential(conv(3, in_channels, width, 3), dropout(3, dropout_p))
        self.levels = len(blocks)
        for i, count in enumerate(blocks, start=1):
            channels = width * 2 ** (i - 1)
            if i > 1:
                self.add_module(
                    f"en_down{i - 1}", DownConv(channels // 2, channels, spatial_dims=3)
                )
            self.add_module(
                f"en_block{i}", _res_blocks(count, channels, norm_groups, checkpointing)
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.init_conv(x)
        for i in range(1, self.levels + 1):
            if i > 1:
                x = self.get_submodule(f"en_down{i - 1}")(x)
            x = self.get_submodule(f"en_block{i}")(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Decoder of one stage (Table 1, "Decoder" rows), one residual block per level.

    Per level from the deepest: ``de_up{l}`` (1x1x1 conv halving the channels, then 2x
    upsampling by ``mode``), add the encoder feature of that level, ``de_block{l}``; finally
    ``end_conv`` (1x1x1) to ``out_channels`` logits. Input: the encoder's feature list; output
    ``(B, out_channels, S)``.
    """

    def __init__(
        self,
        *,
        width: int,
        levels: int,
        out_channels: int,
        norm_groups: int,
        checkpointing: bool,
        mode: str,
    ) -> None:
        super().__init__()
        self.levels = levels
        for level in range(levels - 1, 0, -1):
            channels = width * 2 ** (level - 1)
            self.add_module(
                f"de_up{level}", UpBlock(channels * 2, channels, spatial_dims=3, mode=mode)
            )
            self.add_module(
                f"de_block{level}", _res_blocks(1, channels, norm_groups, checkpointing)
            )
        self.end_conv = conv(3, width, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for level in range(self.levels - 1, 0, -1):
            # Shortcuts join by element-wise summation (section 2.2), not concatenation.
            x = self.get_submodule(f"de_up{level}")(x) + features[level - 1]
            x = self.get_submodule(f"de_block{level}")(x)
        return self.end_conv(x)


class Stage(nn.Module):
    """One U-Net of the cascade: an encoder and a transposed-conv decoder, plus optionally an
    interpolation decoder on the same encoder features (stage 2, training only)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        width: int,
        blocks: Sequence[int],
        dropout_p: float,
        norm_groups: int,
        checkpointing: bool,
        interp_decoder: bool,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels,
            width=width,
            blocks=blocks,
            dropout_p=dropout_p,
            norm_groups=norm_groups,
            checkpointing=checkpointing,
        )
        decoder_args = dict(
            width=width,
            levels=len(blocks),
            out_channels=out_channels,
            norm_groups=norm_groups,
            checkpointing=checkpointing,
        )
        self.decoder = Decoder(**decoder_args, mode="transposed")  # type: ignore[arg-type]
        self.interp_decoder: Decoder | None = (
            Decoder(**decoder_args, mode="interpolate")  # type: ignore[arg-type]
            if interp_decoder
            else None
        )

    def forward(
        self, x: torch.Tensor, *, with_interp: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, C, S) -> ((B, out, S) logits, interpolation-decoder logits or None)``.

        The interpolation decoder runs when ``with_interp`` (default: in training mode only).
        """
        features = self.encoder(x)
        out = self.decoder(features)
        run_interp = self.training if with_interp is None else with_interp
        interp = (
            self.interp_decoder(features)
            if self.interp_decoder is not None and run_interp
            else None
        )
        return out, interp


def mean_probability_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The logits of the mean of ``sigmoid(a)`` and ``sigmoid(b)`` (same shapes).

    ``log(p / (1 - p))`` with ``p = (sigmoid(a) + sigmoid(b)) / 2``, computed from log-sigmoids
    so that confident logits (|x| of tens) stay finite and exact.
    """
    log_p = _logaddexp(F.logsigmoid(a), F.logsigmoid(b))
    log_q = _logaddexp(F.logsigmoid(-a), F.logsigmoid(-b))
    return log_p - log_q


def _logaddexp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log(exp(x) + exp(y))`` from operations every export backend has (ONNX has no
    ``logaddexp``)."""
    return torch.maximum(x, y) + torch.log1p(torch.exp(-(x - y).abs()))


@register("two_stage")
class TwoStageUNet(nn.Module):
    """Two-stage cascaded U-Net (Jiang et al. 2019), sections 2.1-2.3 and Table 1.

    Args:
        in_channels: image channels (4 modalities: FLAIR, T1, T1ce, T2).
        out_channels: region logits (3: [WT, TC, ET]).
        base_width: stage 1's initial filters (16); stage 2 uses ``stage2_width_factor`` times it.
        blocks: residual blocks per encoder level (1, 2, 2, 4); its length is the number of
            levels, and inputs are padded to multiples of ``2 ** (len(blocks) - 1)``.
        dropout: dropout rate after each stage's initial convolution (0.2).
        norm_groups: GroupNorm groups (8).
        checkpointing: gradient checkpointing of every residual block (section 3.2).
        stage2_width_factor: stage 2's width relative to stage 1 (2, section 2.3).
        average_decoders: in eval mode, stage 2's output is the mean of its two decoders'
            probabilities (as logits) instead of the transposed-convolution decoder's alone
            (``False``, the paper: "the interpolation decoder is not used during the inference
            phase"). Not the paper's; the CPU recipe's choice, measured in docs/results.md.

    Input ``(B, in_channels, X, Y, Z)`` (any size). Output in training mode:
    :class:`TwoStageOutput`; in eval mode: ``(B, out_channels, X, Y, Z)`` stage-2 logits from the
    transposed-convolution decoder (the interpolation decoder does not run), or with
    ``average_decoders`` the logits of both decoders' mean probability.

    While :attr:`stage1_only` is set (:meth:`set_stage1_only`; the trainer's
    ``train.stage1_first`` phase), stage 2 does not run and the output in both modes is stage 1's
    ``(B, out_channels, X, Y, Z)`` logits.
    """

    spatial_dims = 3
    output_kind = "regions"

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 3,
        base_width: int = 16,
        blocks: Sequence[int] = (1, 2, 2, 4),
        dropout: float = 0.2,
        norm_groups: int = 8,
        checkpointing: bool = False,
        stage2_width_factor: int = 2,
        average_decoders: bool = False,
    ) -> None:
        super().__init__()
        blocks = _checked_blocks(blocks, base_width, norm_groups)
        self.average_decoders = bool(average_decoders)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = 2 ** (len(blocks) - 1)
        common = dict(
            out_channels=out_channels,
            blocks=blocks,
            dropout_p=dropout,
            norm_groups=norm_groups,
            checkpointing=checkpointing,
        )
        self.stage1 = Stage(
            in_channels=in_channels,
            width=base_width,
            interp_decoder=False,
            **common,  # type: ignore[arg-type]
        )
        # Auto-context: stage 2 sees the image and stage 1's probabilities (section 2.1).
        self.stage2 = Stage(
            in_channels=in_channels + out_channels,
            width=base_width * stage2_width_factor,
            interp_decoder=True,
            **common,  # type: ignore[arg-type]
        )

        #: Train stage 1 alone (stage 2 skipped); see :meth:`set_stage1_only`.
        self.stage1_only = False

    def training_only_modules(self) -> list[nn.Module]:
        """Modules used only in training mode (excluded from inference parameter counts)."""
        if self.average_decoders:
            return []
        return [m for m in (self.stage2.interp_decoder,) if m is not None]

    def set_stage1_only(self, flag: bool) -> None:
        """Run stage 1 alone (``True``) or the whole cascade (``False``, the default).

        Stage-wise training of a cascade, as nnU-Net trains its low-resolution stage before the
        stage that refines it: with the flag the forward pass returns stage 1's logits and stage
        2 gets no gradient. The flag is not part of the weights (``state_dict``).
        """
        self.stage1_only = bool(flag)

    def forward(self, x: torch.Tensor) -> TwoStageOutput | torch.Tensor:
        x, crop = pad_to_multiple(x, self.size_multiple)
        stage1, _ = self.stage1(x)
        if self.stage1_only:
            return crop_to(stage1, crop)
        with_interp = self.training or self.average_decoders
        stage2, stage2_interp = self.stage2(
            torch.cat([x, torch.sigmoid(stage1)], dim=1), with_interp=with_interp
        )
        if not self.training:
            if self.average_decoders:
                assert stage2_interp is not None
                stage2 = mean_probability_logits(stage2, stage2_interp)
            return crop_to(stage2, crop)
        assert stage2_interp is not None
        return TwoStageOutput(
            crop_to(stage1, crop), crop_to(stage2, crop), crop_to(stage2_interp, crop)
        )


@register("two_stage_stage1")
class StageOneUNet(nn.Module):
    """Stage 1 of the cascade alone (Table 1): the "single U-Net" the cascade is compared with.

    The same module tree as :attr:`TwoStageUNet.stage1` (``stage1.encoder``, ``stage1.decoder``),
    so a cascade's stage-1 weights load into it with ``strict=True`` after dropping the
    ``stage2.*`` keys. Used by the two-stage study's "stage 1 alone" condition.

    Args:
        in_channels: image channels (4 modalities).
        out_channels: region logits (3: [WT, TC, ET]).
        base_width: initial filters (16 in the paper).
        blocks: residual blocks per encoder level (1, 2, 2, 4).
        dropout: dropout rate after the initial convolution (0.2).
        norm_groups: GroupNorm groups (8).
        checkpointing: gradient checkpointing of every residual block.

    Input ``(B, in_channels, X, Y, Z)`` (any size); output ``(B, out_channels, X, Y, Z)`` logits
    in both training and eval mode.
    """

    spatial_dims = 3
    output_kind = "regions"

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 3,
        base_width: int = 16,
        blocks: Sequence[int] = (1, 2, 2, 4),
        dropout: float = 0.2,
        norm_groups: int = 8,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        blocks = _checked_blocks(blocks, base_width, norm_groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = 2 ** (len(blocks) - 1)
        self.stage1 = Stage(
            in_channels=in_channels,
            out_channels=out_channels,
            width=base_width,
            blocks=blocks,
            dropout_p=dropout,
            norm_groups=norm_groups,
            checkpointing=checkpointing,
            interp_decoder=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, crop = pad_to_multiple(x, self.size_multiple)
        logits, _ = self.stage1(x)
        return crop_to(logits, crop)
