"""The one data contract every reader produces and every writer consumes.

A :class:`Case` holds

* ``image``: float32 array ``(4, X, Y, Z)``, channels in the fixed order :data:`MODALITIES`
  (FLAIR, T1, T1ce, T2), voxel order exactly as stored in the source files (no reorientation here;
  preprocessing reorients and records how to undo it);
* ``label``: optional uint8 array ``(X, Y, Z)`` in the *internal* label convention
  (:data:`cascadeseg.data.labels.INTERNAL`: 0 background, 1 NCR/NET, 2 ED, 3 ET);
* ``meta``: a :class:`Meta` with the geometry (affine, spacing in mm, shape), the NIfTI header of
  the reference modality (so the writer can restore the exact header), the layout the case came
  from and the label convention its files use;
* ``missing``: the sequences the case lacks (zero-filled in ``image``), ``()`` for a whole case;
  only readers asked to allow missing files (``read_case(ref, allow_missing=True)``) produce
  them, for models trained with sequence dropout (:mod:`cascadeseg.data.missing`).

Readers (``cascadeseg.data.layouts``) convert source label values to the internal convention
on read; the writer converts back to ``meta.label_convention`` (or one the user names) on write.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

#: Fixed modality order of every ``Case.image`` and of every model's input channels.
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")


@dataclass(frozen=True, eq=False)
class Meta:
    """Geometry and provenance of a case.

    Attributes:
        case_id: identifier used to name outputs (``<case_id>.nii.gz``).
        affine: ``(4, 4)`` voxel-to-world matrix of the source files (mm).
        spacing: voxel size in mm along the three array axes.
        shape: spatial shape ``(X, Y, Z)`` of the source files.
        source_layout: name of the layout the case was read from (``brats2021``, ``brats2023``,
            ``msd``, ``nnunet``, ``files``, ``synthetic``).
        label_convention: name of the label convention of the source files
            (a key of :data:`cascadeseg.data.labels.CONVENTIONS`).
        header: NIfTI header of the reference modality, copied to written label maps; ``None``
            for cases made in memory (a header is then built from ``affine``).
        files: the source files by modality name (and ``"seg"``), for messages.
        extra: free-form provenance (e.g. the grade folder ``HGG``/``LGG``).
    """

    case_id: str
    affine: np.ndarray
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    source_layout: str
    label_convention: str
    header: Any = None
    files: dict[str, Path] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Case:
    """One patient: four co-registered modalities, an optional label map and its geometry.

    Attributes:
        image: ``(4, X, Y, Z)`` float32, channels ordered as :data:`MODALITIES`.
        label: ``(X, Y, Z)`` uint8 in the internal convention, or ``None`` (inference input).
        meta: geometry and provenance, see :class:`Meta`.
        missing: names of the sequences the case lacks (of :data:`MODALITIES`, in that order);
            their channels of ``image`` are zeros.
    """

    image: np.ndarray
    label: np.ndarray | None
    meta: Meta
    missing: tuple[str, ...] = ()

    @property
    def case_id(self) -> str:
        return self.meta.case_id

    def with_label(self, label: np.ndarray | None) -> Case:
        """A copy of this case with another label map (same geometry)."""
        return replace(self, label=label)
