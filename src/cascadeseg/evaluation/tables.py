"""Numbers as text and CSV files, shared by every table the evaluation writes.

``metrics.csv``, ``lesions.csv`` and ``table.csv`` write floats with a number of significant
digits (:func:`format_cell`) and read them back with :func:`parse_float`; the report's and the
console's tables show a fixed number of decimals (:func:`format_number`). NaN is written ``NaN``
everywhere.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cascadeseg.fsutil import atomic_path

#: Texts read as NaN in a CSV cell (empty, and what this module and pandas write).
NAN_TEXTS: tuple[str, ...] = ("", "NaN", "nan")


def format_number(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, ``None`` and NaN as ``NaN``, others as str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_cell(value: Any, significant: int = 10) -> str:
    """A CSV cell: floats with ``significant`` significant digits, NaN as ``NaN``, others as str."""
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{significant}g}"
    return str(value)


def parse_float(text: str) -> float:
    """A CSV cell written by :func:`format_cell` as a float (:data:`NAN_TEXTS` -> NaN)."""
    return math.nan if text in NAN_TEXTS else float(text)


def write_csv(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    path: str | os.PathLike[str],
    *,
    significant: int = 10,
) -> Path:
    """Write ``rows`` under the header ``columns`` atomically (a missing key: an empty cell).

    Args:
        rows: one mapping per line.
        columns: the header, and the keys read from each row in that order.
        path: the file (replaced in one step when complete).
        significant: significant digits of floats (:func:`format_cell`).
    """
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([format_cell(row.get(c, ""), significant) for c in columns])
    return path
