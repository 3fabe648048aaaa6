"""Run configuration: frozen dataclasses, loaded from YAML, overridable with ``key=value``.

A recipe in ``configs/`` is a YAML file with the sections of :class:`Config`. Any field can be
overridden from the command line with a dotted key, e.g. ``optim.lr=3e-4`` or
``data.patch_size=[64,64,64]``; values are parsed as YAML scalars/lists. Unknown keys are errors
(a typo never goes unnoticed). The resolved configuration is written into every run directory and
checkpoint (:func:`to_dict` / :func:`from_dict`), so a run can be rebuilt from its checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cascadeseg.config_rules import (
    INFERENCE_PRECISIONS,
    MISSING_FILLS,
    OPTIMIZERS,
    PRECISIONS,
    RULES,
    SCHEDULES,
    SPLITS,
    model_arg_problem,
    validate,
)
from cascadeseg.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "INFERENCE_PRECISIONS",
    "MISSING_FILLS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RULES",
    "SCHEDULES",
    "SPLITS",
    "Config",
    "DataConfig",
    "InferenceConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "model_arg_problem",
    "recipe_dirs",
    "resolve_recipe",
    "save_config",
    "to_dict",
    "validate",
]


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is prepared.

    Attributes:
        layout: dataset layout name, or ``None`` to detect it.
        label_convention: override of the layout's label convention (``None``: the layout's).
        target_spacing: resample to this voxel size in mm (``None``: keep the source spacing).
        label_resampling: how the label map reaches ``target_spacing``: ``nearest`` (the
            default: one source voxel per target voxel), ``regions`` (each
            nested region WT/TC/ET resampled linearly, kept where it covers more than half a
            voxel, the nearest voxel breaking exact ties; nnU-Net resamples each label's mask
            the same way), ``soft`` (the same label
            map, and the 3D crops' region targets are the fractions themselves); see
            :func:`cascadeseg.data.preprocess_ops.resample_label` and
            docs/results-label-resampling.md.
        n4: N4 bias-field correction (SimpleITK) before normalisation (CU-Net paper, sec. 3.1).
        n4_shrink_factor: N4 fits the field on the resampled image shrunk by this factor.
        n4_iterations: maximum iterations per N4 fitting level; one entry per level.
        n4_channels: channels N4 corrects (0 FLAIR, 1 T1, 2 T1ce, 3 T2); ``None``: all.
        crop_margin: voxels kept around the brain bounding box.
        patch_size: training crop (3D: 3 ints; 2D models use the first two as slice size).
        foreground_prob: probability that a 3D crop is centred on a tumour voxel (0 = uniform,
            as the two-stage paper's random crops).
        foreground_sampling: how a centred crop picks its centre: ``"voxel"``, any tumour
            voxel alike; ``"region"``, first one of the regions the case has (WT, TC, ET)
            uniformly, then one of its voxels (nnU-Net's oversampling per class): small cores
            are then centred as often as the edema around them
            (:func:`cascadeseg.data.augment.region_coordinates`).
        crop_overhang: fraction of a 3D crop (0 to 0.5) that may reach past each border of the
            preprocessed (brain-cropped) volume, padded with background. 0: crops stay inside,
            and the brain's periphery is rarely in one; 0.5: crop centres uniform over the
            volume, close to the paper's crops from the whole BraTS grid
            (:func:`cascadeseg.data.augment.draw_crop_start`).
        bias_field_prob: probability that a training crop is multiplied by a random smooth
            bias field (3D crops; 0 = off, as both papers). Beyond the papers: MONAI's
            ``RandBiasField``/TorchIO's ``RandomBiasField`` on z-scored data
            (:func:`cascadeseg.data.augment.apply_bias_field`).
        bias_field_strength: range of the standard deviation of the log field.
        bias_field_spacing_mm: distance between the field's control points (mm).
        bias_field_groups: groups of channel numbers (0 FLAIR, 1 T1, 2 T1ce, 3 T2) that share
            one field, e.g. ``[[1, 2]]``: T1 and T1ce, acquired before and after contrast in
            one session, get the same field, and the enhancement (T1ce over T1) is kept; the
            other channels each get their own. Empty (default): every channel its own.
        bias_field_early_only: the field on the early crops alone (the first
            ``early_patch_end`` of the run, at ``early_patch_size``; needs them): the run ends
            on crops whose fields are the cases' own, as ``sequence_dropout_end`` ends it on
            complete samples.
        compartment_contrast_prob: probability that a training crop's tumour compartments
            (necrosis or non-enhancing core, edema, enhancing tumour) each have their
            intensities multiplied by their own random factor per sequence (3D crops; 0 = off,
            as both papers). Beyond the papers: SynthSeg draws every label's intensities, this
            changes them mildly (:func:`cascadeseg.data.augment.compartment_log_field`).
        compartment_contrast: the factors are uniform in ``[1 - this, 1 + this]``.
        compartment_contrast_channels: how many sequences of the crop, drawn at random, get
            factors (the others keep their contrasts); 0: all four.
        enhancement_erase_prob: probability that a training crop's enhancing tumour loses its
            enhancement (T1ce there replaced by T1 on T1ce's scale) and is labelled
            non-enhancing core, so cores without enhancement are met in more crops than the
            few such cases give (3D crops; 0 = off, as both papers;
            :func:`cascadeseg.data.augment.erase_enhancement`).
        slice_context: neighbouring slices on each side added as extra channels (2D; 0 = off).
        drop_empty_slices: fraction of tumour-free slices dropped each epoch (CU-Net: about 0.3).
        cache_dir: where preprocessed cases are cached (``None``: ``<data>/.cascadeseg_cache``).
        num_workers: data-loader worker processes.
        folds: number of cross-validation folds (two-stage paper: 5).
        fold: which fold is the validation fold.
        split: ``"kfold"``, ``"cunet"`` (3:1:1 train/val/test as the CU-Net paper) or ``"all"``
            (every case trains, no validation: fixed epochs, snapshots still taken; the
            two-stage paper's 7 all-data models of its 12-model ensemble).
        split_stratify: ``"none"`` (the papers, nnU-Net: folds dealt from one shuffled list)
            or ``"kind"``: ``kfold`` folds stratified by kind of tumour (enhancing,
            non-enhancing, none; :func:`cascadeseg.data.splits.kfold_split`), so that a rare
            kind is not left mostly in validation. Reads every case's labels before the split.
        crop_region: where 3D crops are drawn: ``"brain"`` (inside the preprocessed,
            brain-cropped volume, with ``crop_overhang``) or ``"volume"`` (uniformly over the
            original image grid, e.g. 240 x 240 x 155 for BraTS, as the two-stage paper crops;
            the parts outside the brain box are background padding).
        case_balance: how 3D training crops choose their case: each case is drawn with weight
            ``1 / n_k ** case_balance``, ``n_k`` the number of training cases of the same kind
            of tumour: enhancing, non-enhancing or none (0: uniform, both papers; 1: every kind
            an equal share; :mod:`cascadeseg.data.case_balance`). Lifts cases without
            enhancing tumour, rare in the data, whose non-enhancing core is otherwise left
            unlearnt.
        sequence_dropout: probability that a training sample loses some of its four sequences
            (0 = off; :class:`cascadeseg.data.missing.SequenceDropout`). A model trained with it
            accepts cases with missing sequences in ``predict``.
        sequence_dropout_max: most sequences one sample loses (1 to 3; at least one stays).
        sequence_dropout_start: share of the run (of its schedule: epochs, or the time budget
            with ``train.time_schedule``) trained on complete samples before sequence dropout
            begins (0: from the first step). The network first learns from all four sequences,
            then to do without some.
        sequence_dropout_end: share of the run after which sequence dropout stops (1: never):
            the run ends on complete samples, which its final, small learning rates then fit.
        missing_fill: how a missing sequence reaches the network (with ``sequence_dropout`` > 0
            only): ``mask`` (default: zero-filled, plus four binary availability channels) or
            ``zero`` (zero-filled alone); see :mod:`cascadeseg.data.missing`.
        early_patch_size: smaller 3D crops ``(X, Y, Z)`` for the start of the run (``None``:
            off): a step on them costs less, so a run of a fixed wall-clock budget makes more
            steps, and the run ends on ``patch_size`` crops, whose context it then learns. Sides
            above ``patch_size`` are cut to it (:func:`early_crop_size`); 3D models only.
        early_patch_end: share of the run (as ``sequence_dropout_end``: of its epochs, or of
            the time budget with ``train.time_schedule``) trained on ``early_patch_size``.
    """

    layout: str | None = None
    label_convention: str | None = None
    target_spacing: tuple[float, float, float] | None = None
    label_resampling: str = "nearest"
    n4: bool = False
    n4_shrink_factor: int = 4
    n4_iterations: tuple[int, ...] = (50, 50, 50, 50)
    n4_channels: tuple[int, ...] | None = None
    crop_margin: int = 4
    patch_size: tuple[int, ...] = (128, 128, 128)
    foreground_prob: float = 0.0
    foreground_sampling: str = "voxel"
    crop_overhang: float = 0.0
    bias_field_prob: float = 0.0
    bias_field_strength: tuple[float, float] = (0.05, 0.2)
    bias_field_spacing_mm: float = 60.0
    bias_field_groups: tuple[tuple[int, ...], ...] = ()
    bias_field_early_only: bool = False
    compartment_contrast_prob: float = 0.0
    compartment_contrast: float = 0.2
    compartment_contrast_channels: int = 0
    enhancement_erase_prob: float = 0.0
    slice_context: int = 0
    drop_empty_slices: float = 0.3
    cache_dir: str | None = None
    num_workers: int = 2
    folds: int = 5
    fold: int = 0
    split: str = "kfold"
    split_stratify: str = "none"
    crop_region: str = "brain"
    case_balance: float = 0.0
    sequence_dropout: float = 0.0
    sequence_dropout_max: int = 3
    sequence_dropout_start: float = 0.0
    sequence_dropout_end: float = 1.0
    missing_fill: str = "mask"
    early_patch_size: tuple[int, ...] | None = None
    early_patch_end: float = 0.0


def early_crop_size(data: DataConfig) -> tuple[int, ...] | None:
    """The size of a run's early crops: ``data.early_patch_size``, each side at most
    ``patch_size``'s; ``None`` without an early phase (not set, or not smaller than the patch)."""
    if data.early_patch_size is None:
        return None
    size = tuple(min(e, p) for e, p in zip(data.early_patch_size, data.patch_size))
    return None if size == tuple(data.patch_size) else size


@dataclass(frozen=True)
class ModelConfig:
    """Which registered model and its constructor overrides (``cascadeseg info`` lists them)."""

    name: str = "two_stage"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """Loss settings.

    Attributes:
        interp_decoder_weight: weight of the two-stage interpolation decoder's Dice loss.
        dice_eps: epsilon in the denominator of the soft Dice (Eq. 2 of the two-stage paper).
        dice_smooth_nr: numerator smoothing of the soft Dice (paper: 0; set it equal to
            ``dice_eps`` so an empty region predicted empty scores 1).
        dice_batch: pool the Dice sums over the batch (nnU-Net's batch Dice; paper: per sample).
        bce_weight: weight of a region-wise binary cross-entropy added to the Dice (paper: 0).
        region_weights: factors of the ``[WT, TC, ET]`` loss terms, Dice and cross-entropy alike
            (paper: ``[1, 1, 1]``, a plain sum; region losses only).
        lws: loss weighted sampling for CU-Net (Eqs. 1-3); off = plain cross-entropy over brain.
        lws_alpha: contour weight alpha (CU-Net: 2).
        lws_beta: positive/negative balance beta (CU-Net: 1.5).
        contour_width: width of the tumour contour region S4 in pixels (CU-Net: about 10).
        aux_weight: initial weight of the auxiliary losses (CU-Net Eq. 4's omega: 0.1).
        aux_decay: factor applied to ``aux_weight`` every ``aux_decay_every`` epochs (0.1).
        aux_decay_every: epochs between decays (10).
        aux_min: floor of the auxiliary weight (1e-3).
        boundary_weight: BFCN: weight of the boundary branch's cross-entropy (1).
        boundary_width: BFCN: width in pixels of the label-boundary target (even, 2).
    """

    interp_decoder_weight: float = 1.0
    dice_eps: float = 1e-5
    dice_smooth_nr: float = 0.0
    dice_batch: bool = False
    bce_weight: float = 0.0
    region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lws: bool = True
    lws_alpha: float = 2.0
    lws_beta: float = 1.5
    contour_width: int = 10
    aux_weight: float = 0.1
    aux_decay: float = 0.1
    aux_decay_every: int = 10
    aux_min: float = 1e-3
    boundary_weight: float = 1.0
    boundary_width: int = 2


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: initial learning rate.
        weight_decay: L2 weight decay.
        momentum: SGD momentum.
        schedule: ``poly`` (two-stage Eq. 3 with linear warm-up), ``step`` (CU-Net: x``step_gamma``
            every ``step_every`` epochs down to ``min_lr``) or ``constant``.
        warmup_epochs: linear warm-up epochs (two-stage: 5).
        poly_power: exponent of the poly schedule (0.9).
        step_every: epochs between step decays.
        step_gamma: step decay factor.
        min_lr: lower bound of the learning rate.
        grad_clip: clip the global gradient norm to this value (``None``: off). The papers do not
            clip; nnU-Net clips at 12, which keeps small CPU recipes from diverging at a brisk lr.
    """

    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.9
    schedule: str = "poly"
    warmup_epochs: int = 5
    poly_power: float = 0.9
    step_every: int = 10
    step_gamma: float = 0.1
    min_lr: float = 0.0
    grad_clip: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings.

    Attributes:
        epochs: number of epochs.
        iters_per_epoch: iterations per epoch (``None``: one pass over the training cases/slices).
        batch_size: per-process batch size.
        precision: ``fp32``, ``bf16`` (autocast), ``fp16`` (autocast + grad scaler) or ``auto``
            (bf16 where the device computes it natively, i.e. CUDA Ampere+ or AVX-512/AMX CPUs,
            else fp32: AVX2 CPUs emulate bf16 convolutions, about 13x slower than fp32).
        checkpointing: gradient checkpointing per residual block.
        snapshots: keep the weights of the last N epochs as snapshots (two-stage: 8).
        val_every: validate every N epochs (0: never).
        val_cases: validate on at most this many validation cases (``None``: all of them).
        early_stop_patience: stop when the validation loss has not reached a new minimum for N
            validations in a row (CU-Net sec. 3.2: "until there is an obvious uptrend in the
            validation loss"; patience as in Keras/Lightning ``EarlyStopping``); 0 = off.
        monitor: what early stopping watches on the validation cases: ``dice`` (the soft-Dice
            loss of the predicted region probabilities) or ``objective`` (the training loss
            itself, e.g. CU-Net's Eq. 4, computed on the validation slices: the paper's
            "validation loss").
        skip_nonfinite: skip steps with a non-finite loss instead of stopping.
        max_minutes: wall-clock budget of training (summed over resumed sessions); training stops
            cleanly after the current iteration when it is spent and still writes checkpoints
            (``None``: off).
        time_schedule: with ``max_minutes``, drive the learning-rate schedule by the spent fraction
            of the budget whenever that is ahead of the epoch count, so the poly decay ends when
            the budget does (CPU recipes). Such runs are not bit-reproducible.
        checkpoint_every: also write ``checkpoints/last.pt`` every N iterations (0: only at the
            end of each epoch).
        stage1_first: share of the training (of the epochs, or of the time budget with
            ``time_schedule``) in which a cascade trains its stage 1 alone before the whole
            cascade trains end to end, as nnU-Net trains a cascade's first stage before the
            second; 0 = off (the two-stage paper trains end to end from the start). The phase
            changes at an epoch boundary. Validation in the first phase scores stage 1;
            ``best.pt``, snapshots and early stopping use the end-to-end epochs only.
        device: ``auto``, ``cpu`` or ``cuda``.
        channels_last: use channels-last memory format.
        compile: ``torch.compile`` the model.
        tensorboard: also log to TensorBoard when it is installed.
        ema_width: validate, keep and save (``best.pt``, snapshots) a moving average of the
            weights instead of the last iterate: the power-function EMA whose profile has this
            relative width (share of the run; :mod:`cascadeseg.training.averaging`), e.g. 0.1
            for about the last quarter of the steps; 0 = off (both papers).
    """

    epochs: int = 405
    iters_per_epoch: int | None = None
    batch_size: int = 1
    precision: str = "bf16"
    checkpointing: bool = False
    snapshots: int = 8
    val_every: int = 1
    val_cases: int | None = None
    early_stop_patience: int = 0
    monitor: str = "dice"
    skip_nonfinite: bool = False
    max_minutes: float | None = None
    time_schedule: bool = False
    checkpoint_every: int = 0
    stage1_first: float = 0.0
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    tensorboard: bool = True
    ema_width: float = 0.0


@dataclass(frozen=True)
class InferenceConfig:
    """Defaults used by ``predict`` for models trained with this recipe.

    Attributes:
        tta: 8-flip test-time augmentation.
        threshold: probability threshold of each region.
        tc_threshold_without_et: TC's threshold in a case whose label map holds no enhancing
            tumour at ``threshold`` (``null``: ``threshold``, both papers). Neither paper has it:
            a short CPU run sees few cases without enhancing tumour and its core probability is
            under-confident there (0.3-0.7 inside the core; :func:`cascadeseg.data.labels.
            probabilities_to_label`). Cases with enhancing tumour keep ``threshold``.
        et_min_voxels: ET smaller than this becomes necrosis (two-stage sec. 3.4); 0 = off.
        sliding_window: ``auto`` (fallback when memory is short), ``always`` or ``never``.
        overlap: sliding-window overlap.
        precision: ``auto`` (bf16 where the device computes it natively, else fp32), ``fp32``
            or ``bf16``.
        tta_region: where the TTA passes after a case's first run: ``volume`` (every pass on
            the whole volume), ``tumour`` (on the first pass's tumour box plus a margin; see
            ``cascadeseg.inference.roi``) or ``auto`` (``tumour`` on the CPU, ``volume`` on a
            GPU). Default ``volume``; the paper-width 3D recipes set ``auto`` (measured in
            docs/performance.md: 3.6x faster per case on a 2-core CPU, Dice within 0.005).
        tta_region_threshold: a voxel belongs to the tumour box when any region probability
            of the first pass exceeds it.
        tta_region_margin: voxels added to every side of the tumour box (16: one coarsest
            block of the two-stage network).
    """

    tta: bool = True
    threshold: float = 0.5
    tc_threshold_without_et: float | None = None
    et_min_voxels: int = 0
    sliding_window: str = "auto"
    overlap: float = 0.5
    precision: str = "auto"
    tta_region: str = "volume"
    tta_region_threshold: float = 0.05
    tta_region_margin: int = 16


@dataclass(frozen=True)
class Config:
    """A whole recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        # Every way of building a Config (YAML, overrides, checkpoints, dataclasses.replace)
        # passes here, so a bad value is refused where it is set, naming its key.
        validate(self)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list/scalars of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-4" (no dot) as a string; accept any float literal.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} "
            f"(valid: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any], cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Build a config dataclass from a nested dict, checking keys and types."""
    return _from_dict(cls, data or {})


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(cfg: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Apply ``key=value`` overrides (values parsed as YAML) to a config dataclass."""
    tree = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value ({exc})") from None
        _set_dotted(tree, key, value)
    return from_dict(tree, type(cfg))


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a recipe YAML (``None``: the defaults) and apply overrides.

    ``path`` may be a file or the name of a shipped recipe (``two_stage_cpu``); shipped recipes
    live in the package's ``configs`` folder (``configs/`` at the repository root links there).
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = resolve_recipe(path)
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{file}: cannot read config ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: a config file must hold a mapping")
        data = loaded or {}
    return apply_overrides(from_dict(data, Config), overrides)


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes by name (the repository's ``configs/`` links to it)."""
    return [Path(__file__).resolve().parent / "configs"]


def resolve_recipe(path: str | Path) -> Path:
    """A recipe file from a path or a shipped recipe's name (with or without ``.yaml``)."""
    file = Path(path)
    if file.is_file():
        return file
    name = file.name if file.suffix in (".yaml", ".yml") else f"{file.name}.yaml"
    for folder in recipe_dirs():
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{path}: no such config file or shipped recipe")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
