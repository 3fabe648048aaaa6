"""Missing MR sequences: training with sequence dropout, and how a network is told what is missing.

In practice a sequence is often missing (no contrast T1, a corrupted FLAIR). A model trained with
sequence dropout takes any non-empty subset of the four sequences (FLAIR, T1, T1ce, T2).

* **Training** (``data.sequence_dropout`` = p, ``data.sequence_dropout_max`` = m): with
  probability p a training sample loses some of its sequences. The lost set is drawn uniformly
  among the non-empty subsets of at most m sequences (:func:`dropped_subsets`: 4 + 6 + 4 = 14
  for m = 3), so that every combination a case may arrive with at inference is trained on
  equally often; all four are never lost. The draw comes from the sample's own generator
  (``seed, epoch, index``; :func:`cascadeseg.data.datasets.item_rng`) after its crop and
  augmentation draws, and only when p > 0: runs stay reproducible and resumable, and a run
  without dropout draws exactly the samples it drew before. ``data.sequence_dropout_start`` =
  s and ``data.sequence_dropout_end`` = e hold dropout to the window from s to e of the run
  (shares of its epochs, or of its time budget with ``train.time_schedule``; decided per epoch
  by the trainer, which flags the sampler's keys); outside it the crops are exactly those an
  ordinary run of the same seed draws. The missing recipes end the window early, so that the
  last epochs fit complete cases: the CPU recipe drops sequences from a quarter of the crops
  over the first half of the run, the paper-scale one from half of them over the first 70%
  (``two_stage_missing_cpu.yaml`` holds the measurements that chose its window).
* **The fill** (``data.missing_fill``): a missing sequence is zero everywhere, after
  augmentation (0 is the brain mean of a z-scored sequence, and the background). ``zero``: that
  alone, the input keeps its channels. ``mask`` (the default): zero-filling plus four binary
  availability channels appended after the image channels (1: the sequence is present),
  constant over space, so the network's input has 4 more channels. ``mask`` is the default
  because a zero-filled sequence alone is ambiguous: a z-scored zero is also a present
  sequence's brain-mean intensity, and only the mask tells the network which sequences to
  trust. Issue 21 asks to measure it against ``zero``: ``experiments/missing_study.py`` does
  (docs/results.md, section Missing sequences).
* **Inference**: readers asked to allow it fill a missing file with zeros and record it
  (:attr:`cascadeseg.data.case.Case.missing`); preprocessing keeps a zero sequence zero (its
  z-score has no variance); the predictor appends the same availability channels to every
  network input (:func:`with_availability`: after padding, windows, flips and slice stacking,
  so they are constant over the whole input as in training).
* **Ordinary models** (trained without sequence dropout) need all four sequences. ``predict
  --substitute-missing`` lets them run anyway, as a baseline (:func:`substitute_missing`):
  ``zero`` leaves a missing sequence zero in the normalised space (what a dropout model with
  ``missing_fill: zero`` sees, without having learnt it); ``sibling`` copies the normalised
  image of its nearest present sibling (:data:`SUBSTITUTE_ORDER`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from cascadeseg.config_rules import MISSING_FILLS
from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.errors import ConfigError

#: Channels the ``mask`` fill appends to the network input: one per sequence.
AVAILABILITY_CHANNELS = len(MODALITIES)

#: How an ordinary model gets a missing sequence (``predict --substitute-missing``).
SUBSTITUTES = ("sibling", "zero")

#: Where ``sibling`` takes a missing sequence from: the first present sequence of its list. First
#: the nearest sibling, the other image of the same weighting (T1 <-> T1ce, FLAIR <-> T2); then,
#: for the T1 pair, FLAIR before T2 (its CSF is dark, as in T1 images; T2's is bright), and for
#: the T2 pair, T1ce before T1 (it shows the tumour core, which T1 hardly does).
SUBSTITUTE_ORDER: dict[str, tuple[str, ...]] = {
    "flair": ("t2", "t1ce", "t1"),
    "t1": ("t1ce", "flair", "t2"),
    "t1ce": ("t1", "flair", "t2"),
    "t2": ("flair", "t1ce", "t1"),
}


def dropped_subsets(max_dropped: int) -> tuple[tuple[int, ...], ...]:
    """The channel sets sequence dropout chooses from: every subset of 1..``max_dropped`` of the
    four channel indices, smaller ones first (``(0,), (1,), ..., (0, 1), ...``)."""
    if not 1 <= max_dropped < len(MODALITIES):
        raise ValueError(f"max_dropped must be in 1..{len(MODALITIES) - 1}, got {max_dropped}")
    channels = range(len(MODALITIES))
    return tuple(
        subset for k in range(1, max_dropped + 1) for subset in itertools.combinations(channels, k)
    )


def parse_sequences(names: Iterable[str], where: str = "--missing") -> tuple[str, ...]:
    """Sequence names (``t1ce``, ``flair``, comma-separated entries allowed) checked and put in
    the order of :data:`MODALITIES`.

    Raises:
        ConfigError: an unknown name, or all four (a case needs at least one sequence).
    """
    wanted = {n.strip().lower() for item in names for n in str(item).split(",") if n.strip()}
    unknown = sorted(wanted - set(MODALITIES))
    if unknown:
        raise ConfigError(
            f"{where}: unknown sequence {unknown[0]!r} (known: {', '.join(MODALITIES)})"
        )
    if len(wanted) == len(MODALITIES):
        raise ConfigError(f"{where}: all four sequences missing; at least one must stay")
    return tuple(m for m in MODALITIES if m in wanted)


def present_flags(missing: Iterable[str]) -> np.ndarray:
    """``(4,)`` float32 availability in :data:`MODALITIES` order: 1 present, 0 missing."""
    gone = set(missing)
    return np.array([0.0 if m in gone else 1.0 for m in MODALITIES], dtype=np.float32)


def with_availability(x: torch.Tensor, present: Sequence[float] | np.ndarray) -> torch.Tensor:
    """``(B, C, *S)`` network input -> ``(B, C + 4, *S)``: the availability channels appended,
    each constant over space (1 present, 0 missing), in ``x``'s dtype and device."""
    flags = torch.as_tensor(np.asarray(present, dtype=np.float32), dtype=x.dtype, device=x.device)
    shape = (1, AVAILABILITY_CHANNELS) + (1,) * (x.ndim - 2)
    channels = flags.reshape(shape).expand(x.shape[0], -1, *x.shape[2:])
    return torch.cat([x, channels], dim=1)


def zero_sequences(image: np.ndarray, dropped: Sequence[int]) -> np.ndarray:
    """``image`` with the channels of the ``dropped`` sequence indices set to 0 (a copy).

    ``image`` is ``(C, ...)`` with channel ``c`` holding sequence ``c % 4`` (also 2.5D stacks,
    whose channels are ``offset * 4 + sequence``).
    """
    out = np.array(image, dtype=np.float32, copy=True)
    for channel in range(out.shape[0]):
        if channel % len(MODALITIES) in dropped:
            out[channel] = 0.0
    return out


def model_missing_fill(sequence_dropout: float, missing_fill: str) -> str | None:
    """What a model trained with these ``data.*`` values needs: ``None`` (trained without
    sequence dropout: every sequence must be there) or its fill (``mask`` / ``zero``)."""
    return str(missing_fill) if float(sequence_dropout) > 0 else None


def missing_fill_of_recipe(config: dict[str, Any]) -> str | None:
    """:func:`model_missing_fill` of a stored recipe (a checkpoint's plain-dict config;
    recipes from before sequence dropout have none: ``None``)."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return None
    fill = str(data.get("missing_fill", "mask"))
    if fill not in MISSING_FILLS:
        raise ConfigError(
            f"data.missing_fill must be one of {', '.join(MISSING_FILLS)}, got {fill!r}"
        )
    return model_missing_fill(float(data.get("sequence_dropout", 0.0) or 0.0), fill)


def extra_input_channels(fill: str | None) -> int:
    """Input channels a model of this fill takes beyond the image's: 4 for ``mask``, else 0."""
    return AVAILABILITY_CHANNELS if fill == "mask" else 0


def without_sequences(case: Case, missing: Iterable[str]) -> Case:
    """``case`` with the ``missing`` sequences zero-filled and recorded in ``Case.missing``
    (``predict --missing``: a complete case read as if those files were absent)."""
    gone = tuple(m for m in MODALITIES if m in set(missing) | set(case.missing))
    if not gone or gone == case.missing:
        return case
    image = zero_sequences(case.image, [MODALITIES.index(m) for m in gone])
    return replace(case, image=image, missing=gone)


def substitute_missing(
    image: np.ndarray, missing: Iterable[str], how: str
) -> tuple[np.ndarray, dict[str, str]]:
    """The input of an ordinary model for a case lacking the ``missing`` sequences.

    Args:
        image: ``(C, ...)`` normalised image, channel ``c`` holding sequence ``c % 4`` (also 2.5D
            stacks); the missing channels' content is ignored (readers fill them with zeros).
        missing: the sequence names the case lacks (not all four).
        how: ``zero`` (each missing channel 0) or ``sibling`` (each missing channel a copy of
            the first present sequence of its :data:`SUBSTITUTE_ORDER` list).

    Returns:
        ``(image, substituted)``: a float32 copy (``image`` itself when nothing is missing) and
        ``{missing sequence: the sequence copied, or "zero"}`` in :data:`MODALITIES` order.

    Raises:
        ValueError: an unknown ``how`` or sequence, or all four sequences missing.
    """
    if how not in SUBSTITUTES:
        raise ValueError(f"how must be one of {', '.join(SUBSTITUTES)}, got {how!r}")
    gone = set(missing)
    if gone - set(MODALITIES):
        raise ValueError(f"unknown sequence(s) {sorted(gone - set(MODALITIES))}")
    if len(gone) == len(MODALITIES):
        raise ValueError("all four sequences missing: nothing to substitute from")
    if not gone:
        return image, {}
    if how == "zero":
        substituted = {m: "zero" for m in MODALITIES if m in gone}
        return zero_sequences(image, [MODALITIES.index(m) for m in gone]), substituted
    substituted = {
        m: next(s for s in SUBSTITUTE_ORDER[m] if s not in gone) for m in MODALITIES if m in gone
    }
    out = np.array(image, dtype=np.float32, copy=True)
    n = len(MODALITIES)
    for channel in range(out.shape[0]):
        source = substituted.get(MODALITIES[channel % n])
        if source is not None:  # the same slice offset of a 2.5D stack
            out[channel] = out[channel - channel % n + MODALITIES.index(source)]
    return out, substituted


@dataclass(frozen=True)
class SequenceDropout:
    """Sequence dropout of training samples (see the module docstring).

    Attributes:
        prob: probability that a sample loses sequences (``data.sequence_dropout``).
        max_dropped: most sequences one sample loses, 1 to 3 (``data.sequence_dropout_max``).
        fill: ``mask`` (availability channels appended) or ``zero``.
    """

    prob: float
    max_dropped: int = 3
    fill: str = "mask"

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")
        if self.fill not in MISSING_FILLS:
            raise ValueError(f"fill must be one of {MISSING_FILLS}, got {self.fill!r}")
        dropped_subsets(self.max_dropped)

    @property
    def extra_channels(self) -> int:
        """Channels appended to every sample (4 for ``mask``, 0 for ``zero``)."""
        return extra_input_channels(self.fill)

    def draw(self, rng: np.random.Generator) -> tuple[int, ...]:
        """The sequence indices one sample loses (``()``: none); nothing is drawn when
        ``prob`` is 0."""
        if self.prob <= 0 or rng.random() >= self.prob:
            return ()
        subsets = dropped_subsets(self.max_dropped)
        return subsets[int(rng.integers(len(subsets)))]

    def apply(self, image: np.ndarray, dropped: Sequence[int]) -> np.ndarray:
        """``(C, *S)`` sample -> the dropped sequences zeroed, and with ``mask`` the four
        availability channels appended: ``(C + extra_channels, *S)`` float32."""
        out = zero_sequences(image, dropped) if dropped else np.asarray(image, dtype=np.float32)
        if self.fill != "mask":
            return out
        present = present_flags(MODALITIES[c] for c in dropped)
        return with_availability(torch.from_numpy(out)[None], present)[0].numpy()
