"""Torch datasets over preprocessed cases: random 3D crops and 2D axial slices.

Reproducibility: every item draws its randomness from ``np.random.default_rng([seed, epoch,
index])``, never from a global or per-worker generator. The same (seed, epoch, index) gives the
same sample whatever the number of loader workers, and a resumed run draws the same crops.

The epoch reaches the items in two ways: :meth:`set_epoch` on the dataset (used when items are
fetched with an integer index), and keys that carry it, ``(epoch, index, ...)``, handed to the
workers by a sampler (:mod:`cascadeseg.training.data` for training,
:func:`cascadeseg.data.loaders.make_loader` for a plain loader), so persistent workers (which
hold a copy of the dataset made at start) follow the epoch too.

Items are dicts of tensors:

* ``"image"``: ``(C, X, Y, Z)`` (3D) or ``(C, H, W)`` (2D) float32, z-scored modalities (with
  sequence dropout's ``mask`` fill followed by 4 availability channels,
  :mod:`cascadeseg.data.missing`);
* ``"label"``: ``(X, Y, Z)`` / ``(H, W)`` int64 internal labels (0 background, 1 NCR, 2 ED, 3 ET);
* ``"regions"``: ``(3, ...)`` float32 region masks ``[WT, TC, ET]``;
* ``"brain_mask"``: ``(...)`` bool;
* ``"case_index"``: int64 scalar, the position of the source case in ``cases``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cascadeseg.config_rules import FOREGROUND_SAMPLINGS
from cascadeseg.data import augment
from cascadeseg.data import case_balance as case_balance_
from cascadeseg.data.case import MODALITIES
from cascadeseg.data.labels import NUM_CLASSES, label_to_regions
from cascadeseg.data.missing import SequenceDropout
from cascadeseg.data.preprocess import Preprocessed
from cascadeseg.errors import InputError

#: A dataset key: an index, ``(epoch, index)``, ``(epoch, index, dropout_on)`` (0/1: whether
#: the item may lose sequences: the window ``data.sequence_dropout_start`` to ``_end``) or
#: ``(epoch, index, dropout_on, early)`` (1: a crop of the early, smaller size,
#: ``data.early_patch_size``).
Index = int | tuple[int, int] | tuple[int, int, int] | tuple[int, int, int, int]

#: ``mean / std`` of a modality's brain intensities for cases that do not record it (a
#: ``Preprocessed`` built by hand rather than by ``preprocess_case``; cache entries of older
#: formats are rebuilt). Measured 2.7-3.9 (mean 3.2) on synthetic cases at 2 mm.
DEFAULT_MEAN_OVER_STD = 3.0
_T1, _T1CE = MODALITIES.index("t1"), MODALITIES.index("t1ce")


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item: a function of (seed, epoch, index) only."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def _split_index(key: Index, epoch: int) -> tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (epoch, int(key))


def _dropout_on(key: Index) -> bool:
    """Whether the item of ``key`` may lose sequences (keys without the flag: yes)."""
    return not (isinstance(key, tuple) and len(key) > 2 and not key[2])


def _early_crop(key: Index) -> bool:
    """Whether the item of ``key`` is cropped at the early, smaller size (keys without the
    flag: no)."""
    return isinstance(key, tuple) and len(key) > 3 and bool(key[3])


def _require_labels(cases: Sequence[Preprocessed]) -> None:
    for case in cases:
        if case.label is None:
            raise InputError(f"{case.case_id}: a training case needs a label map")


def _drop_sequences(
    dropout: SequenceDropout | None, rng: np.random.Generator, image: np.ndarray, key: Index
) -> np.ndarray:
    """The sample's sequence dropout, drawn last from its generator (the crop and augmentation
    draw as without it); ``image`` unchanged without one. Outside the window (``key``'s flag
    off) nothing is dropped, but the ``mask`` fill still appends its (all present) channels."""
    if dropout is None:
        return image
    return dropout.apply(image, dropout.draw(rng) if _dropout_on(key) else ())


def _to_item(
    image: np.ndarray, label: np.ndarray, mask: np.ndarray, index: int, soft: np.ndarray | None
) -> dict[str, torch.Tensor]:
    """A training item; region targets ``soft / 255`` if given (``label_resampling: soft``)."""
    regions = label_to_regions(label) if soft is None else soft / np.float32(255)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
        "regions": torch.from_numpy(np.ascontiguousarray(regions, dtype=np.float32)),
        "brain_mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)),
        "case_index": torch.tensor(index, dtype=torch.int64),
    }


class CropDataset3D(Dataset):
    """Random 3D crops of preprocessed cases (two-stage paper, sec. 3.1).

    Item ``i`` of an epoch is a crop of case ``i % len(cases)``; with augmentation the crop is
    flipped on each axis with p = 0.5 and each channel shifted by U(-0.1, 0.1) standard
    deviations and scaled by U(0.9, 1.1). Region targets are the case's region fractions where
    it has them (``data.label_resampling: soft``), cropped and flipped alike.

    Args:
        cases: preprocessed cases with labels (memory-mapped cache entries: only crops read).
        patch_size: crop size ``(X, Y, Z)`` in voxels; volumes smaller than it are zero-padded.
        foreground_prob: probability that a crop is centred on a tumour voxel (0: uniform
            crops as in the paper; nnU-Net uses 1/3).
        foreground_sampling: ``"voxel"``: the centre drawn over all tumour voxels;
            ``"region"``: first a region the case has (WT, TC, ET), then one of its voxels
            (nnU-Net's per-class oversampling, :func:`augment.region_coordinates`).
        crop_overhang: fraction of the crop that may reach past each border of the volume
            (:func:`augment.draw_crop_start`; 0.5: crop centres uniform over the volume).
        crop_region: ``"brain"``: crops drawn in the preprocessed (brain-cropped) volume,
            widened by ``crop_overhang``; ``"volume"``: uniformly over the grid the volume was
            cropped from (``case.geometry.resampled_shape``, 240 x 240 x 155 for BraTS: the
            two-stage paper's random crops), see :meth:`crop_start`.
        augment: apply flips and intensity augmentation.
        seed: base seed.
        samples_per_epoch: items per epoch (``None``: one per case).
        flip_prob: probability of a flip on each axis.
        intensity_shift: half-range of the shift, in standard deviations.
        intensity_scale: range of the scale factor.
        bias_field_prob: probability that a crop is multiplied by a smooth random bias field
            (:func:`augment.draw_bias_field`; applied before the shift and scale).
        bias_field_strength: range of the standard deviation of the log field.
        bias_field_spacing_mm: distance between the field's control points (mm; converted
            with each case's voxel size).
        bias_field_groups: groups of channels that share one field (``augment.draw_bias_field``).
        bias_field_early_only: the field on the early crops (``early_patch_size``) alone.
        bias_field_offset: ``mean / std`` of a channel's brain intensities, used for cases
            whose preprocessing did not record it (``extra["mean_over_std"]``).
        compartment_contrast_prob: probability that a crop's tumour compartments (labels 1 to 3)
            each get their own intensity factor per channel
            (:func:`augment.compartment_log_field`; multiplied with the bias field, before the
            shift and scale).
        compartment_contrast: the factors are uniform in ``[1 - this, 1 + this]``.
        compartment_contrast_channels: how many channels, drawn per crop, get factors (0: all).
        enhancement_erase_prob: probability that a crop's enhancing tumour loses its enhancement
            and becomes non-enhancing core (:func:`augment.erase_enhancement`; before the fields).
        sequence_dropout: drop sequences of each crop and fill them
            (:class:`cascadeseg.data.missing.SequenceDropout`; with the ``mask`` fill the crop
            gets 4 availability channels); ``None``: off.
        case_balance: power ``p`` of the case weights ``1 / n_k ** p`` over kinds of tumour
            (enhancing or not, :mod:`cascadeseg.data.case_balance`); 0: every case once per
            pass.
        early_patch_size: crop size of the items whose key says early (``data.early_patch_size``,
            the start of a run); ``None``: every crop is ``patch_size``.
    """

    def __init__(
        self,
        cases: Sequence[Preprocessed],
        *,
        patch_size: Sequence[int],
        foreground_prob: float = 0.0,
        foreground_sampling: str = "voxel",
        crop_overhang: float = 0.0,
        crop_region: str = "brain",
        augment: bool = True,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        flip_prob: float = 0.5,
        intensity_shift: float = 0.1,
        intensity_scale: tuple[float, float] = (0.9, 1.1),
        bias_field_prob: float = 0.0,
        bias_field_strength: tuple[float, float] = (0.05, 0.2),
        bias_field_spacing_mm: float = 60.0,
        bias_field_groups: Sequence[Sequence[int]] = (),
        bias_field_early_only: bool = False,
        bias_field_offset: float = DEFAULT_MEAN_OVER_STD,
        compartment_contrast_prob: float = 0.0,
        compartment_contrast: float = 0.2,
        compartment_contrast_channels: int = 0,
        enhancement_erase_prob: float = 0.0,
        sequence_dropout: SequenceDropout | None = None,
        case_balance: float = 0.0,
        early_patch_size: Sequence[int] | None = None,
    ) -> None:
        if not cases:
            raise InputError("no training cases")
        _require_labels(cases)
        for name, size in (("patch_size", patch_size), ("early_patch_size", early_patch_size)):
            if size is not None and len(size) != 3:
                raise ValueError(f"{name} must have 3 values, got {tuple(size)}")
        self.cases = list(cases)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.early_patch_size = (
            None if early_patch_size is None else tuple(int(s) for s in early_patch_size)
        )
        self.foreground_prob = float(foreground_prob)
        if foreground_sampling not in FOREGROUND_SAMPLINGS:
            raise ValueError(
                f"foreground_sampling must be one of {', '.join(FOREGROUND_SAMPLINGS)}, "
                f"got {foreground_sampling!r}"
            )
        self.by_region = foreground_sampling == "region"
        self.crop_overhang = float(crop_overhang)
        if crop_region not in ("brain", "volume"):
            raise ValueError(f"crop_region must be 'brain' or 'volume', got {crop_region!r}")
        self.crop_region = crop_region
        self.augment = augment
        self.seed = int(seed)
        self.samples_per_epoch = samples_per_epoch
        self.flip_prob = flip_prob
        self.intensity_shift = intensity_shift
        self.intensity_scale = intensity_scale
        self.bias_field_prob = float(bias_field_prob)
        self.bias_field_strength = tuple(bias_field_strength)
        self.bias_field_spacing_mm = float(bias_field_spacing_mm)
        self.bias_field_groups = tuple(tuple(int(c) for c in g) for g in bias_field_groups)
        self.bias_field_early_only = bool(bias_field_early_only)
        self.bias_field_offset = float(bias_field_offset)
        self.compartment_contrast_prob = float(compartment_contrast_prob)
        self.compartment_contrast = float(compartment_contrast)
        self.compartment_contrast_channels = int(compartment_contrast_channels)
        self.enhancement_erase_prob = float(enhancement_erase_prob)
        self.sequence_dropout = sequence_dropout
        self.kinds = [case_balance_.case_kind(c.label) for c in self.cases]  # type: ignore[arg-type]  # labels checked above
        self.case_weights = (
            case_balance_.balanced_case_weights(self.kinds, case_balance)
            if case_balance > 0
            else None
        )
        self.epoch = 0
        self._foreground: dict[int, list[np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch if self.samples_per_epoch is not None else len(self.cases)

    def _foreground_of(self, case_index: int) -> list[np.ndarray]:
        if case_index not in self._foreground:
            label = self.cases[case_index].label
            assert label is not None
            self._foreground[case_index] = (
                augment.region_coordinates(label)
                if self.by_region
                else [augment.foreground_coordinates(label)]
            )
        return self._foreground[case_index]

    def crop_start(
        self, rng: np.random.Generator, case_index: int, size: Sequence[int] | None = None
    ) -> tuple[int, ...]:
        """Start corner of the next crop of case ``case_index`` (``size``, default
        ``patch_size``), in its preprocessed grid.

        With ``crop_region="volume"`` the start is drawn (by :func:`augment.draw_crop_start`,
        without overhang) in the grid before the brain crop, then shifted by the crop box, so it
        may lie outside the preprocessed volume (that part of the crop is background padding).
        """
        case = self.cases[case_index]
        size = self.patch_size if size is None else tuple(size)
        foreground = self._foreground_of(case_index) if self.foreground_prob > 0 else None
        if self.crop_region == "brain":
            return augment.draw_crop_start(
                rng,
                case.shape,
                size,
                foreground=foreground,
                foreground_prob=self.foreground_prob,
                overhang=self.crop_overhang,
            )
        offset = np.array([a for a, _ in case.geometry.crop_box], dtype=np.int64)
        start = augment.draw_crop_start(
            rng,
            case.geometry.resampled_shape,
            size,
            foreground=None if foreground is None else [f + offset for f in foreground],
            foreground_prob=self.foreground_prob,
        )
        return tuple(int(s) for s in np.asarray(start) - offset)

    def _draw_log_field(
        self, rng: np.random.Generator, case: Preprocessed, label: np.ndarray, early: bool
    ) -> np.ndarray | None:
        """The crop's multiplicative log field, ``(C, *label.shape)``: a bias field
        (on early crops only with ``bias_field_early_only``) and a contrast per tumour
        compartment, each drawn with its probability (their logs add); ``None`` when neither is
        drawn. Each is drawn only when its probability is above 0, so that a run without it
        draws the same crops as before."""
        log_field, channels = None, case.image.shape[0]
        field_on = early or not self.bias_field_early_only
        if field_on and self.bias_field_prob > 0 and rng.random() < self.bias_field_prob:
            log_field = augment.draw_bias_field(
                rng,
                channels,
                label.shape,
                strength=self.bias_field_strength,  # type: ignore[arg-type]
                spacing=self.bias_field_spacing_mm / float(np.mean(case.spacing)),
                groups=self.bias_field_groups,
            )
        if self.compartment_contrast_prob > 0 and rng.random() < self.compartment_contrast_prob:
            log_factors = augment.draw_compartment_contrast(
                rng,
                NUM_CLASSES - 1,
                channels,
                strength=self.compartment_contrast,
                changed=self.compartment_contrast_channels,
            )
            contrast = augment.compartment_log_field(label, log_factors)
            log_field = contrast if log_field is None else log_field + contrast
        return log_field

    def __getitem__(self, key: Index) -> dict[str, torch.Tensor]:
        epoch, index = _split_index(key, self.epoch)
        rng = item_rng(self.seed, epoch, index)
        case_index = case_balance_.draw_case(
            self.seed, epoch, index, len(self.cases), self.case_weights
        )
        case = self.cases[case_index]
        assert case.label is not None
        early = self.early_patch_size is not None and _early_crop(key)
        size = self.early_patch_size if early else self.patch_size
        assert size is not None
        start = self.crop_start(rng, case_index, size)
        image = augment.crop(case.image, start, size)
        label = augment.crop(case.label, start, size)
        brain_mask = augment.crop(case.brain_mask, start, size)
        soft = case.region_fractions
        soft = None if soft is None else augment.crop(soft, start, size)
        if self.augment:
            axes = augment.draw_flips(rng, 3, self.flip_prob)
            image = augment.flip(image, axes, spatial_dims=3)
            label = augment.flip(label, axes, spatial_dims=3)
            brain_mask = augment.flip(brain_mask, axes, spatial_dims=3)
            soft = None if soft is None else augment.flip(soft, axes, spatial_dims=3)
            if self.enhancement_erase_prob > 0 and rng.random() < self.enhancement_erase_prob:
                image, label, soft = augment.erase_enhancement(
                    image, label, soft, brain_mask, t1=_T1, t1ce=_T1CE
                )
            log_field = self._draw_log_field(rng, case, label, early)
            if log_field is not None:
                offsets = case.extra.get("mean_over_std")
                if offsets is None or len(offsets) != image.shape[0]:
                    offsets = [self.bias_field_offset] * image.shape[0]
                image = augment.apply_bias_field(
                    image, log_field, np.asarray(offsets, np.float32), brain_mask=brain_mask
                )
            shifts, scales = augment.draw_intensity(
                rng, image.shape[0], shift=self.intensity_shift, scale=self.intensity_scale
            )
            image = augment.shift_scale_intensity(image, shifts, scales, brain_mask=brain_mask)
        image = _drop_sequences(self.sequence_dropout, rng, image, key)
        return _to_item(image, label, brain_mask, case_index, soft)


class SliceDataset2D(Dataset):
    """Axial slices (index along the last axis, z) of preprocessed cases (CU-Net paper, sec. 3.1).

    Every slice with tumour is used each epoch; of the tumour-free slices a fraction
    ``drop_empty`` is left out, redrawn each epoch (CU-Net: "about 30% scans that don't contain
    any tumor structure are discarded"). The number of items is the same every epoch, so
    samplers (also ``DistributedSampler``) keep a fixed length. With augmentation, each slice
    is rotated by U(-max_rotation, max_rotation) degrees and flipped on each in-plane axis with
    p = 0.5 (CU-Net: "random rotation and random flip").

    Slices are cropped or zero-padded to ``slice_size``: centred without augmentation, at a
    random position with it.

    Args:
        cases: preprocessed cases with labels.
        slice_size: ``(H, W)`` = ``(X, Y)`` size of each item.
        slice_context: neighbouring slices on each side stacked as extra channels (2.5D);
            the channels are ordered by offset ``-k..k``, each with all modalities, so
            channel ``(offset + k) * C + c``; slices beyond the volume are zeros.
        drop_empty: fraction of tumour-free slices left out each epoch.
        augment: apply rotation and flips.
        seed: base seed.
        max_rotation: rotation half-range in degrees.
        flip_prob: probability of a flip on each in-plane axis.
        skip_background_slices: leave out slices without any brain voxel (they carry no signal).
        sequence_dropout: drop sequences of each slice stack (every context slice alike) and
            fill them (:class:`cascadeseg.data.missing.SequenceDropout`; the ``mask`` fill
            appends 4 availability channels after the context channels); ``None``: off.
    """

    def __init__(
        self,
        cases: Sequence[Preprocessed],
        *,
        slice_size: tuple[int, int],
        slice_context: int = 0,
        drop_empty: float = 0.3,
        augment: bool = True,
        seed: int = 0,
        max_rotation: float = 15.0,
        flip_prob: float = 0.5,
        skip_background_slices: bool = True,
        sequence_dropout: SequenceDropout | None = None,
    ) -> None:
        if not cases:
            raise InputError("no training cases")
        _require_labels(cases)
        if not 0.0 <= drop_empty < 1.0:
            raise ValueError(f"drop_empty must be in [0, 1), got {drop_empty}")
        self.cases = list(cases)
        self.slice_size = (int(slice_size[0]), int(slice_size[1]))
        self.slice_context = int(slice_context)
        self.drop_empty = float(drop_empty)
        self.augment = augment
        self.seed = int(seed)
        self.max_rotation = max_rotation
        self.flip_prob = flip_prob
        self.sequence_dropout = sequence_dropout
        self.epoch = 0
        tumour, empty = [], []
        for case_index, case in enumerate(self.cases):
            assert case.label is not None
            has_tumour: np.ndarray = np.any(case.label, axis=(0, 1))
            has_brain: np.ndarray = np.any(case.brain_mask, axis=(0, 1))
            for z in range(case.shape[2]):
                if has_tumour[z]:
                    tumour.append((case_index, z))
                elif has_brain[z] or not skip_background_slices:
                    empty.append((case_index, z))
        #: ``(case index, z)`` of the slices with tumour and without.
        self.tumour_slices = np.asarray(tumour, dtype=np.int64).reshape(-1, 2)
        self.empty_slices = np.asarray(empty, dtype=np.int64).reshape(-1, 2)
        self.empty_kept = len(self.empty_slices) - round(self.drop_empty * len(self.empty_slices))
        self._epoch_slices: tuple[int, np.ndarray] | None = None

    @property
    def in_channels(self) -> int:
        extra = 0 if self.sequence_dropout is None else self.sequence_dropout.extra_channels
        return self.cases[0].image.shape[0] * (2 * self.slice_context + 1) + extra

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tumour_slices) + self.empty_kept

    def slices_for_epoch(self, epoch: int) -> np.ndarray:
        """``(len(self), 2)`` array of ``(case index, z)`` used in ``epoch``."""
        if self._epoch_slices is None or self._epoch_slices[0] != epoch:
            rng = np.random.default_rng([self.seed, int(epoch), 2**31 - 1])
            keep = rng.choice(len(self.empty_slices), self.empty_kept, replace=False)
            kept = self.empty_slices[np.sort(keep)]
            self._epoch_slices = (epoch, np.concatenate([self.tumour_slices, kept]))
        return self._epoch_slices[1]

    def _slice_image(self, case: Preprocessed, z: int) -> np.ndarray:
        k = self.slice_context
        if k == 0:
            return np.asarray(case.image[..., z])
        channels, depth = case.image.shape[0], case.shape[2]
        out = np.zeros((channels * (2 * k + 1), *case.shape[:2]), dtype=np.float32)
        for i, offset in enumerate(range(-k, k + 1)):
            if 0 <= z + offset < depth:
                out[i * channels : (i + 1) * channels] = case.image[..., z + offset]
        return out

    def __getitem__(self, key: Index) -> dict[str, torch.Tensor]:
        epoch, index = _split_index(key, self.epoch)
        rng = item_rng(self.seed, epoch, index)
        case_index, z = (int(v) for v in self.slices_for_epoch(epoch)[index])
        case = self.cases[case_index]
        assert case.label is not None
        image = self._slice_image(case, z)
        label = np.asarray(case.label[..., z])
        brain_mask = np.asarray(case.brain_mask[..., z])
        if self.augment:
            start = augment.draw_crop_start(rng, label.shape, self.slice_size)
        else:
            start = augment.centre_crop_start(label.shape, self.slice_size)
        image = augment.crop(image, start, self.slice_size)
        label = augment.crop(label, start, self.slice_size)
        brain_mask = augment.crop(brain_mask, start, self.slice_size)
        if self.augment:
            degrees = augment.draw_rotation(rng, self.max_rotation)
            image = augment.rotate2d(image, degrees, order=1)
            label = augment.rotate2d(label, degrees, order=0)
            brain_mask = augment.rotate2d(brain_mask, degrees, order=0)
            axes = augment.draw_flips(rng, 2, self.flip_prob)
            image = augment.flip(image, axes, spatial_dims=2)
            label = augment.flip(label, axes, spatial_dims=2)
            brain_mask = augment.flip(brain_mask, axes, spatial_dims=2)
        image = _drop_sequences(self.sequence_dropout, rng, image, key)
        return _to_item(image, label, brain_mask, case_index, None)
