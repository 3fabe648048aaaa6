"""``cascadeseg inspect DIR``: list and validate the cases of a dataset folder.

Prints one row per case (id, shape, spacing in mm, label values present in the source convention,
tumour volume in mL), one line per bad case naming the file and the problem, the readers'
warnings (e.g. int16 wrap-around) under the case they concern, and a summary.
Exit status: 0 all cases good, 1 some cases bad, 2 unusable input (no cases, unknown layout).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cascadeseg.commands._options import add_dataset_layout, add_label_convention
from cascadeseg.data.case import Case
from cascadeseg.data.labels import CONVENTIONS, NUM_CLASSES, get_convention
from cascadeseg.data.layouts import discover_cases, read_case
from cascadeseg.errors import InputError

HELP = "list and validate the cases of a dataset folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="dataset folder or one case folder")
    add_dataset_layout(parser, "dataset layout (default: detected from the file names)")
    add_label_convention(
        parser,
        "--labels",
        "label convention of the segmentations, e.g. brats2024 for post-treatment data "
        "(default: the layout's, or dataset.json's); one of: " + ", ".join(sorted(CONVENTIONS)),
    )


def case_summary(case: Case) -> dict[str, object]:
    """Shape, spacing (mm), label values present (source convention) and tumour volume (mL)."""
    row: dict[str, object] = {
        "case_id": case.case_id,
        "shape": "x".join(str(s) for s in case.meta.shape),
        "spacing": "x".join(f"{s:.2f}" for s in case.meta.spacing),
        "labels": "-",
        "tumour_ml": float("nan"),
    }
    if case.label is not None:
        counts = np.bincount(case.label.ravel(), minlength=NUM_CLASSES)
        to_source = get_convention(case.meta.label_convention).from_internal
        present = sorted(to_source[v] for v in range(NUM_CLASSES) if counts[v] > 0)
        row["labels"] = ",".join(str(v) for v in present)
        voxel_ml = float(np.prod(case.meta.spacing)) / 1000.0
        row["tumour_ml"] = float(counts[1:].sum()) * voxel_ml
    return row


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """The warnings the data readers log meanwhile (kept from stderr: printed with their case)."""
    collector = _Collector()
    logger = logging.getLogger("cascadeseg.data")
    logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)


def run(args: argparse.Namespace) -> int:
    refs = discover_cases(args.dir, args.layout, args.labels)
    layout = refs[0].layout
    print(f"{args.dir}: {layout} layout, {len(refs)} case(s), labels {refs[0].label_convention}")
    width = max(12, *(len(r.case_id) for r in refs))
    print(
        f"{'case':<{width}}  {'shape':<13}  {'spacing (mm)':<16}  {'labels':<9}  "
        f"{'tumour (mL)':>11}  status"
    )
    bad = warned = 0
    for ref in tqdm(refs, desc="inspecting", unit="case", disable=None, leave=False):
        with _collect_warnings() as messages:
            try:
                row = case_summary(read_case(ref))
            except InputError as exc:
                bad += 1
                print(f"{ref.case_id:<{width}}  BAD: {exc}")
                continue
        print(
            f"{row['case_id']:<{width}}  {row['shape']:<13}  {row['spacing']:<16}  "
            f"{row['labels']:<9}  {row['tumour_ml']:>11.1f}  {'ok' if not messages else 'WARNING'}"
        )
        for message in messages:
            print(f"{'':<{width}}  {message}")
        warned += bool(messages)
    note = f", {warned} with warnings" if warned else ""
    print(f"{len(refs)} case(s): {len(refs) - bad} ok{note}, {bad} bad")
    return 1 if bad else 0
