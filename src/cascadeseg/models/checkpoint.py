"""Checkpoints that rebuild their model alone and load without executing code.

A checkpoint is a ``dict`` saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so a file from an untrusted source cannot run code. It holds only
tensors, numbers, strings, lists and dicts:

=================  ============================================================================
key                content
=================  ============================================================================
``format``         ``"cascadeseg-checkpoint-1"``
``version``        package version that wrote it
``model_name``     registry name (``two_stage``, ``cunet``, ``unet3d``, ``unet2d``)
``model_args``     constructor keyword arguments (``build_model(model_name, **model_args)``)
``model``          ``state_dict`` of the model
``config``         the resolved :class:`cascadeseg.config.Config` as a plain dict
``epoch``          epochs completed
``optimizer`` ...  optional training state: ``optimizer``, ``scheduler``, ``scaler``, ``rng``,
                   ``history``; absent from inference-only exports
``extra``          free-form dict (e.g. ``{"et_min_voxels": 120}``)
``average``        in ``last.pt`` of a run with ``train.ema_width``: ``{"model": state_dict,
                   "updates": N}``, the moving average of the weights, which inference uses
=================  ============================================================================

Run directory layout written by the trainer (``RUN_DIR``)::

    config.yaml              resolved config
    split.json               case ids of train/val(/test)
    checkpoints/last.pt      latest full checkpoint (used by --resume)
    checkpoints/best.pt      best validation mean Dice
    checkpoints/snapshot_E.pt  weights of the last N epochs (E = epoch, zero-padded to 4)
                             (best.pt and snapshots hold the averaged weights with
                             ``train.ema_width``)
    metrics.csv, curves.png  per-epoch log and plot
    postprocess.json         {"et_min_voxels": N} written by ``tune-postprocess``
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from cascadeseg import __version__
from cascadeseg.errors import ModelError
from cascadeseg.fsutil import atomic_path

FORMAT = "cascadeseg-checkpoint-1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Save ``obj`` to ``path`` through a temporary file and a rename (never a partial file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def make_checkpoint(
    *,
    model_name: str,
    model_args: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    epoch: int,
    extra: dict[str, Any] | None = None,
    **training_state: Any,
) -> dict[str, Any]:
    """Assemble a checkpoint dict (see the module docstring for the keys)."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "model_name": model_name,
        "model_args": dict(model_args),
        "model": model_state,
        "config": config,
        "epoch": int(epoch),
        "extra": dict(extra or {}),
    }
    ckpt.update(training_state)
    return ckpt


# torch names the object a pickle wants to build ("Unsupported global: GLOBAL os.system ...").
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _load_failure(exc: Exception) -> str:
    """One line of our own on why ``torch.load(weights_only=True)`` refused a file.

    torch's own message advises retrying with ``weights_only=False``, which runs whatever code
    the file holds: never repeated here.
    """
    text = str(exc)
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        match = _UNSAFE_GLOBAL.search(text)
        what = f" (it asks to build {match.group(1)})" if match else ""
        return (
            "refused: loading this file would run code it contains"
            f"{what}; cascadeseg loads only checkpoints of plain tensors and values, as it "
            "writes them"
        )
    first = " ".join(text.split()) or type(exc).__name__
    if len(first) > 160:
        first = first[:157] + "..."
    return f"not a loadable cascadeseg checkpoint ({first})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: no code runs while loading).

    Raises:
        ModelError: the file is missing, unreadable, not a cascadeseg checkpoint, or would need
            code execution to load.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            # torch warns about pickles it did not write, pointing at weights_only: our message
            # below says what matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, unsafe globals...
        raise ModelError(f"{path}: {_load_failure(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{path}: not a cascadeseg checkpoint (missing format {FORMAT!r})")
    for key in ("model_name", "model_args", "model"):
        if key not in ckpt:
            raise ModelError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def inference_state(path: str | Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The weights inference uses: the moving average a ``last.pt`` carries beside the last
    iterate (``train.ema_width``; :mod:`cascadeseg.training.averaging`), else ``model``.

    Raises:
        ModelError: an ``average`` entry that is not ``{"model": {...}, ...}``.
    """
    average = ckpt.get("average")
    if average is None:
        return ckpt["model"]  # type: ignore[no-any-return]
    if not isinstance(average, dict) or not isinstance(average.get("model"), dict):
        raise ModelError(f"{path}: malformed 'average' entry (expected {{'model': weights}})")
    return average["model"]  # type: ignore[no-any-return]
