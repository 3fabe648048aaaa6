"""A cache of preprocessed cases on disk, so training never re-reads NIfTI files.

Layout of the cache folder::

    <root>/v<FORMAT_VERSION>-<config digest>/
        config.json                 the PreprocessConfig the entries were made with
        <case_id>/                  one entry per case
            image.npy               (4, x, y, z) float32
            brain_mask.npy          (x, y, z) bool
            label.npy               (x, y, z) uint8 (only when the case has a label)
            region_fractions.npy    (3, x, y, z) uint8 (only with data.label_resampling: soft)
            meta.json               key, format version, spacing, geometry, array shapes
    <root>/_hashes/                 memo of file content digests, by path + size + mtime

An entry's *key* is a SHA-256 digest of the input files' bytes, the case's layout and label
convention, the :class:`PreprocessConfig` and :data:`FORMAT_VERSION`. Entries are written to a
temporary folder and moved into place with ``os.replace``, so readers never see half an entry.
On :meth:`PreprocessCache.get`, an entry whose key differs (the files changed: *stale*) or that
cannot be read back intact (missing or truncated ``.npy``, unreadable ``meta.json``, shapes that
disagree with the metadata: *corrupt*) is rebuilt, never trusted. Arrays come back memory-mapped
(read-only), so loading a case costs a few file opens, not a read of the data.

Hashing a dataset's files costs about a second per GB; the digest of each file is memoised by
(path, size, mtime in ns, inode), the fast path of ``git`` and ``ccache``. Pass
``trust_stat=False`` to always hash the bytes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cascadeseg.data.case import Case
from cascadeseg.data.layouts import CaseRef, read_case
from cascadeseg.data.preprocess import Geometry, PreprocessConfig, Preprocessed, preprocess_case
from cascadeseg.errors import CascadesegError, InputError
from cascadeseg.fsutil import write_text_atomic

#: Bump when the entry format or the preprocessing arithmetic changes: old entries are rebuilt.
# 2: N4 moved after resampling and cropping (cases corrected by version 1 differ).
# 3: extra["mean_over_std"] recorded (the bias-field augmentation needs it).
# 4: data.label_resampling (regions: label maps resampled through their regions; soft: and
#    region_fractions.npy).
FORMAT_VERSION = 4
#: Content hash of the key. SHA-256 rather than BLAKE2b: measured on this project's machine (x86
#: with SHA extensions) hashlib's sha256 hashes 35 MB in 0.13 s, blake2b in 0.33 s.
HASH = "sha256"
_CHUNK = 1 << 20


def default_cache_dir(data_root: str | Path) -> Path:
    """The cache folder used when none is given: ``<data_root>/.cascadeseg_cache``."""
    return Path(data_root) / ".cascadeseg_cache"


def user_cache_dir() -> Path:
    """The user's cache folder for cascadeseg: ``$XDG_CACHE_HOME/cascadeseg`` or
    ``~/.cache/cascadeseg``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cascadeseg"


def _can_write(folder: Path) -> bool:
    """Whether files can be made in ``folder``, or ``folder`` in its nearest existing parent."""
    target = folder.absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    return target.is_dir() and os.access(target, os.W_OK | os.X_OK)


def resolve_cache_dir(
    data_root: str | Path,
    cache_dir: str | Path | None = None,
    *,
    echo: Callable[[str], None] = print,
) -> Path:
    """The preprocessing cache folder of a dataset.

    Args:
        data_root: the dataset folder.
        cache_dir: the folder the user chose (``--cache``, ``data.cache_dir``), used as is.
        echo: where the note about a fallback goes.

    Returns:
        ``cache_dir`` when given; else ``<data_root>/.cascadeseg_cache`` when it can be written;
        else (a read-only dataset) a folder of :func:`user_cache_dir` named after the dataset
        and keyed by a digest of its real path, announced through ``echo``.

    Raises:
        InputError: ``cache_dir`` is a file or cannot be written.
    """
    if cache_dir is not None:
        chosen = Path(cache_dir)
        if not _can_write(chosen):
            raise InputError(f"{chosen}: the cache folder is not a writable folder")
        return chosen
    default = default_cache_dir(data_root)
    if _can_write(default):
        return default
    real = os.path.realpath(data_root)
    fallback = user_cache_dir() / f"{Path(real).name or 'data'}-{_digest(real)[:12]}"
    echo(
        f"note: {data_root} is not writable; preprocessed cases are cached in {fallback} "
        "(--cache DIR chooses another folder)"
    )
    return fallback


def _digest(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.new(HASH, raw).hexdigest()


def file_digest(path: Path) -> str:
    """Hex digest (:data:`HASH`) of a file's bytes."""
    h = hashlib.new(HASH)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def _safe_name(case_id: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id)
    return cleaned.lstrip(".") or "case"


@dataclass
class WarmResult:
    """What :meth:`PreprocessCache.warm` did.

    Attributes:
        built: case ids (re)built.
        reused: case ids whose entry was valid.
        failed: case id -> one-line error message.
    """

    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class PreprocessCache:
    """Preprocessed cases on disk, keyed by input content and preprocessing settings.

    Args:
        root: cache folder (created when missing).
        cfg: preprocessing settings; entries made with other settings live in another subfolder.
        trust_stat: reuse a file's digest while its size, mtime and inode are unchanged.
    """

    def __init__(
        self, root: str | Path, cfg: PreprocessConfig | None = None, *, trust_stat: bool = True
    ):
        self.root = Path(root)
        self.cfg = cfg or PreprocessConfig()
        self.trust_stat = trust_stat
        self._config_json = json.dumps(self.cfg.to_dict(), sort_keys=True)
        self.folder = self.root / f"v{FORMAT_VERSION}-{_digest(self._config_json)[:12]}"
        self._memo: dict[tuple[str, int, int, int], str] = {}

    # ---------------------------------------------------------------- public API

    def get(self, ref: CaseRef) -> Preprocessed:
        """The preprocessed case of ``ref``: from the cache, or read, preprocessed and stored.

        Raises:
            InputError: the case's files cannot be read or fail validation (from ``read_case``).
        """
        return self._ensure_ref(ref)[0]

    def get_case(self, case: Case) -> Preprocessed:
        """The preprocessed version of an in-memory case (keyed by its arrays' content)."""
        key = self._key_of_case(case)
        entry = self.folder / f"{_safe_name(case.case_id)}.mem"
        loaded = self._load(entry, key)
        if loaded is None:
            loaded = self._store(entry, key, preprocess_case(case, self.cfg))
        return loaded

    def warm(self, refs: Sequence[CaseRef], workers: int = 2, progress: bool = True) -> WarmResult:
        """Make sure every case of ``refs`` has a valid entry (build the missing ones).

        Args:
            refs: the cases.
            workers: worker processes (``<= 1``: in this process).
            progress: show a progress bar.

        Returns:
            A :class:`WarmResult`; cases that cannot be read are listed in ``failed`` with
            their one-line message, the others are built or reused.
        """
        result = WarmResult()
        bar = tqdm(total=len(refs), desc="preprocess", unit="case", disable=not progress)

        def record(case_id: str, status: str, message: str) -> None:
            if status == "built":
                result.built.append(case_id)
            elif status == "reused":
                result.reused.append(case_id)
            else:
                result.failed[case_id] = message
            bar.update(1)

        try:
            if workers <= 1 or len(refs) <= 1:
                for ref in refs:
                    record(*_warm_one(self.root, self.cfg, self.trust_stat, ref))
            else:
                # spawn: forked workers would inherit torch/OpenMP thread state from the parent.
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    futures = [
                        pool.submit(_warm_one, self.root, self.cfg, self.trust_stat, ref)
                        for ref in refs
                    ]
                    for future in as_completed(futures):
                        record(*future.result())
        finally:
            bar.close()
        return result

    def entry_dir(self, ref: CaseRef) -> Path:
        """Folder of the entry of ``ref`` (it may not exist)."""
        return self.folder / _safe_name(ref.case_id)

    def contains(self, ref: CaseRef) -> bool:
        """Whether ``ref`` has a valid, up-to-date entry."""
        return self._load(self.entry_dir(ref), self._key_of_ref(ref)) is not None

    def clear(self) -> None:
        """Remove every entry made with this configuration."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---------------------------------------------------------------- keys

    def _file_digest(self, path: Path) -> str:
        if not self.trust_stat:
            return file_digest(path)
        st = os.stat(path)
        stat_key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if stat_key in self._memo:
            return self._memo[stat_key]
        memo_file = self.root / "_hashes" / f"{_digest(stat_key[0])}.json"
        try:
            memo = json.loads(memo_file.read_text())
            if tuple(memo["stat"]) == stat_key:
                self._memo[stat_key] = str(memo["digest"])
                return self._memo[stat_key]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        digest = file_digest(path)
        self._memo[stat_key] = digest
        try:
            write_text_atomic(json.dumps({"stat": list(stat_key), "digest": digest}), memo_file)
        except OSError:
            pass  # a read-only cache still works, it just hashes every time
        return digest

    def _key_of_ref(self, ref: CaseRef) -> str:
        parts = {
            "version": FORMAT_VERSION,
            "config": self._config_json,
            "case_id": ref.case_id,
            "layout": ref.layout,
            "label_convention": ref.label_convention,
            # Reading hints change the arrays (channel order of a 4D file).
            "channels": sorted((ref.extra.get("channels") or {}).items()),
            "files": {name: self._file_digest(Path(p)) for name, p in sorted(ref.files.items())},
        }
        return _digest(json.dumps(parts, sort_keys=True))

    def _key_of_case(self, case: Case) -> str:
        h = hashlib.new(HASH)
        h.update(json.dumps([FORMAT_VERSION, self._config_json, case.case_id]).encode())
        for array in (case.image, case.label, np.asarray(case.meta.affine, dtype=np.float64)):
            if array is None:
                h.update(b"none")
                continue
            contiguous: np.ndarray = np.ascontiguousarray(array)
            h.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
            h.update(contiguous.data.cast("B"))
        h.update(json.dumps([float(s) for s in case.meta.spacing]).encode())
        return h.hexdigest()

    # ---------------------------------------------------------------- entries

    def _ensure_ref(self, ref: CaseRef) -> tuple[Preprocessed, bool]:
        """The entry of ``ref`` and whether it had to be (re)built."""
        if ref.extra.get("problems"):
            read_case(ref)  # raises the missing/duplicated-file message; never serve the cache
        try:
            key = self._key_of_ref(ref)
        except OSError as exc:
            read_case(ref)  # raises the reader's message naming the file
            raise InputError(f"{exc.filename}: cannot read ({exc.strerror})") from None
        entry = self.entry_dir(ref)
        loaded = self._load(entry, key)
        if loaded is not None:
            return loaded, False

        case = read_case(ref)
        return self._store(entry, key, preprocess_case(case, self.cfg)), True

    def _load(self, entry: Path, key: str) -> Preprocessed | None:
        """The entry memory-mapped, or ``None`` when it is missing, stale or corrupt."""
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta.get("version") != FORMAT_VERSION or meta.get("key") != key:
                return None
            arrays: dict[str, np.ndarray] = {}
            for name, spec in meta["arrays"].items():
                array = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
                    return None
                arrays[name] = array
            spatial = tuple(meta["arrays"]["brain_mask"]["shape"])
            if tuple(arrays["image"].shape[1:]) != spatial:
                return None
            label = arrays.get("label")
            if meta["has_label"] != (label is not None):
                return None
            return Preprocessed(
                case_id=str(meta["case_id"]),
                image=arrays["image"],
                label=label,
                brain_mask=arrays["brain_mask"],
                spacing=tuple(float(s) for s in meta["spacing"]),  # type: ignore[arg-type]
                geometry=Geometry.from_dict(meta["geometry"]),
                extra=dict(meta.get("extra", {})),
                region_fractions=arrays.get("region_fractions"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _store(self, entry: Path, key: str, pre: Preprocessed) -> Preprocessed:
        """Write ``pre`` atomically as ``entry`` and return it memory-mapped from disk."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config_file = self.folder / "config.json"
        if not config_file.exists():
            write_text_atomic(self._config_json, config_file)
        tmp = self.folder / f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            arrays = {"image": pre.image, "brain_mask": pre.brain_mask}
            if pre.label is not None:
                arrays["label"] = pre.label
            if pre.region_fractions is not None:
                arrays["region_fractions"] = pre.region_fractions
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            meta = {
                "version": FORMAT_VERSION,
                "key": key,
                "case_id": pre.case_id,
                "has_label": pre.label is not None,
                "spacing": list(pre.spacing),
                "geometry": pre.geometry.to_dict(),
                "arrays": {
                    name: {"shape": list(a.shape), "dtype": np.asarray(a).dtype.str}
                    for name, a in arrays.items()
                },
                "config": self.cfg.to_dict(),
                "extra": pre.extra,
            }
            # meta.json last: an entry without it is never read as valid.
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            _replace_dir(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        loaded = self._load(entry, key)
        if loaded is None:  # another process replaced it with another key in between
            raise CascadesegError(f"{entry}: cache entry changed while it was being written")
        return loaded


def _replace_dir(tmp: Path, entry: Path) -> None:
    """Move the folder ``tmp`` to ``entry``, replacing an old ``entry`` (atomic for readers)."""
    for _ in range(3):
        try:
            os.replace(tmp, entry)  # succeeds when entry is missing (or an empty folder)
            return
        except OSError:
            trash = entry.with_name(f".old-{entry.name}-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(entry, trash)
            except FileNotFoundError:
                continue  # another process moved it away; retry
            shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, entry)


def _warm_one(
    root: Path, cfg: PreprocessConfig, trust_stat: bool, ref: CaseRef
) -> tuple[str, str, str]:
    """Worker of :meth:`PreprocessCache.warm`: ``(case_id, "built"|"reused"|"failed", msg)``."""
    try:
        _, built = PreprocessCache(root, cfg, trust_stat=trust_stat)._ensure_ref(ref)
    except CascadesegError as exc:
        return ref.case_id, "failed", str(exc)
    return ref.case_id, "built" if built else "reused", ""


def preprocessed_cases(
    refs: Iterable[CaseRef], cache: PreprocessCache, *, progress: bool = False
) -> list[Preprocessed]:
    """``cache.get`` of every ref, in order (memory-mapped; cheap once the cache is warm)."""
    return [cache.get(ref) for ref in tqdm(list(refs), desc="load", disable=not progress)]
