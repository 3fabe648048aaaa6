"""Figures of an evaluation: box plots (CU-Net Fig. 4) and overlays (CU-Net Fig. 3).

Everything renders with matplotlib's Agg backend (no display needed) and is written as PNG.

* :func:`boxplot_figure`: one panel per metric (Dice, sensitivity, ...; axis label and range from
  the metric's :class:`~cascadeseg.evaluation.metrics.MetricSpec`), groups WT / TC / ET, one
  box per method side by side; the solid line in a box is the median and the dotted line the mean,
  as in Fig. 4 of the CU-Net paper (the mean is also marked with a diamond so it shows when the two
  lines coincide).
* :func:`overlay_figure`: one axial slice, from left to right FLAIR, T1ce, ground truth and each
  method's prediction, in the colours of the CU-Net paper (Figs. 2-3): purple non-tumour brain,
  blue edema, yellow enhancing tumour, green necrosis; black outside the brain.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot's import

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cascadeseg.data.labels import ED, ET, NCR, REGIONS
from cascadeseg.evaluation.metrics import metric_spec

#: RGB colours (0-1) of the label panels, as in the CU-Net paper's Figs. 2-3.
LABEL_COLOURS: dict[str, tuple[float, float, float]] = {
    "outside": (0.0, 0.0, 0.0),
    "non-tumour": (0.33, 0.10, 0.45),  # purple
    "edema": (0.10, 0.35, 0.95),  # blue
    "enhancing tumour": (1.00, 0.90, 0.10),  # yellow
    "necrosis": (0.15, 0.80, 0.25),  # green
}
# matplotlib's "tab10" qualitative palette (colour-blind friendlier than the default cycle).
_METHOD_COLOURS: tuple[tuple[float, float, float], ...] = tuple(
    tuple(float(c) for c in plt.get_cmap("tab10")(i)[:3])  # type: ignore[misc]
    for i in range(10)
)


def pick_slice(ref_label: np.ndarray, predictions: Sequence[np.ndarray] = ()) -> int:
    """The axial slice (index along the last axis) with the largest tumour area.

    The reference decides; when it holds no tumour, the union of the predictions does; when
    nothing holds tumour, the middle slice.

    Args:
        ref_label: ``(X, Y, Z)`` internal label map.
        predictions: ``(X, Y, Z)`` internal label maps.
    """
    area = (np.asarray(ref_label) > 0).sum(axis=(0, 1))
    if not area.any():
        area = sum(((np.asarray(p) > 0).sum(axis=(0, 1)) for p in predictions), np.zeros_like(area))
    if not np.any(area):
        return int(ref_label.shape[2] // 2)
    return int(np.argmax(area))


def label_to_rgb(label: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` internal labels -> ``(H, W, 3)`` float RGB in the paper's colours.

    Args:
        label: 2D internal label map.
        brain_mask: 2D bool mask of the brain (purple); ``None`` paints every non-tumour voxel
            purple.
    """
    label = np.asarray(label)
    rgb = np.zeros((*label.shape, 3), dtype=np.float32)
    inside = np.ones(label.shape, bool) if brain_mask is None else np.asarray(brain_mask, bool)
    rgb[inside | (label > 0)] = LABEL_COLOURS["non-tumour"]
    rgb[label == ED] = LABEL_COLOURS["edema"]
    rgb[label == ET] = LABEL_COLOURS["enhancing tumour"]
    rgb[label == NCR] = LABEL_COLOURS["necrosis"]
    return rgb


def _display(slice2d: np.ndarray) -> np.ndarray:
    # Arrays are (X, Y) in file order; transposing puts Y on the rows, which for the BraTS/SRI24
    # affine (y flipped) shows anterior at the top.
    return np.asarray(slice2d).T


def _window(image2d: np.ndarray) -> tuple[float, float]:
    values = image2d[image2d != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def overlay_figure(
    flair: np.ndarray | None,
    t1ce: np.ndarray | None,
    ref_label: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    slice_index: int | None = None,
    title: str | None = None,
) -> Path:
    """CU-Net Fig. 3: FLAIR, T1ce, ground truth and each method's prediction on one axial slice.

    Args:
        flair: ``(X, Y, Z)`` FLAIR volume, or ``None`` (panel left out).
        t1ce: ``(X, Y, Z)`` T1ce volume, or ``None``.
        ref_label: ``(X, Y, Z)`` internal reference label map.
        predictions: method name -> ``(X, Y, Z)`` internal label map.
        path: the PNG to write.
        slice_index: axial slice; ``None`` picks the one with the largest tumour area.
        title: figure title (e.g. the case id and its Dice scores).

    Returns:
        ``path``.
    """
    z = pick_slice(ref_label, list(predictions.values())) if slice_index is None else slice_index
    panels: list[tuple[str, np.ndarray, bool]] = []
    for name, image in (("FLAIR", flair), ("T1ce", t1ce)):
        if image is not None:
            panels.append((name, _display(image[:, :, z]), False))
    brain = None
    for image in (flair, t1ce):
        if image is not None:
            brain = image[:, :, z] != 0
            break
    panels.append(
        ("Ground truth", label_to_rgb(_display(ref_label[:, :, z]), _maybe_t(brain)), True)
    )
    for name, pred in predictions.items():
        panels.append((name, label_to_rgb(_display(pred[:, :, z]), _maybe_t(brain)), True))

    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), squeeze=False)
    for ax, (name, data, is_rgb) in zip(axes[0], panels):
        if is_rgb:
            ax.imshow(data, interpolation="nearest")
        else:
            lo, hi = _window(data)
            ax.imshow(data, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [
        Patch(color=LABEL_COLOURS[k], label=k)
        for k in ("non-tumour", "edema", "enhancing tumour", "necrosis")
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{title or ''}  (axial slice {z})".strip(), fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.93))
    return _save(fig, path)


def _maybe_t(mask: np.ndarray | None) -> np.ndarray | None:
    return None if mask is None else _display(mask)


def boxplot_figure(
    methods: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = ("dice", "sens"),
    title: str | None = None,
) -> Path:
    """CU-Net Fig. 4: per-region box plots of each metric, methods side by side.

    Args:
        methods: method name -> ``{column: (N,) values}`` with columns such as ``dice_wt``;
            NaN values are left out (the legend says how many per method).
        path: the PNG to write.
        metrics: names of registered metrics (:data:`~cascadeseg.evaluation.metrics.METRICS`:
            ``dice``, ``sens``, ``spec``, ``hd95``, ...), one panel each.
        title: figure title.

    Returns:
        ``path``.
    """
    specs = [metric_spec(name) for name in metrics]
    names = list(methods)
    n_methods = max(len(names), 1)
    fig, axes = plt.subplots(
        1,
        len(specs),
        figsize=(max(4.0, 1.6 + 1.2 * n_methods) * len(specs), 3.6),
        squeeze=False,
    )
    for ax, spec in zip(axes[0], specs):
        for m, name in enumerate(names):
            _draw_boxes(ax, [methods[name].get(col, []) for col in spec.columns], m, n_methods)
        ax.set_xticks(range(len(REGIONS)), list(REGIONS))
        ax.set_xlim(-0.6, len(REGIONS) - 0.4)
        ax.set_ylabel(spec.axis_label)
        if spec.bounds is not None:
            lo, hi = spec.bounds
            ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
        ax.grid(axis="y", alpha=0.3)
    handles = _legend_handles(names)
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95 if title else 1))
    return _save(fig, path)


def _method_colour(m: int) -> tuple[float, float, float]:
    return _METHOD_COLOURS[m % len(_METHOD_COLOURS)]


def _draw_boxes(ax: Axes, per_region: Sequence[Any], m: int, n_methods: int) -> None:
    """Method ``m``'s boxes (one per region, NaN left out) beside the other methods' boxes."""
    width = 0.8 / n_methods
    data = [np.asarray(v, float)[~np.isnan(np.asarray(v, float))] for v in per_region]
    keep = [i for i, d in enumerate(data) if d.size]
    if not keep:
        return
    positions = [i + (m - (n_methods - 1) / 2) * width for i in keep]
    colour = _method_colour(m)
    ax.boxplot(
        [data[i] for i in keep],
        positions=positions,
        widths=width * 0.8,
        patch_artist=True,
        showmeans=True,
        meanline=True,
        # Fig. 4: solid line = median, dotted line = mean.
        medianprops={"color": "black", "linestyle": "-", "linewidth": 1.5},
        meanprops={"color": "black", "linestyle": ":", "linewidth": 1.5},
        boxprops={"facecolor": (*colour, 0.55), "edgecolor": "black"},
        flierprops={"marker": ".", "markersize": 3, "markeredgecolor": colour},
    )
    means = [float(data[i].mean()) for i in keep]
    ax.scatter(positions, means, marker="D", s=12, color="black", zorder=3)


def _legend_handles(names: Sequence[str]) -> list[Patch | Line2D]:
    """One patch per method in its colour, then the median and mean line styles."""
    handles: list[Patch | Line2D] = [
        Patch(facecolor=(*_method_colour(m), 0.55), edgecolor="black", label=name)
        for m, name in enumerate(names)
    ]
    handles.append(Line2D([], [], color="black", linestyle="-", label="median"))
    handles.append(
        Line2D([], [], color="black", linestyle=":", marker="D", markersize=4, label="mean")
    )
    return handles


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
