"""One whole-brain pass of the paper-width two-stage network on CUDA, in several forms.

The GPU check measured 0.173 s for one bf16 pass at 144x176x160 on an H100 (target 0.15 s).
This script times the variants that could close the gap, in one call of a lent GPU:
eager bf16 (the predictor's form), channels-last 3D, ``torch.compile`` (inductor), and
all 8 flips in one batch per flip. Prints one line per variant and a JSON line at the end.

    python benchmarks/gpu_one_pass.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from cascadeseg.models import build_model
from cascadeseg.models.outputs import region_probabilities


def median_seconds(fn, repeats: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(quick: bool) -> None:
    torch.backends.cudnn.benchmark = True
    size = (32, 32, 32) if quick else (144, 176, 160)
    args = {"base_width": 8, "blocks": (1, 1, 1)} if quick else {}
    model = build_model("two_stage", **args).cuda().eval()
    x = torch.randn((1, 4, *size), device="cuda")
    results: dict[str, float] = {}

    def run(net, inputs):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return region_probabilities(net(inputs), "regions").float()

    results["eager_bf16"] = median_seconds(lambda: run(model, x))
    print(f"eager bf16: {results['eager_bf16']:.4f} s", flush=True)
    x8 = x.expand(8, *x.shape[1:]).contiguous()
    results["eager_bf16_8_per_flip"] = median_seconds(lambda: run(model, x8), repeats=5) / 8
    print(f"eager bf16, 8 in one batch, per flip: {results['eager_bf16_8_per_flip']:.4f} s")
    cl = model.to(memory_format=torch.channels_last_3d)
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    results["channels_last_bf16"] = median_seconds(lambda: run(cl, xcl))
    print(f"channels-last bf16: {results['channels_last_bf16']:.4f} s", flush=True)
    model = model.to(memory_format=torch.contiguous_format)
    start = time.perf_counter()
    compiled = torch.compile(model)
    run(compiled, x)
    torch.cuda.synchronize()
    results["compile_s"] = time.perf_counter() - start
    results["compiled_bf16"] = median_seconds(lambda: run(compiled, x))
    print(
        f"torch.compile bf16: {results['compiled_bf16']:.4f} s "
        f"(compiled in {results['compile_s']:.0f} s)",
        flush=True,
    )
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "size": size,
                **results,
            }
        )
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
