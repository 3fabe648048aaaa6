"""The CPU's instruction set: its identity and flags, and capping it to emulate an AVX2-only CPU.

Issue 20 asks for a target on a CPU with AVX2 and nothing newer. On an AVX-512 machine such a
CPU is emulated by capping the instruction set of every library the network runs in, through
their environment variables, which they read once, when first loaded; so a capped run is a
fresh process started with them (:func:`capped_environment`; ``benchmarks/cpu_vs_nnunet.py
--isa avx2`` starts itself again that way):

- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN (PyTorch's convolutions in channels-last, bf16 matmuls);
- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's own vectorised kernels (normalisation, activations,
  element-wise operations) and the code ``torch.compile`` generates;
- ``MKL_ENABLE_INSTRUCTIONS=AVX2``: MKL (PyTorch's fp32 matmul; already AVX2 on AMD CPUs).

:func:`isa_check` verifies the cap where it can, cheaply: in a child process with the same
environment and ``ONEDNN_VERBOSE=1`` it runs one small convolution and reads PyTorch's CPU
capability and the ISA and kernel oneDNN reports. MKL reports no ISA, so its cap is recorded as
set, not verified. ONNX Runtime (its MLAS kernels choose by the CPU's flags and have no cap)
and OpenVINO are checked by the rows themselves (:mod:`cascadeseg.bench.openvino_backend`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Environment variables that cap each library's instruction set, per emulated ISA.
ISA_CAPS: dict[str, dict[str, str]] = {
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
}
#: ``native`` (no cap) or a key of :data:`ISA_CAPS`.
ISAS: tuple[str, ...] = ("native", *ISA_CAPS)
#: Set in a capped process: which cap it runs under (and that it need not start itself again).
ISA_MARKER = "CASCADESEG_BENCH_ISA"

#: Runs in the child of :func:`isa_check`: one convolution oneDNN takes, then what torch says.
_PROBE = """
import json, torch
conv = torch.nn.Conv3d(16, 16, 3, padding=1).eval().to(memory_format=torch.channels_last_3d)
# batch 2: PyTorch sends fp32 3D convolutions of small batch-1 inputs to its own kernel
x = torch.randn(2, 16, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
with torch.inference_mode():
    conv(x)
try:
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
except (AttributeError, RuntimeError):
    bf16 = None
info = {"aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "onednn_bf16": bf16}
print("CASCADESEG_PROBE " + json.dumps(info), flush=True)
"""


def capped_environment(isa: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the cap of ``isa`` and the marker."""
    env = dict(os.environ if base is None else base)
    for caps in ISA_CAPS.values():  # native: no cap left from an outer run
        for key in caps:
            env.pop(key, None)
    if isa != "native":
        env.update(ISA_CAPS[isa])
    env[ISA_MARKER] = isa
    return env


def active_isa() -> str:
    """The cap this process runs under (``native`` when none was set by this module)."""
    return os.environ.get(ISA_MARKER, "native")


def cpu_flags() -> list[str]:
    """The CPU's AVX-512 / AMX / AVX2 flags (``/proc/cpuinfo``; empty elsewhere)."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
    return []


def cpu_identity() -> dict[str, Any]:
    """Vendor, family, model, stepping, model name and clock of the CPU (``/proc/cpuinfo``).

    A virtual machine often names only "AMD EPYC"; family and model tell the generation, which
    sets the bf16 and AVX-512 throughput (``core``: Zen 3 / 4 / 5 for AMD, else empty).
    """
    fields = {
        "vendor_id": "vendor",
        "cpu family": "family",
        "model": "model",
        "stepping": "stepping",
        "model name": "name",
        "cpu MHz": "mhz",
    }
    out: dict[str, Any] = {}
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        name = fields.get(key.strip())
        if name and name not in out:
            out[name] = value.strip()
        if line.strip() == "" and out:
            break  # the first processor is enough
    out["core"] = amd_core(out.get("vendor", ""), out.get("family"), out.get("model"))
    return out


def amd_core(vendor: str, family: Any, model: Any) -> str:
    """AMD's core generation of a family/model pair (``""`` for others or unknown ones)."""
    if vendor != "AuthenticAMD" or family is None or model is None:
        return ""
    family, model = int(family), int(model)
    if family == 26:
        return "Zen 5"
    if family == 25:
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
        return "Zen 4" if zen4 else "Zen 3"
    return ""


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def parse_probe(text: str) -> dict[str, Any]:
    """The oneDNN ISA, the convolution kernels and torch's capability from :data:`_PROBE`'s
    output with ``ONEDNN_VERBOSE=1``."""
    out: dict[str, Any] = {"onednn_isa": None, "onednn_convolution_kernels": []}
    for line in text.splitlines():
        if line.startswith("CASCADESEG_PROBE "):
            out.update(json.loads(line.split(" ", 1)[1]))
        parts = line.split(",")
        if not line.startswith("onednn_verbose"):
            continue
        isa = [p for p in parts if p.startswith("isa:")]
        if isa:
            out["onednn_isa"] = isa[0][len("isa:") :]
        if len(parts) > 6 and parts[2:4] == ["primitive", "exec"] and parts[5] == "convolution":
            out["onednn_convolution_kernels"].append(parts[6])
    return out


def judge_cap(isa: str, probe: dict[str, Any]) -> bool | None:
    """Whether the probe ran under the cap of ``isa`` (``None`` for ``native``: nothing to
    check): torch's capability and every oneDNN convolution kernel name the ISA, and none an
    AVX-512 one."""
    if isa == "native":
        return None
    kernels = probe.get("onednn_convolution_kernels") or []
    isa_line = str(probe.get("onednn_isa") or "")
    return (
        str(probe.get("aten_cpu_capability", "")).lower() == isa
        and bool(kernels)
        and all(isa in k and "avx512" not in k for k in kernels)
        and isa.upper() in isa_line.upper()
        and "512" not in isa_line
    )


def isa_check(isa: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Run :data:`_PROBE` in a child with this process's environment and ``ONEDNN_VERBOSE=1``.

    Returns:
        ``{"isa", "caps" (the variables set), "aten_cpu_capability", "onednn_bf16",
        "onednn_isa", "onednn_convolution_kernels", "capped" (bool; ``None`` native),
        "mkl": what is known of MKL's cap}``, or with ``"error"`` when the child failed.
    """
    isa = isa or active_isa()
    env = dict(os.environ, ONEDNN_VERBOSE="1", OMP_NUM_THREADS="1")
    caps = {k: os.environ.get(k) for k in ISA_CAPS.get(isa, {})}
    out: dict[str, Any] = {"isa": isa, "caps": caps}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**out, "error": f"{type(exc).__name__}: {exc}", "capped": False}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        return {**out, "error": " ".join(tail), "capped": False}
    out.update(parse_probe(done.stdout + "\n" + done.stderr))
    out["capped"] = judge_cap(isa, out)
    if isa != "native":
        out["mkl"] = "MKL_ENABLE_INSTRUCTIONS set; MKL reports no ISA, so it is not verified"
    return out
