"""What a ``predict`` run reads and writes, settled before any inference.

:func:`cascadeseg.inference.predict` calls these checks before it loads a single image, so a run
that would destroy data or mix cases stops at once with one line (exit 2) instead of failing, or
worse succeeding, case by case:

* :func:`resolve_inputs`: the cases the ``--input`` arguments name, with every file each case is
  read from (images, label maps, ``dataset.json``). The same case id from two inputs is an error.
  Four modality files name their case by the files' common prefix
  (:func:`case_id_of_files`), never by a modality name, or by ``--case-id``.
* :func:`check_outputs`: no planned output file may resolve to an input file of any case
  (``os.path.realpath`` and, for existing files, the inode, so symbolic and hard links are seen
  too), whatever ``--overwrite`` says; and no two planned outputs may be the same file.
* :func:`existing_outputs`: per case, under the output lock: write, skip (outputs exist), or add
  the asked-for maps beside a segmentation the same models made.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.layouts import (
    CaseRef,
    discover_cases,
    modality_from_name,
    read_case,
    read_files,
)
from cascadeseg.data.nifti import strip_nifti_suffix
from cascadeseg.errors import ConfigError, InputError
from cascadeseg.inference.ensemble import flip_plan
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.options import PredictOptions


@dataclass(frozen=True)
class Source:
    """One case to read.

    Attributes:
        case_id: its id (names the outputs ``<case_id>.nii.gz`` before anything is read).
        read: reads the case.
        files: every file the case is read from (images, label map, ``dataset.json``).
        origin: the ``--input`` argument it came from (for messages).
    """

    case_id: str
    read: Callable[[], Case]
    files: tuple[Path, ...]
    origin: Path


# --------------------------------------------------------------------------------------------
# four files

_SEPARATORS = "-_. "


def _modality_of_file(path: Path) -> str | None:
    stem = strip_nifti_suffix(path.name)
    token = re.split(r"[_\-.]", stem)[-1]
    return modality_from_name(token)


def files_in_modality_order(files: Sequence[Path]) -> list[Path]:
    """Four modality files in the order FLAIR, T1, T1ce, T2.

    When every file name ends in a recognisable modality (``_flair``, ``-t2f``, ``_t1ce``,
    ``-t1c``, ...) and the four differ, the names decide; otherwise the given order is taken as
    FLAIR, T1, T1ce, T2.
    """
    named = [_modality_of_file(p) for p in files]
    if all(named) and len(set(named)) == len(MODALITIES):
        by_modality = dict(zip(named, files))
        return [by_modality[m] for m in MODALITIES]
    return list(files)


def case_id_of_files(files: Sequence[Path]) -> str:
    """The case id of four modality files: their names' common prefix, whole tokens only.

    ``BraTS-GLI-00001-000-t2f.nii.gz``, ``...-t1n``, ``...-t1c``, ``...-t2w`` give
    ``BraTS-GLI-00001-000``; ``P7_flair``, ``P7_t1``, ... give ``P7``; ``case_0000`` ...
    ``case_0003`` give ``case``. The prefix is cut back to a separator (``-``, ``_``, ``.``,
    space) so that a modality is never half-kept (``...-t`` of ``-t2f``/``-t1n``).

    Raises:
        InputError: no common prefix is left, or it is a modality name (``flair.nii.gz``,
            ``t1.nii.gz``, ...): the message asks for ``--case-id``.
    """
    stems = [strip_nifti_suffix(Path(f).name) for f in files]
    prefix = os.path.commonprefix(stems)  # noqa: RUF071 (characters, cut back to a token below)
    while prefix and not (
        prefix[-1] in _SEPARATORS
        or all(len(s) == len(prefix) or s[len(prefix)] in _SEPARATORS for s in stems)
    ):
        prefix = prefix[:-1]
    case_id = prefix.strip(_SEPARATORS)
    if not case_id or modality_from_name(case_id) is not None:
        names = ", ".join(Path(f).name for f in files)
        raise InputError(
            f"{Path(files[0]).parent}: the file names ({names}) share no case name; "
            "give one with --case-id ID"
        )
    return case_id


# --------------------------------------------------------------------------------------------
# inputs


def _ref_files(ref: CaseRef) -> tuple[Path, ...]:
    files = [Path(p) for p in ref.files.values()]
    dataset_json = ref.extra.get("dataset_json")
    if dataset_json:
        files.append(Path(dataset_json))
    return tuple(files)


def _modality_files(paths: list[Path], allow_missing: bool) -> dict[str, Path]:
    """The modality files of four-file mode by modality; fewer than four (``allow_missing``)
    must each be named after a different modality (``_t1ce``, ``-t2f``, ...)."""
    if len(paths) == len(MODALITIES):
        return dict(zip(MODALITIES, files_in_modality_order(paths)))
    named = [_modality_of_file(p) for p in paths]
    if not allow_missing or len(paths) > len(MODALITIES):
        raise InputError(
            f"{paths[0]}: give a case folder, a dataset folder or four modality files "
            f"(FLAIR, T1, T1ce, T2); got {len(paths)} file(s)"
        )
    if not all(named) or len(set(named)) != len(named):
        raise InputError(
            f"{paths[0]}: with fewer than four modality files each name must say its sequence "
            f"(e.g. case_flair.nii.gz, case-t1c.nii.gz); got {', '.join(p.name for p in paths)}"
        )
    return {str(m): p for m, p in zip(named, paths)}


def _four_files(paths: list[Path], case_id: str | None, allow_missing: bool = False) -> Source:
    files = _modality_files(paths, allow_missing)
    ordered = [files[m] for m in MODALITIES if m in files]
    case_id = case_id or case_id_of_files(ordered)
    read = functools.partial(
        read_files,
        flair=files.get("flair"),
        t1=files.get("t1"),
        t1ce=files.get("t1ce"),
        t2=files.get("t2"),
        case_id=case_id,
        allow_missing=allow_missing,
    )
    return Source(case_id, read, tuple(ordered), paths[0].parent)


def resolve_inputs(
    inputs: Path | str | Sequence[Path | str],
    case_id: str | None = None,
    *,
    allow_missing: bool = False,
) -> list[Source]:
    """The cases an ``--input`` names: case folder(s), dataset folder(s) or four files.

    Args:
        inputs: one path or several.
        case_id: the case id of four modality files (default: their common prefix).
        allow_missing: cases may lack modality files (models trained with sequence dropout):
            they are read with those channels zero-filled (``Case.missing``), and four-file
            mode takes one to three files named after their sequences.

    Raises:
        InputError: nothing readable was named, four files share no case name, or the same
            case id comes from two inputs (both are named).
        ConfigError: ``case_id`` given with folders.
    """
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise InputError("no input given")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder")
    if all(p.is_file() for p in paths):
        return [_four_files(paths, case_id, allow_missing)]
    if case_id is not None:
        raise ConfigError("--case-id names the case of four modality files; folders name theirs")
    sources: list[Source] = []
    for path in paths:
        if not path.is_dir():
            raise InputError(f"{path}: mixes files and folders; give folders or four files")
        for ref in discover_cases(path):
            read = functools.partial(read_case, ref, allow_missing=allow_missing)
            sources.append(Source(ref.case_id, read, _ref_files(ref), path))
    check_unique_case_ids(sources)
    return sources


def check_unique_case_ids(sources: Iterable[Source]) -> None:
    """Raise :class:`InputError` naming both sources when two cases share an id."""
    seen: dict[str, Source] = {}
    for source in sources:
        first = seen.setdefault(source.case_id, source)
        if first is not source:
            where = [f"{s.origin} ({s.files[0] if s.files else s.origin})" for s in (first, source)]
            raise InputError(
                f"case id {source.case_id} comes from two inputs: {where[0]} and {where[1]}; "
                "predict them into separate output folders"
            )


# --------------------------------------------------------------------------------------------
# outputs


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def check_outputs(
    planned: Mapping[str, Mapping[str, Path]],
    sources: Sequence[Source],
    extra_outputs: Sequence[Path] = (),
) -> None:
    """Refuse outputs that are inputs, or that two cases would both write.

    Args:
        planned: case id -> its output files by kind.
        sources: the cases read (their ``files`` are the inputs).
        extra_outputs: other files the run writes (summaries).

    Raises:
        InputError: an output resolves to an input file (same real path, or same inode for an
            existing file), with or without ``--overwrite``; or two outputs are one file.
    """
    inputs: dict[str, tuple[str, Path]] = {}
    inodes: dict[tuple[int, int], tuple[str, Path]] = {}
    for source in sources:
        for path in source.files:
            inputs[os.path.realpath(path)] = (source.case_id, path)
            identity = _identity(path)
            if identity is not None:
                inodes[identity] = (source.case_id, path)
    outputs = [(cid, p) for cid, paths in planned.items() for p in paths.values()]
    outputs += [("summary", p) for p in extra_outputs]
    written: dict[str, str] = {}
    for case_id, path in outputs:
        real = os.path.realpath(path)
        hit = inputs.get(real) or inodes.get(_identity(path) or (-1, -1))
        if hit is not None:
            same = " " if Path(hit[1]) == path else f" ({hit[1]}) "
            raise InputError(
                f"{path}: is an input file{same}of case {hit[0]}; predict never writes over its "
                "inputs, with or without --overwrite: choose another --output folder"
            )
        if real in written:
            raise InputError(
                f"{path}: cases {written[real]} and {case_id} would both write this file"
            )
        written[real] = case_id


# --------------------------------------------------------------------------------------------
# outputs already on disk


def existing_outputs(
    paths: dict[str, Path], members: Sequence[LoadedModel], options: PredictOptions
) -> tuple[str, set[str], str]:
    """What to do with a case given the outputs already on disk.

    Returns:
        ``(action, keep, reason)``: ``write`` (nothing exists, or ``overwrite``); ``complete``
        (the segmentation and its JSON exist, made by the same models with the same TTA, and
        only asked-for probability or uncertainty maps are missing: they are added, the existing
        files ``keep`` stay); ``skip`` with the reason shown to the user.
    """
    existing = {kind for kind, path in paths.items() if path.exists()}
    if not existing or options.overwrite:
        return "write", set(), ""
    missing = set(paths) - existing
    label = paths["label"].name
    if not missing:
        return "skip", existing, f"{label} exists (--overwrite replaces it)"
    if {"label", "json"} <= existing and missing <= {"probabilities", "uncertainty"}:
        different = _provenance_differs(paths["json"], members, options)
        if different is None:
            return "complete", existing - {"json"}, ""
        maps = ", ".join(paths[k].name for k in sorted(missing))
        return "skip", existing, f"{maps} not written: {different} (--overwrite redoes the case)"
    first = next(path.name for kind, path in paths.items() if kind in existing)
    return "skip", existing, f"{first} exists (--overwrite replaces it)"


def _provenance_differs(
    json_path: Path, members: Sequence[LoadedModel], options: PredictOptions
) -> str | None:
    """Why the existing segmentation may not come from these models and TTA, or None."""
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        settings = record["settings"]
        sources = [m["source"] for m in settings["members"]]
        tta = bool(settings["tta"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{json_path.name} does not say which models made the segmentation"
    if sources != [str(m.source) for m in members]:
        return "the segmentation was made by other models"
    if tta != options.tta:
        return f"the segmentation was made {'with' if tta else 'without'} TTA"
    if not set(options.missing) <= set(record.get("missing_sequences") or ()):
        return f"the segmentation was made with {', '.join(options.missing)} (see --missing)"
    if record.get("substituted"):
        dropout = all(m.missing_fill is not None for m in members)
        wanted = None if dropout else options.substitute_missing
        if settings.get("substitute_missing") != wanted:
            how = settings.get("substitute_missing")
            return f"the segmentation was made with --substitute-missing {how}"
    recorded = [m.get("flips") for m in settings["members"]]
    planned = [[list(f) for f in flips] for flips in flip_plan(members, options.ensemble_mode, tta)]
    if all(r is not None for r in recorded) and recorded != planned:
        mode = settings.get("ensemble_mode", "another")
        return f"the segmentation was made with the {mode} snapshot ensemble"
    region = settings.get("tta_region", "volume")
    if region != options.tta_region:
        return f"the segmentation was made with tta_region {region}"
    return None
