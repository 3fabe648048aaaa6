"""How to predict: :class:`PredictOptions`, and :func:`options_from_recipe`, the one place that
decides each of the recipe's ``inference.*`` settings (command-line flag, else the value stored
with the model, else the default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cascadeseg.config import INFERENCE_PRECISIONS
from cascadeseg.data.labels import CONVENTIONS
from cascadeseg.data.missing import SUBSTITUTES, parse_sequences
from cascadeseg.errors import ConfigError
from cascadeseg.inference.ensemble import ENSEMBLE_MODES, ensemble_et_min_voxels
from cascadeseg.inference.lesion_postprocess import check_min_lesion_voxels
from cascadeseg.inference.loading import RECIPE_INFERENCE_KEYS, LoadedModel, recipe_inference_values
from cascadeseg.inference.memory import POLICIES
from cascadeseg.inference.roi import TTA_REGIONS, check_tta_region, resolve_tta_region
from cascadeseg.runtime import effective_precision, resolve_device

PRECISIONS: tuple[str, ...] = INFERENCE_PRECISIONS
BACKENDS: tuple[str, ...] = ("torch", "onnx")
#: Conventions ``--labels`` may name for written label maps.
OUTPUT_CONVENTIONS: tuple[str, ...] = ("brats2021", "brats2023")


@dataclass(frozen=True)
class PredictOptions:
    """How to predict.

    Attributes:
        tta: flip test-time augmentation (8 flips in 3D, 4 in 2D; two-stage paper, sec. 3.3).
        sliding_window: ``auto`` (whole volume, sliding window when memory is short), ``always``
            or ``never``.
        overlap: sliding-window overlap (fraction of the window).
        precision: ``auto`` (default: bf16 autocast where the device computes bf16 natively,
            :func:`cascadeseg.runtime.native_bf16`, i.e. CUDA GPUs with bf16 and CPUs with
            AVX512-BF16 or AMX; fp32 elsewhere), ``fp32`` or ``bf16`` (autocast; falls back to
            fp32 with a note where the device has no native bf16).
        ensemble_mode: how the snapshots of one run share the TTA flips
            (:func:`cascadeseg.inference.ensemble.flip_plan`): ``paired`` (default: snapshot
            ``i`` runs flip ``i``, the two-stage paper's 8 passes for 8 snapshots; other counts:
            :func:`cascadeseg.inference.tta.paired_flip_indices`) or ``product`` (every flip on
            every snapshot: 64 passes for 8). Other members run every flip in both modes.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        batch_slices: axial slices per network call for 2D models.
        threshold: probability threshold of each region.
        tc_threshold_without_et: TC's threshold in a case whose label map at ``threshold`` holds
            no enhancing tumour (``None``: ``threshold``;
            :func:`cascadeseg.data.labels.probabilities_to_label`).
        et_min_voxels: ET post-processing threshold in voxels (source grid); ``None`` uses the
            value stored with the model(s) (``tune-postprocess``'s ``postprocess.json``, else the
            checkpoint's ``extra``, else the recipe's ``inference.et_min_voxels`` when non-zero:
            :func:`~cascadeseg.inference.loading.stored_thresholds`), or 0 (off) if none is.
        min_lesion_voxels: per-region component-size thresholds in voxels (source grid),
            ``{"wt": N, "tc": N, "et": N}`` or a subset; regions left out use the values stored
            with the model(s), else 0 (off); see :mod:`~.lesion_postprocess`.
        labels: label convention of written label maps; ``None`` keeps the input's.
        save_probabilities: also write ``<case_id>_probabilities.nii.gz``.
        save_uncertainty: also write ``<case_id>_uncertainty.nii.gz``.
        overwrite: replace existing outputs (otherwise such cases are skipped, except that
            asked-for probability or uncertainty maps missing beside a segmentation of the same
            models are added).
        backend: ``torch`` or ``onnx`` (ONNX Runtime).
        memory_budget_gb: memory a whole-volume pass may use before ``auto`` picks the sliding
            window (``None``: 70% of the free memory of the device).
        fuse_brain_mask: zero probabilities outside the brain; ``None`` does it for 2D members
            (CU-Net, as that paper does, and the 2D U-Net, trained on brain pixels only).
        channels_last: run 3D PyTorch networks in the channels-last memory format; ``None``:
            on the CPU only, where it routes every convolution (also the 4-channel input layer
            and the transposed convolutions) to oneDNN instead of PyTorch's slow fallback
            (measured about 1.5x faster for the two-stage network on this 2-core CPU).
        flips_per_call: 3D TTA flips stacked into one network call (see
            :func:`~cascadeseg.inference.tta.flip_tta_moments`); ``None``: chosen by
            :func:`~.memory.default_flips_per_call` (2 on the CPU, up to 8 on CUDA, when they fit
            the memory budget; else 1). On the CPU PyTorch runs batch-1 3D convolutions of narrow
            layers (seen with the profiler: 8 channels at 48^3, 16 at 24^3) on its slow native
            kernel instead of oneDNN; stacking two flips measured 1.55x faster per flip for the
            CPU cascade (``two_stage_cpu``) on a 2-mm brain (4 flips: 1.28x, 8: 1.18x); whole
            prediction of the demo's 8 held-out cases 65 s instead of 82 s. The other kernel
            rounds differently: probabilities moved by at most 0.008 there, and at most 207 of
            8.9 million voxels per case changed label.
        progress: show a progress bar and a line per case.
        compile: run PyTorch members through ``torch.compile`` (inductor). Measured on an
            H100 (2026-11-26, paper width, 144x176x160, bf16): one pass 0.031 s against 0.158 s
            eager, after 37 s of compilation; the compiled code is specialised to the input
            shape, and every case's brain box has its own, so it pays off for many passes (TTA,
            snapshots, many cases after the first recompilations make the shape dynamic), not
            for one short case. Off by default; measured on the GPU only.
        cache_dir: folder of a preprocessing cache (:mod:`cascadeseg.data.cache`): a case
            predicted again (other models of the same recipe, added maps) is not preprocessed
            again; ``None`` (default) keeps nothing.
        tta_region: where the passes after a case's first run (:mod:`~.roi`, issue 20):
            ``volume`` (default: every pass on the whole volume) or ``tumour`` (on the first
            pass's tumour box grown by ``tta_region_margin``; outside it the first pass stands
            alone; 3D members only) or ``auto`` (the box on the CPU, the volume on a GPU;
            :func:`~.roi.resolve_tta_region`, resolved by :func:`options_from_recipe`). The
            dataclass default stays ``volume``; the paper-width 3D recipes store ``auto``.
        tta_region_threshold: a voxel is tumour for the box when any region probability of the
            first pass exceeds it (default 0.05: ten times below the label threshold, so the
            box holds every voxel the first pass comes near to labelling).
        tta_region_margin: voxels added to every side of the box (default 16: the coarsest
            down-sampling block of the two-stage network, whose size multiple is 16, so the
            deepest features of each box-edge voxel still see the real neighbourhood of a
            whole block; the receptive field is larger, and whether labels change is what
            the benchmark measures).
        missing: sequences to treat as missing in every case (``--missing t1ce``): their files
            are ignored and the channels zero-filled (:mod:`cascadeseg.data.missing`), to
            measure or show a model on complete cases as if those sequences were absent.
        substitute_missing: how a model trained without sequence dropout gets a missing
            sequence (``--substitute-missing``): ``None`` (the default: such a case is an
            error), ``sibling`` or ``zero``
            (:func:`cascadeseg.data.missing.substitute_missing`). Models trained with sequence
            dropout ignore it.
        settings_origin: where each recipe-resolved setting (``tta``, ``threshold``, ...:
            :data:`~.loading.RECIPE_INFERENCE_KEYS`) came from (``option``, ``recipe`` or
            ``default``), recorded in each case's JSON; set by :func:`options_from_recipe`.
    """

    tta: bool = True
    sliding_window: str = "auto"
    overlap: float = 0.5
    precision: str = "auto"
    device: str = "auto"
    batch_slices: int = 16
    threshold: float = 0.5
    tc_threshold_without_et: float | None = None
    et_min_voxels: int | None = None
    min_lesion_voxels: Mapping[str, int] | None = None
    labels: str | None = None
    save_probabilities: bool = False
    save_uncertainty: bool = False
    overwrite: bool = False
    backend: str = "torch"
    memory_budget_gb: float | None = None
    fuse_brain_mask: bool | None = None
    channels_last: bool | None = None
    flips_per_call: int | None = None
    progress: bool = True
    cache_dir: str | None = None
    ensemble_mode: str = "paired"
    compile: bool = False
    tta_region: str = "volume"
    tta_region_threshold: float = 0.05
    tta_region_margin: int = 16
    missing: tuple[str, ...] = ()
    substitute_missing: str | None = None
    settings_origin: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.sliding_window not in POLICIES:
            raise ConfigError(
                f"sliding_window must be one of {POLICIES}, got {self.sliding_window!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.ensemble_mode not in ENSEMBLE_MODES:
            raise ConfigError(
                f"ensemble_mode must be one of {ENSEMBLE_MODES}, got {self.ensemble_mode!r}"
            )
        if self.tta_region not in TTA_REGIONS:
            raise ConfigError(f"tta_region must be one of {TTA_REGIONS}, got {self.tta_region!r}")
        if not 0.0 < self.tta_region_threshold < 1.0:
            raise ConfigError(
                f"tta_region_threshold must be in (0, 1), got {self.tta_region_threshold}"
            )
        if self.tta_region_margin < 0:
            raise ConfigError(f"tta_region_margin must be >= 0, got {self.tta_region_margin}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        low = self.tc_threshold_without_et
        if low is not None and not 0.0 < low < 1.0:
            raise ConfigError(f"tc_threshold_without_et must be in (0, 1), got {low}")
        if self.batch_slices < 1:
            raise ConfigError(f"batch_slices must be >= 1, got {self.batch_slices}")
        if self.flips_per_call is not None and self.flips_per_call < 1:
            raise ConfigError(f"flips_per_call must be >= 1, got {self.flips_per_call}")
        if self.et_min_voxels is not None and self.et_min_voxels < 0:
            raise ConfigError(f"et_min_voxels must be >= 0, got {self.et_min_voxels}")
        if self.min_lesion_voxels is not None:
            check_min_lesion_voxels(self.min_lesion_voxels, "predict options")
        # Checked and put in the order of the modalities (a frozen field, set once here).
        object.__setattr__(self, "missing", parse_sequences(self.missing, "missing"))
        if self.substitute_missing is not None and self.substitute_missing not in SUBSTITUTES:
            raise ConfigError(
                f"substitute_missing must be one of {', '.join(SUBSTITUTES)}, got "
                f"{self.substitute_missing!r}"
            )
        if self.labels is not None and self.labels not in CONVENTIONS:
            raise ConfigError(
                f"labels must be one of {', '.join(sorted(CONVENTIONS))}, got {self.labels!r}"
            )


#: A flag's value that sets an optional recipe value to ``None`` (``--tc-threshold-without-et
#: off``), where ``None`` in ``given`` means "not given".
OFF = "off"


def options_from_recipe(
    models: Sequence[LoadedModel], given: Mapping[str, Any], **other: Any
) -> PredictOptions:
    """Prediction options with one source of truth for the recipe's ``inference.*`` values.

    For each of ``tta``, ``sliding_window``, ``overlap``, ``precision``, ``threshold``,
    ``tc_threshold_without_et`` and the ``tta_region*`` settings
    (:data:`~.loading.RECIPE_INFERENCE_KEYS`): the
    value in ``given`` when it is not ``None`` (a command-line flag; :data:`OFF` stands for
    ``None``), else the value stored
    with the models' recipe (:func:`cascadeseg.inference.loading.recipe_inference_values`),
    else :class:`PredictOptions`' default. Where each came from is kept in
    ``settings_origin`` (and each case's JSON).

    Args:
        models: the loaded ensemble.
        given: explicit values by field name; ``None`` means "not given".
        other: the remaining :class:`PredictOptions` fields.

    Raises:
        ConfigError: an explicit or stored value is invalid (a stored one names the checkpoint).
    """
    stored, where = recipe_inference_values(models)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    base = PredictOptions(**other)
    for key in RECIPE_INFERENCE_KEYS:
        if isinstance(given.get(key), str) and given[key] == OFF:
            values[key], origin[key] = None, "option"
        elif given.get(key) is not None:
            values[key], origin[key] = given[key], "option"
        elif key in stored:
            try:
                dataclasses.replace(base, **{key: stored[key]})
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{where}: stored recipe value inference.{key}: {exc}") from None
            values[key], origin[key] = stored[key], "recipe"
        else:
            origin[key] = "default"
    options = resolve_region(dataclasses.replace(base, **values, settings_origin=origin), models)
    check_tta_region(models, options.tta_region)
    return options


def resolve_region(options: PredictOptions, models: Sequence[LoadedModel]) -> PredictOptions:
    """``options`` with ``tta_region="auto"`` resolved for its device and ``models``
    (:func:`~.roi.resolve_tta_region`; the origin says ``(auto on cpu)``), so that what runs,
    what each case's JSON records and what a rerun compares it with are one value."""
    if options.tta_region != "auto":
        return options
    device_type = resolve_device(options.device).type
    origin = dict(options.settings_origin)
    origin["tta_region"] = f"{origin.get('tta_region', 'default')} (auto on {device_type})"
    region = resolve_tta_region("auto", device_type, models)
    return dataclasses.replace(options, tta_region=region, settings_origin=origin)


def run_precision(options: PredictOptions, device: torch.device) -> tuple[str, str]:
    """The precision prediction runs in and a note when it is not the one asked for.

    :func:`~cascadeseg.runtime.effective_precision` for the PyTorch backend; ONNX Runtime runs
    the exported fp32 graph, where autocast has no effect.
    """
    precision, note = effective_precision(options.precision, device)
    if options.backend == "onnx" and precision != "fp32":
        if options.precision == "bf16":
            note = "the onnx backend runs the exported fp32 graph: fp32 used"
        precision = "fp32"
    return precision, note


def resolve_et_min_voxels(
    options: PredictOptions, models: Sequence[LoadedModel]
) -> tuple[int, str]:
    """The ET threshold predict applies and where it comes from: ``options.et_min_voxels``
    (``--et-min-voxels``: ``option``), else the models' stored value (``postprocess.json``, the
    checkpoint's ``extra`` or the recipe's ``inference.et_min_voxels``; the median over an
    ensemble: ``stored``), else 0 (``default (off)``)."""
    if options.et_min_voxels is not None:
        return options.et_min_voxels, "option"
    stored = ensemble_et_min_voxels(models)
    if stored is not None:
        return stored, "stored"
    return 0, "default (off)"
