"""CPU inference per case beside nnU-Net's default BraTS network and MONAI's SegResNet (issue 20).

One process, one machine, side by side:

1. the paper's inference: ``two_stage`` at paper width (random weights: speed does not depend
   on them), 8 flips of one model per case (the 8-map ensemble's cost), measured from the case's
   files (reading, preprocessing, network, restoring the geometry, thresholding:
   ``inference.predict_case``, writing left out) on one synthetic 240x240x155 case, in fp32,
   in bf16 autocast (where the CPU has native bf16) and through ONNX Runtime (fp32 graph);
   plus one whole-brain pass on the same crop (median after warm-up) for GFLOP/s;
2. nnU-Net's default BraTS network, ``dynamic_network_architectures.PlainConvUNet`` as nnU-Net
   v2 plans it for BraTS 3d_fullres (6 stages, 32..320 features, 2 convolutions per stage,
   InstanceNorm, LeakyReLU, 128^3 patches, no deep supervision at inference), in fp32 (its
   default): one 128^3 patch timed, the case **extrapolated** as patches x 8 mirrorings, the
   number of patches given by nnU-Net's sliding-window rule (step 0.5) on the same brain crop;
   nnU-Net's own preprocessing, Gaussian weighting and export are not counted (in its favour);
3. MONAI's SegResNet (init_filters=16, blocks 1-2-2-4, MONAI's BraTS tutorial), fp32, one pass
   on the same crop timed, 8 flips extrapolated as 8 passes.

Writes JSON (``--out``, default ``benchmarks/results/cpu-vs-nnunet.json``) and a Markdown
table next to it (``.md``), and prints the table. ``--quick`` shrinks every size so the whole
run takes seconds (``tests/test_cpu_vs_nnunet.py``); its figures mean nothing. The full run
takes about 12 minutes on a 2-core CPU with AVX512-BF16; run it on a quiet machine.

    python benchmarks/cpu_vs_nnunet.py
    python benchmarks/cpu_vs_nnunet.py --quick --out /tmp/cpu-vs-nnunet.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: nnU-Net v2's 3d_fullres plan for BraTS (Dataset137_BraTS2021): 128^3 patches, 6 stages.
NNUNET_PATCH = (128, 128, 128)
NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)
#: nnU-Net's predictor defaults: step 0.5 of the patch, mirroring on all 3 axes (2^3 passes).
NNUNET_STEP = 0.5
NNUNET_MIRRORINGS = 8
#: ``--quick``: the same 6 stages with an eighth of the features at 64^3 (2^3 at the bottom).
QUICK_NNUNET_PATCH = (64, 64, 64)
QUICK_NNUNET_FEATURES = (4, 8, 16, 32, 40, 40)
#: Targets of issue 20 (CPU): 8 passes per case with native bf16, speed-up, share of the peak.
TARGET_CASE_S = 60.0
TARGET_SPEEDUP = 10.0
TARGET_PEAK_SHARE = 0.6
DEFAULT_OUT = Path("benchmarks/results/cpu-vs-nnunet.json")


# --------------------------------------------------------------------------------------------
# nnU-Net's sliding window and network


def sliding_window_steps(
    image_size: Sequence[int], patch_size: Sequence[int], step: float = NNUNET_STEP
) -> list[list[int]]:
    """Patch start positions per axis, by nnU-Net v2's rule (``compute_steps_for_sliding_window``).

    Re-derived here so that nnU-Net need not be installed: the image is first padded to at
    least the patch size; per axis the number of patches is ``ceil((image - patch) /
    (patch * step)) + 1`` and the starts are spread evenly from 0 to ``image - patch``, rounded.

    Args:
        image_size: spatial size of the (cropped) image, voxels.
        patch_size: network patch size, voxels.
        step: step as a fraction of the patch (nnU-Net's default 0.5).

    Returns:
        One list of start indices per axis.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    steps = []
    for image, patch in zip(image_size, patch_size):
        image = max(int(image), int(patch))  # nnU-Net pads smaller images to the patch
        n = math.ceil((image - patch) / (patch * step)) + 1
        stride = (image - patch) / (n - 1) if n > 1 else 0.0
        steps.append([int(np.round(stride * i)) for i in range(n)])
    return steps


def nnunet_patches(image_size: Sequence[int], patch_size: Sequence[int]) -> int:
    """Number of sliding-window patches nnU-Net's predictor runs on ``image_size``."""
    return int(np.prod([len(s) for s in sliding_window_steps(image_size, patch_size)]))


def build_nnunet(features: Sequence[int] = NNUNET_FEATURES) -> torch.nn.Module:
    """PlainConvUNet as nnU-Net v2 configures it for BraTS 3d_fullres (4 inputs, 3 regions).

    Raises:
        ImportError: ``dynamic_network_architectures`` is not installed.
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(features)
    return PlainConvUNet(
        input_channels=4,
        n_stages=n,
        features_per_stage=list(features),
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        num_classes=3,  # BraTS is trained region-based in nnU-Net: WT, TC, ET
        n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


# --------------------------------------------------------------------------------------------
# measuring


def _median_seconds(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, Any]:
    from cascadeseg.bench.timing import timed

    return dict(timed(fn, repeats=repeats, warmup=warmup))


def _pass_fn(model: torch.nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    from cascadeseg.runtime import autocast

    def run() -> None:
        with torch.inference_mode(), autocast(precision, "cpu"):
            model(x)

    return run


class Bench:
    """Rows of the comparison, written to JSON after each one (a killed run keeps its rows)."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.result: dict[str, Any] = {**meta, "rows": [], "notes": []}

    def add(self, **row: Any) -> None:
        self.result["rows"].append(row)
        print(f"  {row['what']}: {row['seconds_per_case']:.3g} s/case", flush=True)
        self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")


def two_stage_rows(
    bench: Bench, root: Path, *, quick: bool, repeats: int, warmup: int, peak: dict[str, float]
) -> None:
    """The paper's inference: fp32, bf16 (native only, or ``quick``) and ONNX Runtime."""
    from cascadeseg.bench.inference import count_forward_flops, random_member
    from cascadeseg.bench.inputs import QUICK_ARGS
    from cascadeseg.data.layouts import discover_cases, read_case
    from cascadeseg.data.preprocess import preprocess_case
    from cascadeseg.inference.export import to_onnx_member
    from cascadeseg.inference.options import PredictOptions
    from cascadeseg.inference.predictor import predict_case
    from cascadeseg.inference.sliding import pad_to_multiple
    from cascadeseg.inference.volume import probability_fn
    from cascadeseg.runtime import cpu_bf16_is_fast

    args = dict(QUICK_ARGS["two_stage"]) if quick else {}
    cpu = torch.device("cpu")
    ref = discover_cases(root)[0]
    torch_member = random_member("two_stage", args, cpu, 0)
    pre = preprocess_case(read_case(ref), torch_member.preprocess)
    crop = [int(s) for s in pre.image.shape[1:]]
    x, _ = pad_to_multiple(torch.from_numpy(np.ascontiguousarray(pre.image))[None], 16)
    size = [int(s) for s in x.shape[2:]]
    flops = count_forward_flops(torch_member, size)
    bench.result["brain_crop"] = crop
    bench.result["network_input"] = size
    variants = [("fp32", "torch"), ("bf16", "torch"), ("fp32", "onnx")]
    if not (cpu_bf16_is_fast() or quick):
        variants.remove(("bf16", "torch"))
        bench.result["notes"].append("no native bf16 on this CPU: the bf16 row is left out")
    for precision, backend in variants:
        member, export_s = torch_member, 0.0
        if backend == "onnx":
            start = time.perf_counter()
            member = to_onnx_member(torch_member)
            export_s = time.perf_counter() - start
        channels_last = backend == "torch"  # the predictor's CPU default for 3D networks
        fn = probability_fn(member, precision, cpu, channels_last)
        one = _median_seconds(functools.partial(_no_grad, fn, x), repeats, warmup)
        options = PredictOptions(
            tta=True, precision=precision, device="cpu", backend=backend, progress=False
        )
        start = time.perf_counter()
        prediction = predict_case(read_case(ref), [member], options)
        case_s = time.perf_counter() - start
        gflops = flops / one["median_s"] / 1e9
        share = gflops / peak[f"matmul_{precision}_gflops"]
        label = {"torch": "PyTorch, channels-last", "onnx": "ONNX Runtime"}[backend]
        bench.add(
            what=f"cascadeseg two_stage ({'quick width' if quick else 'paper width'}), "
            f"8 flips, {precision} ({label})",
            tool="cascadeseg",
            precision=precision,
            backend=backend,
            seconds_per_case=case_s,
            how="measured once per case from files (read + preprocess + 8 passes + restore)",
            seconds_per_pass=one["median_s"],
            pass_timing=one,
            passes=int(prediction.info["passes"]),
            flips_per_call=prediction.info["members"][0].get("flips_per_call"),
            seconds_split=prediction.info["seconds"],
            onnx_export_s=export_s,
            gflop_per_pass=flops / 1e9,
            gflops_per_s=gflops,
            fraction_of_peak=share,
            input_size=size,
        )


def _no_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    with torch.inference_mode():
        fn(x)


def nnunet_row(
    bench: Bench, crop: Sequence[int], *, quick: bool, repeats: int, warmup: int, peak: dict
) -> None:
    """nnU-Net's default BraTS network: one patch timed, the case extrapolated."""
    from cascadeseg.models.inspect import count_input_flops

    try:
        model = build_nnunet(QUICK_NNUNET_FEATURES if quick else NNUNET_FEATURES).eval()
    except ImportError:
        bench.result["notes"].append(
            "dynamic_network_architectures is not installed: the nnU-Net row is left out"
        )
        return
    patch = QUICK_NNUNET_PATCH if quick else NNUNET_PATCH
    features = "-".join(map(str, QUICK_NNUNET_FEATURES if quick else NNUNET_FEATURES))
    torch.manual_seed(0)
    x = torch.randn((1, 4, *patch))
    one = _median_seconds(_pass_fn(model, x, "fp32"), repeats, warmup)
    patches = nnunet_patches(crop, patch)
    flops = count_input_flops(model, x.shape)
    gflops = flops / one["median_s"] / 1e9
    bench.add(
        what=f"nnU-Net default BraTS 3d_fullres (PlainConvUNet {features}, "
        f"{'x'.join(map(str, patch))} patches), {patches} patches x {NNUNET_MIRRORINGS} "
        "mirrorings, fp32",
        tool="nnU-Net",
        precision="fp32",
        backend="torch",
        seconds_per_case=one["median_s"] * patches * NNUNET_MIRRORINGS,
        how=f"EXTRAPOLATED: one patch timed x {patches} patches (step {NNUNET_STEP}) x "
        f"{NNUNET_MIRRORINGS} mirrorings; network only",
        seconds_per_pass=one["median_s"],
        pass_timing=one,
        patches=patches,
        steps=sliding_window_steps(crop, patch),
        passes=patches * NNUNET_MIRRORINGS,
        gflop_per_pass=flops / 1e9,
        gflops_per_s=gflops,
        fraction_of_peak=gflops / peak["matmul_fp32_gflops"],
        input_size=list(patch),
    )


def segresnet_row(
    bench: Bench, size: Sequence[int], *, quick: bool, repeats: int, warmup: int, peak: dict
) -> None:
    """MONAI's SegResNet on the same crop, fp32: one pass timed, 8 flips extrapolated."""
    from cascadeseg.bench.models import segresnet_peer
    from cascadeseg.models.inspect import count_input_flops

    width = 8 if quick else 16
    model = segresnet_peer(width)
    if model is None:
        bench.result["notes"].append("monai is not installed: the SegResNet row is left out")
        return
    model.eval()
    x = torch.randn((1, 4, *size))
    one = _median_seconds(_pass_fn(model, x, "fp32"), repeats, warmup)
    flops = count_input_flops(model, x.shape)
    gflops = flops / one["median_s"] / 1e9
    bench.add(
        what=f"MONAI SegResNet init_filters={width}, 8 flips, fp32",
        tool="MONAI",
        precision="fp32",
        backend="torch",
        seconds_per_case=one["median_s"] * 8,
        how="EXTRAPOLATED: one whole-crop pass timed x 8 flips; network only",
        seconds_per_pass=one["median_s"],
        pass_timing=one,
        passes=8,
        gflop_per_pass=flops / 1e9,
        gflops_per_s=gflops,
        fraction_of_peak=gflops / peak["matmul_fp32_gflops"],
        input_size=list(size),
    )


# --------------------------------------------------------------------------------------------
# the report


def cpu_flags() -> list[str]:
    """The CPU's AVX-512 / AMX / AVX2 flags (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            keep = ("avx512", "amx", "avx2")
            return sorted(f for f in flags if f.startswith(keep))
    return []


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 20's CPU targets against the rows: 8 passes per case <= 60 s with native bf16,
    >= 10x faster than nnU-Net's default with TTA, a pass at >= 60% of the matmul peak."""
    nnunet = next((r for r in rows if r["tool"] == "nnU-Net"), None)
    out = []
    for row in rows:
        if row["tool"] != "cascadeseg":
            continue
        name = f"{row['precision']} {row['backend']}"
        if row["precision"] == "bf16":
            out.append(
                {
                    "target": f"8 passes per case from files <= {TARGET_CASE_S:g} s ({name})",
                    "measured": row["seconds_per_case"],
                    "met": row["seconds_per_case"] <= TARGET_CASE_S,
                }
            )
        if nnunet is not None:
            speedup = nnunet["seconds_per_case"] / row["seconds_per_case"]
            out.append(
                {
                    "target": f">= {TARGET_SPEEDUP:g}x faster than nnU-Net fp32 with TTA ({name})",
                    "measured": speedup,
                    "met": speedup >= TARGET_SPEEDUP,
                }
            )
        out.append(
            {
                "target": f"one pass >= {TARGET_PEAK_SHARE:.0%} of the {row['precision']} "
                f"matmul peak ({name})",
                "measured": row["fraction_of_peak"],
                "met": row["fraction_of_peak"] >= TARGET_PEAK_SHARE,
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    """The comparison table, the targets and the machine line."""
    rows = result["rows"]
    nnunet = next((r for r in rows if r["tool"] == "nnU-Net"), None)
    lines = [
        "| what | per case | how | one pass | GFLOP per pass | GFLOP/s | share of peak "
        "| nnU-Net / this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{nnunet['seconds_per_case'] / row['seconds_per_case']:.2f}x" if nnunet else ""
        lines.append(
            f"| {row['what']} | {row['seconds_per_case']:.1f} s | {row['how']} "
            f"| {row['seconds_per_pass']:.2f} s | {row['gflop_per_pass']:.0f} "
            f"| {row['gflops_per_s']:.0f} | {row['fraction_of_peak']:.0%} | {ratio} |"
        )
    peak = result["matmul_peak"]
    lines += [
        "",
        f"Matmul peak measured in the same run (the larger of before and after the rows): fp32 "
        f"{peak['matmul_fp32_gflops']:.0f}, bf16 {peak['matmul_bf16_gflops']:.0f} GFLOP/s. "
        f"Brain crop {_x(result['brain_crop'])} "
        f"(network input {_x(result['network_input'])} after padding to a multiple of 16).",
        "",
        "| target (issue 20) | measured | met |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        value = t["measured"]
        shown = f"{value:.0%}" if "peak" in t["target"] else f"{value:.3g}"
        lines.append(f"| {t['target']} | {shown} | {'yes' if t['met'] else 'no'} |")
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads, flags {' '.join(result['cpu_flags']) or 'n/a'}; "
        f"load average (1, 5, 15 min) at the start {_load(result['load_average_start'])}, at "
        f"the end {_load(result['load_average_end'])}; {result['date']}, "
        f"{result['wall_seconds']:.0f} s in all.",
    ]
    lines += [f"Note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _x(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def _load(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# --------------------------------------------------------------------------------------------
# main


def settle_peak(result: dict[str, Any], end_peak: dict[str, float]) -> None:
    """Keep the larger of the matmul peaks measured before and after the rows, per precision,
    and recompute each row's share of it.

    One measurement can land on a busy moment (a full run measured fp32 112 GFLOP/s first and
    185 right after on the same quiet machine); the larger is the closer to the machine's peak.
    """
    start = result["matmul_peak"]
    result["matmul_peak_start"] = dict(start)
    result["matmul_peak_end"] = dict(end_peak)
    peak = {key: max(value, end_peak.get(key, value)) for key, value in start.items()}
    result["matmul_peak"] = peak
    for row in result["rows"]:
        row["fraction_of_peak"] = row["gflops_per_s"] / peak[f"matmul_{row['precision']}_gflops"]


def synthetic_case(work: Path, quick: bool) -> Path:
    """One synthetic BraTS 2021 case (240x240x155; ``quick``: 30x30x19) under ``work``."""
    from cascadeseg.data.synth import SynthConfig, synthesize_dataset

    config = SynthConfig(shape_scale=0.125 if quick else 1.0)
    root = work / "dataset"
    synthesize_dataset(root, 1, seed=0, layout="brats2021", progress=False, config=config)
    return root


def run(out: Path, *, quick: bool, repeats: int, warmup: int, command: str) -> dict[str, Any]:
    """Measure every row (see the module docstring) and write ``out`` and its ``.md``."""
    from cascadeseg.bench.timing import machine_info, matmul_peak

    start = time.perf_counter()
    if quick:
        torch.set_num_threads(1)
    peak = matmul_peak("cpu", size=256 if quick else 2048)
    bench = Bench(
        out,
        {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "quick": quick,
            "repeats": repeats,
            "warmup": warmup,
            "machine": machine_info("cpu"),
            "cpu_flags": cpu_flags(),
            "load_average_start": list(os.getloadavg()),
            "matmul_peak": peak,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="cascadeseg_cpu_vs_nnunet_"))
    try:
        root = synthetic_case(work, quick)
        two_stage_rows(bench, root, quick=quick, repeats=repeats, warmup=warmup, peak=peak)
        crop, size = bench.result["brain_crop"], bench.result["network_input"]
        nnunet_row(bench, crop, quick=quick, repeats=repeats, warmup=warmup, peak=peak)
        segresnet_row(bench, size, quick=quick, repeats=repeats, warmup=warmup, peak=peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench.result["load_average_end"] = list(os.getloadavg())
    settle_peak(bench.result, matmul_peak("cpu", size=256 if quick else 2048))
    bench.result["wall_seconds"] = time.perf_counter() - start
    bench.result["targets"] = targets(bench.result["rows"])
    bench.save()
    out.with_suffix(".md").write_text(markdown(bench.result))
    return bench.result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    parser.add_argument("--repeats", type=int, default=2, help="timed single passes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed single passes first")
    args = parser.parse_args(argv)
    command = "python benchmarks/cpu_vs_nnunet.py " + " ".join(argv or sys.argv[1:])
    result = run(
        args.out,
        quick=args.quick,
        repeats=max(1, args.repeats),
        warmup=max(0, args.warmup),
        command=command.strip(),
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
