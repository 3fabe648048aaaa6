"""The cascadeseg rows of the CPU comparison: the paper's inference and issue 20's levers.

Every row runs ``two_stage`` at the width of its BraTS recipe (``two_stage_brats19``: the
registry's paper widths; random weights, since speed does not depend on them) on one synthetic
240x240x155 case, as :data:`VARIANTS` lists:

- **from files**: ``inference.predict_case`` on the case's files, timed once (reading,
  preprocessing, 8 flipped passes of one model, restoring the grid, thresholding; writing the
  NIfTI left out);
- **one pass**: one whole-crop pass timed (the best of ``repeats``), for GFLOP/s against the
  matmul peak; after the row's 8-flip case no warm-up is needed (the network has run), before
  it (rows without a case) ``warmup`` passes come first;
- **flips on the tumour box** (``roi``): ``tta_region="tumour"``, the first pass on the whole
  volume and the other 7 on the tumour's box plus the recipe's margin. A network with random
  weights finds no tumour, so the box is the reference label's (``predict_case(...,
  tumour_box=...)``), which is what a trained model's first pass finds; the row reports the
  box's fraction of the volume. Whether the labels change is measured on a trained model by
  ``benchmarks/lever_dice.py``;
- **backends**: PyTorch eager (channels-last, the predictor's CPU default), ONNX Runtime (fp32
  graph), OpenVINO (fp32, bf16, int8 through NNCF: :mod:`cascadeseg.bench.openvino_backend`),
  and ``torch.compile`` (inductor; one pass only, since every new input shape, the 2-flip batch
  and the box among them, compiles again; the compile time of a fresh cache is reported apart).

Each row function returns the row (a dict) or the reason it was skipped (a string).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadeseg.bench.inference import count_forward_flops, random_member
from cascadeseg.bench.inputs import QUICK_ARGS
from cascadeseg.bench.openvino_backend import (
    OpenVinoNetwork,
    calibration_crops,
    missing_packages,
    openvino_member,
)
from cascadeseg.bench.timing import measure, timed
from cascadeseg.config import load_config
from cascadeseg.data.layouts import discover_cases, read_case
from cascadeseg.data.preprocess import Preprocessed, preprocess_case
from cascadeseg.inference.export import export_onnx_bytes
from cascadeseg.inference.loading import LoadedModel, OnnxNetwork
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.inference.roi import Box, box_voxels, label_box, network_crop
from cascadeseg.inference.sliding import Pads, pad_to_multiple
from cascadeseg.inference.volume import probability_fn
from cascadeseg.runtime import cpu_bf16_is_fast

#: The recipe whose widths and tumour-box margin the rows use.
RECIPE = "two_stage_brats19"


@dataclass(frozen=True)
class Variant:
    """One cascadeseg row.

    Attributes:
        id: its name in ``--rows`` and the JSON.
        precision: ``fp32``, ``bf16`` or ``int8``.
        backend: ``torch`` (eager), ``onnx`` (ONNX Runtime), ``openvino`` or ``compile``.
        roi: flips after the first on the tumour's box (``tta_region="tumour"``).
        from_files: 8 flips per case from the files, timed.
        one_pass: one whole-crop pass timed.
    """

    id: str
    precision: str
    backend: str
    roi: bool = False
    from_files: bool = True
    one_pass: bool = True

    def unavailable(self) -> str | None:
        """Why no process here can run the variant (its backend's package missing), or ``None``."""
        if self.backend == "openvino":
            missing = missing_packages(int8=self.precision == "int8")
            if missing:
                return f"{' and '.join(missing)} not installed (pip install 'cascadeseg[openvino]')"
        return None

    @property
    def needs_native_bf16(self) -> bool:
        """PyTorch's bf16 autocast, which pays only on a CPU with native bf16 (OpenVINO's bf16
        is its own choice of kernels)."""
        return self.precision == "bf16" and self.backend != "openvino"


VARIANTS: dict[str, Variant] = {
    v.id: v
    for v in (
        Variant("fp32", "fp32", "torch"),
        Variant("bf16", "bf16", "torch"),
        Variant("bf16-roi", "bf16", "torch", roi=True, one_pass=False),
        Variant("fp32-roi", "fp32", "torch", roi=True, one_pass=False),
        Variant("onnx-fp32", "fp32", "onnx"),
        Variant("openvino-fp32", "fp32", "openvino"),
        Variant("openvino-bf16", "bf16", "openvino"),
        Variant("openvino-int8", "int8", "openvino"),
        Variant("openvino-fp32-roi", "fp32", "openvino", roi=True, one_pass=False),
        Variant("openvino-bf16-roi", "bf16", "openvino", roi=True, one_pass=False),
        Variant("openvino-int8-roi", "int8", "openvino", roi=True, one_pass=False),
        Variant("compile-bf16", "bf16", "compile", from_files=False),
        Variant("compile-fp32", "fp32", "compile", from_files=False),
    )
}

BACKEND_LABELS = {
    "torch": "PyTorch, channels-last",
    "onnx": "ONNX Runtime",
    "openvino": "OpenVINO",
    "compile": "PyTorch torch.compile (inductor), channels-last",
}


@dataclass
class CaseBench:
    """The case, the network and the settings every cascadeseg row shares.

    Attributes:
        ref: the case on disk (:func:`cascadeseg.data.layouts.discover_cases`).
        member: the PyTorch member (random weights).
        pre: the case preprocessed with its label (the box, calibration crops).
        x: ``(1, 4, *padded)`` the whole crop padded to the network's multiple.
        pads: the padding of ``x``.
        flops: FLOPs of one pass on ``x``.
        margin: the recipe's tumour-box margin (voxels).
        reference_box: the reference label's tumour box (before the margin), or ``None``.
        quick, repeats, warmup: as the command line gives them.
        isa: ``native`` or the emulated ISA (:mod:`cascadeseg.bench.isa`).
        work: a scratch folder (inductor's cache).
    """

    ref: Any
    member: LoadedModel
    pre: Preprocessed
    x: torch.Tensor
    pads: Pads
    flops: float
    margin: int
    reference_box: Box | None
    quick: bool
    repeats: int
    warmup: int
    isa: str
    work: Path
    onnx_bytes: bytes | None = field(default=None, repr=False)

    def onnx(self) -> bytes:
        """The member's ONNX export (made once, shared by the ONNX Runtime and OpenVINO rows)."""
        if self.onnx_bytes is None:
            self.onnx_bytes = export_onnx_bytes(self.member)
        return self.onnx_bytes


def prepare_case(
    root: Path, *, quick: bool, repeats: int, warmup: int, isa: str, work: Path
) -> CaseBench:
    """The first case under ``root``, the network of :data:`RECIPE` (``quick``: tiny) and the
    reference tumour box."""
    cpu = torch.device("cpu")
    args = dict(QUICK_ARGS["two_stage"]) if quick else dict(load_config(RECIPE).model.args)
    member = random_member("two_stage", args, cpu, 0)
    ref = discover_cases(root)[0]
    pre = preprocess_case(read_case(ref), member.preprocess)
    image = torch.from_numpy(np.ascontiguousarray(pre.image))[None]
    x, pads = pad_to_multiple(image, member.size_divisor)
    return CaseBench(
        ref=ref,
        member=member,
        pre=pre,
        x=x,
        pads=pads,
        flops=count_forward_flops(member, [int(s) for s in x.shape[2:]]),
        margin=int(load_config(RECIPE).inference.tta_region_margin),
        reference_box=None if pre.label is None else label_box(pre.label),
        quick=quick,
        repeats=repeats,
        warmup=warmup,
        isa=isa,
        work=work,
    )


# --------------------------------------------------------------------------------------------
# members


def skip_reason(ctx: CaseBench, variant: Variant) -> str | None:
    """Why ``variant`` cannot run here, or ``None``."""
    missing = variant.unavailable()
    if missing:
        return f"{missing}: the {variant.id} row is left out"
    if variant.needs_native_bf16 and not (cpu_bf16_is_fast() or ctx.quick):
        under = "under the AVX2 cap" if ctx.isa != "native" else "on this CPU"
        return f"no native bf16 {under}: the {variant.id} row is left out"
    if variant.backend == "onnx" and ctx.isa != "native":
        return (
            "ONNX Runtime's MLAS kernels choose the widest ISA of the CPU and have no cap: "
            f"under the {ctx.isa} emulation they would run AVX-512 code; {variant.id} left out"
        )
    if variant.roi and ctx.reference_box is None:
        return f"the case's reference label has no tumour: {variant.id} left out"
    return None


def make_member(ctx: CaseBench, variant: Variant) -> tuple[LoadedModel, dict[str, Any]]:
    """The member ``variant`` runs and what making it cost (``setup_s``, OpenVINO's kernels)."""
    start = time.perf_counter()
    info: dict[str, Any] = {}
    member = ctx.member
    if variant.backend == "onnx":
        onnx = OnnxNetwork(ctx.onnx(), "cpu")
        member = dataclasses.replace(member, network=onnx, output_kind="probabilities")
    elif variant.backend == "openvino":
        crops = None
        if variant.precision == "int8":
            crops = calibration_crops([ctx.pre.image], ctx.member.size_divisor, per_image=4)
            info["calibration"] = f"{len(crops)} crops of the case, side <= 64"
        member = openvino_member(
            ctx.member, variant.precision, onnx_bytes=ctx.onnx(), calibration=crops
        )
        network = member.network
        assert isinstance(network, OpenVinoNetwork)
        info["openvino_config"] = network.config
        info["kernels"] = network.kernels()
    info["setup_s"] = time.perf_counter() - start
    return member, info


def _cap_ignored(ctx: CaseBench, info: dict[str, Any]) -> str | None:
    """A skip reason when OpenVINO ran AVX-512 kernels under an ISA cap."""
    wide = [k for k in info.get("kernels", {}) if "avx512" in k or "amx" in k]
    if ctx.isa != "native" and wide:
        return f"OpenVINO ignored the {ctx.isa} cap (kernels {', '.join(wide)})"
    return None


# --------------------------------------------------------------------------------------------
# timing


def case_from_files(ctx: CaseBench, member: LoadedModel, variant: Variant) -> dict[str, Any]:
    """8 flips of ``member`` on the case from its files, timed once."""
    torch_precision = variant.precision if variant.backend in ("torch", "compile") else "fp32"
    options = PredictOptions(
        tta=True,
        precision=torch_precision,
        device="cpu",
        backend="onnx" if variant.backend == "onnx" else "torch",
        progress=False,
        tta_region="tumour" if variant.roi else "volume",
        tta_region_margin=ctx.margin,
    )
    box = ctx.reference_box if variant.roi else None
    start = time.perf_counter()
    prediction = predict_case(read_case(ctx.ref), [member], options, tumour_box=box)
    seconds = time.perf_counter() - start
    info = prediction.info
    out: dict[str, Any] = {
        "seconds_per_case": seconds,
        "passes": int(info["passes"]),
        "flips_per_call": info["members"][0].get("flips_per_call"),
        "seconds_split": info["seconds"],
        "gflop_per_case": ctx.flops * info["passes"] / 1e9,
    }
    if variant.roi:
        record = info["tta_region_box"]
        crop = network_crop(
            tuple(map(tuple, record["box"])), ctx.pads, member.size_divisor, ctx.x.shape[2:]
        )
        crop_share = box_voxels(crop) / float(np.prod(ctx.x.shape[2:]))
        out.update(
            box=record["box"],
            box_fraction=record["box_fraction"],
            tumour_fraction=box_voxels(ctx.reference_box or ()) / float(np.prod(ctx.pre.shape)),
            margin=record["margin"],
            crop_fraction_of_network_input=crop_share,
            gflop_per_case=ctx.flops * (1 + (info["passes"] - 1) * crop_share) / 1e9,
        )
    network_s = float(info["seconds"]["network"])
    out["network_gflops_per_s"] = out["gflop_per_case"] / network_s if network_s > 0 else None
    return out


def one_pass(ctx: CaseBench, member: LoadedModel, variant: Variant, warm: bool) -> dict[str, Any]:
    """One whole-crop pass timed (``warm``: the network has run already: no warm-up)."""
    torch_precision = variant.precision if variant.backend in ("torch", "compile") else "fp32"
    channels_last = variant.backend in ("torch", "compile")
    out: dict[str, Any] = {}
    fn = probability_fn(
        member,
        torch_precision,
        torch.device("cpu"),
        channels_last,
        compile_network=variant.backend == "compile",
    )

    def run() -> None:
        with torch.inference_mode():
            fn(ctx.x)

    if variant.backend == "compile":
        # A fresh cache: the compile time a first use pays (later processes reuse the cache).
        with environment("TORCHINDUCTOR_CACHE_DIR", str(ctx.work / "inductor")):
            first = measure(run, repeats=1, warmup=0).times[0]
        timing = dict(timed(run, repeats=ctx.repeats, warmup=0))
        out["compile_s"] = max(0.0, first - timing["min_s"])
        out["compile_cache"] = "fresh directory (cold compile)"
        out["inductor_vec_isa"] = inductor_isa()
    else:
        timing = dict(timed(run, repeats=ctx.repeats, warmup=0 if warm else ctx.warmup))
    # The best of the timed passes, as for the peak: noise only slows a pass down, and a pass
    # right after the 8-flip case may still set up kernels for batch 1.
    best = timing["min_s"]
    out.update(seconds_per_pass=best, pass_timing=timing, gflops_per_s=ctx.flops / best / 1e9)
    return out


@contextlib.contextmanager
def environment(key: str, value: str) -> Iterator[None]:
    """``os.environ[key] = value`` inside the block only."""
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def inductor_isa() -> str:
    """The vector ISA of the code inductor generates (it follows ``ATEN_CPU_CAPABILITY``)."""
    try:
        # A private module of torch; only recorded, so any failure just says "unknown".
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa())
    except Exception:
        return "unknown"


def variant_row(ctx: CaseBench, variant: Variant) -> dict[str, Any] | str:
    """The row of ``variant`` (see the module docstring), or why it was skipped."""
    reason = skip_reason(ctx, variant)
    if reason:
        return reason
    try:
        member, setup = make_member(ctx, variant)
    except Exception as exc:  # OpenVINO/NNCF raise their own types; the run goes on
        return f"{variant.id}: {variant.backend} could not build the network ({_line(exc)})"
    reason = _cap_ignored(ctx, setup)
    if reason:
        return reason
    row = _row_head(ctx, variant)
    row.update(setup)
    if variant.from_files:
        row.update(case_from_files(ctx, member, variant))
    if variant.one_pass:
        row.update(one_pass(ctx, member, variant, warm=variant.from_files))
    if not variant.from_files:
        row["seconds_per_case"] = None
        row["passes"] = 1
    return row


def _row_head(ctx: CaseBench, variant: Variant) -> dict[str, Any]:
    width = "quick width" if ctx.quick else "paper width"
    where = ", flips on the tumour box" if variant.roi else ""
    precision = variant.precision
    if variant.precision == "int8":
        precision = "int8 (NNCF post-training quantisation)"
    how = "measured once per case from files (read + preprocess + 8 passes + restore)"
    if variant.roi:
        how = (
            "measured once per case from files (read + preprocess + 1 whole pass + 7 passes "
            f"on the tumour box + restore); box = reference label's + margin {ctx.margin}"
        )
    if not variant.from_files:
        how = "one pass only (each new input shape compiles again); compile time apart"
    return {
        "id": variant.id,
        "what": f"cascadeseg two_stage ({width}), "
        f"{'8 flips' if variant.from_files else 'one pass'}{where}, {precision} "
        f"({BACKEND_LABELS[variant.backend]})",
        "tool": "cascadeseg",
        "precision": variant.precision,
        "peak_precision": variant.precision if variant.precision in ("fp32", "bf16") else None,
        "backend": variant.backend,
        "tta_region": "tumour" if variant.roi else "volume",
        "how": how,
        "gflop_per_pass": ctx.flops / 1e9,
        "input_size": [int(s) for s in ctx.x.shape[2:]],
        "isa": ctx.isa,
        "seconds_per_pass": None,
        "gflops_per_s": None,
    }


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
