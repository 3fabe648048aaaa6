"""Label conventions and the tumour regions, derived in one place.

Internal convention (every ``Case.label`` and every training target):

=====  =====================================  =========================
value  meaning                                BraTS 2017-21 / 2023+ / MSD
=====  =====================================  =========================
0      background / healthy tissue            0 / 0 / 0
1      NCR (necrosis, and non-enhancing core)  1 / 1 / 2
2      ED (edema, SNFH)                        2 / 2 / 1
3      ET (enhancing tumour)                   4 / 3 / 3
=====  =====================================  =========================

Regions, always in the channel order ``[WT, TC, ET]``:
WT = {NCR, ED, ET}, TC = {NCR, ET}, ET = {ET}.

BraTS 2024 post-treatment labels add 4 = RC (resection cavity); it is kept out of TC and WT, so it
maps to internal background on read (``brats2024``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascadeseg.errors import InputError

BACKGROUND, NCR, ED, ET = 0, 1, 2, 3
NUM_CLASSES = 4
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
#: Internal labels belonging to each region, in the order of :data:`REGIONS`.
REGION_LABELS: tuple[tuple[int, ...], ...] = ((NCR, ED, ET), (NCR, ET), (ET,))


@dataclass(frozen=True)
class LabelConvention:
    """How one family of files stores labels.

    Attributes:
        name: key in :data:`CONVENTIONS`.
        to_internal: source value -> internal value; a value absent here is invalid.
        from_internal: internal value -> source value used when writing.
    """

    name: str
    to_internal: dict[int, int]
    from_internal: dict[int, int]


CONVENTIONS: dict[str, LabelConvention] = {
    "brats2021": LabelConvention(
        "brats2021", {0: 0, 1: NCR, 2: ED, 4: ET}, {0: 0, NCR: 1, ED: 2, ET: 4}
    ),
    "brats2023": LabelConvention(
        "brats2023", {0: 0, 1: NCR, 2: ED, 3: ET}, {0: 0, NCR: 1, ED: 2, ET: 3}
    ),
    # Post-treatment glioma: 4 = resection cavity, outside every tumour region.
    "brats2024": LabelConvention(
        "brats2024", {0: 0, 1: NCR, 2: ED, 3: ET, 4: 0}, {0: 0, NCR: 1, ED: 2, ET: 3}
    ),
    "msd": LabelConvention("msd", {0: 0, 1: ED, 2: NCR, 3: ET}, {0: 0, ED: 1, NCR: 2, ET: 3}),
    "internal": LabelConvention(
        "internal", {0: 0, NCR: NCR, ED: ED, ET: ET}, {0: 0, NCR: NCR, ED: ED, ET: ET}
    ),
}
# nnU-Net's own BraTS conversion (1 edema, 2 necrosis, 3 enhancing) is the MSD convention.
CONVENTIONS["nnunet_brats"] = LabelConvention(
    "nnunet_brats", CONVENTIONS["msd"].to_internal, CONVENTIONS["msd"].from_internal
)


def get_convention(name: str) -> LabelConvention:
    """The convention called ``name``; an :class:`InputError` lists the known ones otherwise."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        known = ", ".join(sorted(CONVENTIONS))
        raise InputError(f"unknown label convention {name!r} (known: {known})") from None


def _lookup_table(mapping: dict[int, int], size: int) -> np.ndarray:
    table = np.full(size, 255, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def to_internal(label: np.ndarray, convention: str, *, source: str = "label map") -> np.ndarray:
    """Convert a label map from ``convention`` to internal values.

    Args:
        label: integer array of any shape in the source convention.
        convention: name of the source convention.
        source: what to name in an error message (usually the file path).

    Returns:
        uint8 array of the same shape with values in {0, 1, 2, 3}.

    Raises:
        InputError: a value is not part of the convention (message lists the bad values).
    """
    conv = get_convention(convention)
    values = np.asarray(label)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise InputError(f"{source}: label map holds non-integer values")
        values = values.astype(np.int32)
    elif values.dtype.kind not in "iu":
        raise InputError(f"{source}: label map has non-numeric type {values.dtype}")
    # Index the lookup table with the stored integer type: no int64 copy of a whole volume.
    top = max(conv.to_internal) + 1
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo < 0 or hi >= top:
        bad = np.unique(values[(values < 0) | (values >= top)])[:10]
        raise InputError(
            f"{source}: label values {bad.tolist()} are not in the {conv.name} convention "
            f"(allowed: {sorted(conv.to_internal)})"
        )
    table = _lookup_table(conv.to_internal, top)
    out = table[values]
    if np.any(out == 255):
        bad = np.unique(values[out == 255])[:10]
        raise InputError(
            f"{source}: label values {bad.tolist()} are not in the {conv.name} convention "
            f"(allowed: {sorted(conv.to_internal)})"
        )
    return out


def from_internal(label: np.ndarray, convention: str) -> np.ndarray:
    """Convert an internal label map (values 0-3) to ``convention``; returns uint8."""
    conv = get_convention(convention)
    table = _lookup_table(conv.from_internal, NUM_CLASSES)
    return table[np.asarray(label, dtype=np.int64)]


def label_to_regions(label: np.ndarray) -> np.ndarray:
    """Binary region masks from an internal label map.

    Args:
        label: ``(...)`` integer array in the internal convention.

    Returns:
        bool array ``(3, ...)`` with channels ``[WT, TC, ET]``.
    """
    label = np.asarray(label)
    wt = label > 0
    tc = (label == NCR) | (label == ET)
    et = label == ET
    return np.stack([wt, tc, et])


def regions_to_label(regions: np.ndarray) -> np.ndarray:
    """Internal label map from (possibly inconsistent) binary region masks ``[WT, TC, ET]``.

    The hierarchy is enforced: ET only inside TC, TC only inside WT. A voxel in WT but not in TC
    is edema; in TC but not in ET it is necrosis; in ET it is enhancing tumour.

    Args:
        regions: ``(3, ...)`` bool (or 0/1) array ``[WT, TC, ET]``.

    Returns:
        uint8 ``(...)`` internal label map.
    """
    regions = np.asarray(regions).astype(bool, copy=False)
    wt = regions[0]
    tc = regions[1] & wt
    et = regions[2] & tc
    label = np.zeros(wt.shape, dtype=np.uint8)
    label[wt] = ED
    label[tc] = NCR
    label[et] = ET
    return label


def probabilities_to_label(
    probs: np.ndarray, threshold: float = 0.5, tc_threshold_without_et: float | None = None
) -> np.ndarray:
    """Threshold ``(3, ...)`` region probabilities ``[WT, TC, ET]`` and build a label map
    (:func:`label_and_core_threshold` without the threshold the core got)."""
    return label_and_core_threshold(probs, threshold, tc_threshold_without_et)[0]


def label_and_core_threshold(
    probs: np.ndarray, threshold: float = 0.5, tc_threshold_without_et: float | None = None
) -> tuple[np.ndarray, float]:
    """Threshold ``(3, ...)`` region probabilities ``[WT, TC, ET]``, build a label map, and say
    which threshold the tumour core got.

    Args:
        probs: ``(3, ...)`` region probabilities ``[WT, TC, ET]``.
        threshold: probability threshold of each region.
        tc_threshold_without_et: TC's threshold in a case whose label map at ``threshold``
            holds no enhancing tumour (``None``: ``threshold``). The ET region stays empty there
            (voxels the lower TC threshold lets into the core do not become ET), so the rule
            changes only the core of cases without enhancement, where a network trained on few
            such cases is under-confident (see ``inference.tc_threshold_without_et``).

    Returns:
        ``(label, tc_threshold)``: the uint8 ``(...)`` internal label map and the threshold its
        core got (``tc_threshold_without_et`` where the rule applied, else ``threshold``).
    """
    probs = np.asarray(probs)
    regions = probs >= threshold
    label = regions_to_label(regions)
    low = tc_threshold_without_et
    if low is None or low == threshold or np.any(label == ET):
        return label, threshold
    regions[1] = probs[1] >= low
    regions[2] = False
    return regions_to_label(regions), low
