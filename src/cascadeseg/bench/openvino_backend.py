"""OpenVINO as a benchmark backend: the ONNX export run by its CPU plugin in fp32, bf16 or int8.

A lever of issue 20, measured beside PyTorch and ONNX Runtime, not a prediction backend of
``cascadeseg predict``. The member's network is exported to ONNX in memory
(:func:`cascadeseg.inference.export.export_onnx_bytes`: the network and its output activation,
dynamic batch and spatial axes), read by OpenVINO and compiled for the CPU with
``INFERENCE_PRECISION_HINT`` ``f32`` or ``bf16`` (on a CPU with AVX512-BF16 or AMX OpenVINO's
default is bf16, so fp32 is asked for explicitly). int8 quantises the graph first with NNCF's
post-training quantisation (``nncf.quantize``, the ``mixed`` preset: symmetric weights,
asymmetric activations) on a few crops of real preprocessed images
(:func:`calibration_crops`); the layers it leaves unquantised run in OpenVINO's default
precision. The result is a :class:`~cascadeseg.inference.loading.LoadedModel` whose network is
an :class:`OpenVinoNetwork`, so the predictor runs it unchanged (flips, the tumour box, the
restoring of the grid).

Both packages are optional (``pip install cascadeseg[openvino]``); :func:`missing_packages`
says which are absent, and the benchmarks skip those rows with that reason.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cascadeseg.inference.export import export_onnx_bytes
from cascadeseg.inference.loading import LoadedModel, check_member
from cascadeseg.inference.sliding import pad_to_multiple
from cascadeseg.runtime import cpu_bf16_is_fast

#: OpenVINO's names of the precisions this backend runs.
OV_PRECISIONS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}
#: Crops per calibration image and their side (a multiple of the network's, at most the image).
CALIBRATION_CROPS = 2
CALIBRATION_SIDE = 64


def missing_packages(int8: bool = False) -> list[str]:
    """The optional packages a row needs and this environment lacks (``openvino``; ``nncf``)."""
    needed = ["openvino", "nncf"] if int8 else ["openvino"]
    return [name for name in needed if importlib.util.find_spec(name) is None]


class OpenVinoNetwork:
    """An OpenVINO compiled model called like a network: ``(B, C, *s)`` tensor in,
    ``(B, 3, *s)`` float32 probabilities out (a CPU tensor; the export's dynamic axes let any
    batch and size multiple through).

    Args:
        model: an ``openvino.Model`` (read from the ONNX export, quantised or not).
        precision: ``fp32`` or ``bf16`` (``INFERENCE_PRECISION_HINT``; for an int8 model the
            precision of the layers left unquantised).
        threads: ``INFERENCE_NUM_THREADS`` (default: ``torch.get_num_threads()``).
    """

    def __init__(self, model: Any, precision: str, threads: int | None = None) -> None:
        # openvino is an optional dependency of the benchmarks.
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.config = {k: str(v) for k, v in config.items()}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        self.request.infer({0: array})
        # The request reuses its output buffer: copy before the next call.
        out = np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return torch.from_numpy(out).to(x.device)

    def kernels(self) -> dict[str, int]:
        """Convolution kernels of the compiled graph: ``"<layer> <kernel> <precision>"`` -> count
        (e.g. ``Convolution brgconv_avx512_bf16 bf16``), from OpenVINO's runtime model; it shows
        which ISA and precision really ran."""
        counts: Counter[str] = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = _rt(info, "layerType")
            if layer in ("Convolution", "Deconvolution"):
                counts[f"{layer} {_rt(info, 'primitiveType')} {_rt(info, 'runtimePrecision')}"] += 1
        return dict(sorted(counts.items()))


def _rt(info: Any, key: str) -> str:
    try:
        return str(info[key].astype(str))
    except (KeyError, RuntimeError, AttributeError):
        return "?"


def read_onnx(data: bytes) -> Any:
    """An ``openvino.Model`` of ONNX bytes."""
    import openvino as ov  # optional dependency of the benchmarks

    return ov.Core().read_model(data)


def calibration_crops(
    images: Sequence[np.ndarray],
    multiple: int,
    *,
    per_image: int = CALIBRATION_CROPS,
    side: int = CALIBRATION_SIDE,
    seed: int = 0,
) -> list[np.ndarray]:
    """Crops of preprocessed images for NNCF's calibration: ``(1, C, s, s, s)`` float32 each.

    ``per_image`` crops per ``(C, X, Y, Z)`` image, at random places (seeded), of side ``side``
    (at most the image's, padded up to ``multiple``). Calibration sets the int8 ranges of the
    activations only; it needs images, not labels.
    """
    rng = np.random.default_rng(seed)
    crops = []
    for image in images:
        sizes = [min(side, int(s)) for s in image.shape[1:]]
        for _ in range(per_image):
            starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(image.shape[1:], sizes)]
            index = (slice(None), *(slice(a, a + c) for a, c in zip(starts, sizes)))
            crop = torch.from_numpy(np.ascontiguousarray(image[index], dtype=np.float32))[None]
            padded, _ = pad_to_multiple(crop, multiple)
            crops.append(padded.numpy())
    return crops


def quantize_int8(model: Any, crops: Sequence[np.ndarray]) -> Any:
    """NNCF's post-training int8 quantisation of an ``openvino.Model`` on ``crops``."""
    import nncf  # optional dependency of the benchmarks

    return nncf.quantize(
        model,
        nncf.Dataset(list(crops)),
        subset_size=len(crops),
        preset=nncf.QuantizationPreset.MIXED,
    )


def openvino_member(
    member: LoadedModel,
    precision: str,
    *,
    onnx_bytes: bytes | None = None,
    calibration: Sequence[np.ndarray] | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """``member`` run by OpenVINO: ``precision`` ``fp32``, ``bf16`` or ``int8`` (``int8`` needs
    ``calibration`` crops; its unquantised layers run in bf16 where the CPU has it natively).

    Args:
        member: a PyTorch member (or several snapshots: export each).
        precision: ``fp32``, ``bf16`` or ``int8``.
        onnx_bytes: the member's ONNX export, when already made (one export, several rows).
        calibration: ``(1, C, *s)`` crops (:func:`calibration_crops`) for ``int8``.
        threads: OpenVINO's threads (default: PyTorch's).
    """
    model = read_onnx(onnx_bytes if onnx_bytes is not None else export_onnx_bytes(member))
    hint = precision
    if precision == "int8":
        if not calibration:
            raise ValueError("int8 needs calibration crops")
        model = quantize_int8(model, calibration)
        # The layers left unquantised: bf16 where native (also under an ISA cap: the cap
        # turns it off, and OpenVINO, which reads the CPU's flags, would ask for it anyway).
        hint = "bf16" if cpu_bf16_is_fast() else "fp32"
    network = OpenVinoNetwork(model, hint, threads)
    ov_member = dataclasses.replace(member, network=network, output_kind="probabilities")
    check_member(ov_member)
    return ov_member
