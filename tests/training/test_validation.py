"""Training's validation: the predictor's single-volume function and evaluation's Dice give the
numbers the trainer's own whole-volume forward and Dice gave before."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cascadeseg.config import Config, apply_overrides
from cascadeseg.data.labels import REGIONS, label_to_regions
from cascadeseg.data.preprocess import Preprocessed, preprocess_case
from cascadeseg.inference.volume import predict_volume, slice_stack
from cascadeseg.models import build_model, region_probabilities
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.validation import validate
from toy import make_tiny_case


@pytest.fixture(scope="module")
def cases() -> list[Preprocessed]:
    return [
        preprocess_case(make_tiny_case((20, 26, 14), seed=i, case_id=f"c{i}")) for i in range(2)
    ]


def _old_probabilities(model: nn.Module, image: np.ndarray, slice_context: int) -> np.ndarray:
    """The trainer's former ``predict_probabilities`` in fp32: one forward of the whole volume
    (the model pads and crops back), or axial slices in batches of 16."""
    model.eval()
    with torch.no_grad():
        if model.spatial_dims == 3:
            out = model(torch.from_numpy(np.array(image, dtype=np.float32))[None])
            return region_probabilities(out, model.output_kind)[0].numpy()
        result = np.zeros((3, *image.shape[1:]), dtype=np.float32)
        for start in range(0, image.shape[-1], 16):
            stop = min(image.shape[-1], start + 16)
            out = model(torch.from_numpy(slice_stack(image, start, stop, slice_context)))
            probs = region_probabilities(out, model.output_kind)
            result[..., start:stop] = probs.numpy().transpose(1, 2, 3, 0)
        return result


def _old_validate(model: nn.Module, cases: list[Any], cfg: Config) -> dict[str, float]:
    """The trainer's former ``validate``: its own Dice and soft-Dice loss, written out."""
    rows = []
    for case in cases:
        probs = _old_probabilities(model, case.image, cfg.data.slice_context)
        probs = probs * np.asarray(case.brain_mask, dtype=np.float32)[None]
        ref = label_to_regions(case.label)
        pred = (probs >= cfg.inference.threshold).reshape(3, -1)
        flat = ref.reshape(3, -1).astype(bool)
        inter = np.logical_and(pred, flat).sum(1).astype(np.float64)
        total = pred.sum(1).astype(np.float64) + flat.sum(1)
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
        p = probs.astype(np.float64).reshape(3, -1)
        r = ref.astype(np.float64).reshape(3, -1)
        denom = (p * p).sum(1) + (r * r).sum(1)
        soft = np.where(denom > 1e-5, 2 * (p * r).sum(1) / (denom + 1e-5), 1.0)
        rows.append([1.0 - soft.mean(), *dice])
    means = np.mean(rows, axis=0)
    out = {"val_loss": float(means[0])}
    out.update({f"dice_{name}": float(v) for name, v in zip(REGIONS, means[1:])})
    out["dice_mean"] = float(np.mean(means[1:]))
    out["val_cases"] = float(len(cases))
    return out


@pytest.mark.parametrize(
    ("name", "args", "overrides"),
    [
        ("unet3d", {"base_width": 4, "depth": 2, "norm_groups": 2}, ["data.patch_size=[16,16,16]"]),
        ("cunet", {"base_width": 4, "slice_context": 1}, ["data.slice_context=1"]),
    ],
)
def test_validate_gives_the_former_numbers(
    cases: list[Preprocessed], name: str, args: dict[str, Any], overrides: list[str]
) -> None:
    torch.manual_seed(0)
    model = build_model(name, **args)
    cfg = apply_overrides(
        Config(),
        [f"model.name={name}", "train.precision=fp32", "inference.threshold=0.5", *overrides],
    )
    model.train()
    result = validate(model, cases, cfg, DistInfo())
    assert not model.training  # left in eval mode, as before
    expected = _old_validate(model, cases, cfg)
    # The predictor pads before the network and crops the probabilities, the model padded
    # itself and cropped its logits: the activations differ by at most one float32 ulp.
    assert result == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert result["val_cases"] == 2.0 and 0.0 <= result["dice_mean"] <= 1.0


def test_predict_volume_falls_back_to_windows_only_when_out_of_memory(
    cases: list[Preprocessed], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = build_model("unet3d", base_width=4, depth=2, norm_groups=2).eval()
    image = cases[0].image
    whole = predict_volume(model, image, device=torch.device("cpu"), roi_size=(8, 8, 8))
    assert whole.shape == (3, *image.shape[1:]) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, _old_probabilities(model, image, 0), rtol=0, atol=1e-6)
    forward = model.forward
    seen: list[tuple[int, ...]] = []

    def small_only(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[2:]))
        if x[0, 0].numel() > 8**3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return forward(x)

    monkeypatch.setattr(model, "forward", small_only)
    windows = predict_volume(model, image, device=torch.device("cpu"), roi_size=(8, 8, 8))
    m = model.size_multiple
    assert seen[0] == tuple(-(-s // m) * m for s in image.shape[1:])  # whole volume first
    assert all(s == (8, 8, 8) for s in seen[1:]) and len(seen) > 1
    assert windows.shape == whole.shape
