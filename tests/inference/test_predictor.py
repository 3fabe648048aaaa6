"""End-to-end prediction: geometry, label conventions, robustness, outputs, command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, inv_ornt_aff
from torch import nn

from cascadeseg import cli
from cascadeseg.config import Config, apply_overrides, to_dict
from cascadeseg.data.case import Case, Meta
from cascadeseg.data.labels import ET, label_to_regions, to_internal
from cascadeseg.data.layouts import discover_cases
from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.data.writers import WRITABLE_LAYOUTS, write_case
from cascadeseg.errors import ConfigError
from cascadeseg.evaluation.metrics import dice
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.plan import files_in_modality_order
from cascadeseg.inference.predictor import predict, predict_case
from cascadeseg.inference.volume import slice_stack
from cascadeseg.models import build_model
from cascadeseg.models.checkpoint import atomic_torch_save, make_checkpoint
from toy import make_tiny_case

QUIET = PredictOptions(progress=False, device="cpu", precision="fp32")


class IntensityNet(nn.Module):
    """A voxel-wise model that segments the toy cases from their z-scored intensities.

    Each output voxel depends on its own input voxel only (the centre slice's channels in 2.5D),
    so it is flip-equivariant, sliding-window exact, and identical in 2D and 3D.
    """

    output_kind = "probabilities"

    def __init__(self, spatial_dims: int = 3, context: int = 0, sharpness: float = 1.0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.context = context
        self.in_channels = 4 * (2 * context + 1)
        self.sharpness = nn.Parameter(torch.tensor(float(sharpness)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = 4 * self.context
        flair, t1, t1ce = x[:, c], x[:, c + 1], x[:, c + 2]
        k = self.sharpness
        wt = torch.sigmoid(4 * k * (flair - 0.8))
        et = torch.sigmoid(2 * k * (t1ce - 3.0))
        ncr = torch.sigmoid(2 * k * (-(t1 + t1ce) - 6.5))
        return torch.stack([wt, torch.maximum(ncr, et), et], dim=1)


def member(
    spatial_dims: int = 3,
    context: int = 0,
    preprocess: PreprocessConfig | None = None,
    sharpness: float = 1.0,
    **kw: Any,
) -> LoadedModel:
    net = IntensityNet(spatial_dims, context, sharpness).eval()
    base: dict[str, Any] = dict(
        network=net,
        name="intensity",
        spatial_dims=spatial_dims,
        output_kind="probabilities",
        in_channels=net.in_channels,
        slice_context=context,
        preprocess=preprocess or PreprocessConfig(),
        patch_size=(16,) * spatial_dims,
        size_divisor=8,
        et_min_voxels=None,
        source=Path("intensity-net"),
    )
    base.update(kw)
    return LoadedModel(**base)


def reoriented(case: Case, ornt: np.ndarray, case_id: str) -> Case:
    """The same head stored with permuted/flipped axes (world coordinates unchanged)."""
    image = np.stack([apply_orientation(c, ornt) for c in case.image]).astype(np.float32)
    label = None if case.label is None else apply_orientation(case.label, ornt).astype(np.uint8)
    affine = case.meta.affine @ inv_ornt_aff(ornt, case.image.shape[1:])
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    meta = Meta(
        case_id=case_id,
        affine=affine,
        spacing=spacing,  # type: ignore[arg-type]
        shape=image.shape[1:],  # type: ignore[arg-type]
        source_layout="synthetic",
        label_convention="brats2021",
    )
    return Case(image=np.ascontiguousarray(image), label=label, meta=meta)


ORNT = np.array([[2, -1], [0, 1], [1, -1]], dtype=float)  # permute all axes, flip two


def _region_dice(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    return [dice(p, r) for p, r in zip(label_to_regions(pred), label_to_regions(ref))]


# --------------------------------------------------------------------------------------------
# predict_case


def test_prediction_segments_toy_case_and_2d_equals_3d(tiny_case: Case) -> None:
    three = predict_case(tiny_case, [member()], QUIET)
    assert three.label.shape == tiny_case.label.shape
    assert three.label.dtype == np.uint8
    assert min(_region_dice(three.label, tiny_case.label)) > 0.9
    assert three.info["members"][0]["passes"] == 8
    assert three.info["members"][0]["mode"] == "whole"
    # 2.5D with one neighbour on each side, slice by slice in batches of 5: same voxels. 2D
    # members fuse the brain mask by default; fuse it for the 3D member too to compare.
    three = predict_case(tiny_case, [member()], replace(QUIET, fuse_brain_mask=True))
    two = predict_case(tiny_case, [member(2, context=1)], replace(QUIET, batch_slices=5))
    assert two.info["members"][0]["passes"] == 4
    assert two.info["members"][0]["brain_mask_fused"]
    assert np.array_equal(two.label, three.label)
    assert np.allclose(two.probabilities, three.probabilities, atol=1e-6)


def test_slice_stack_channel_order_matches_training() -> None:
    image = np.arange(2 * 1 * 1 * 3, dtype=np.float32).reshape(2, 1, 1, 3)  # C=2, Z=3
    stack = slice_stack(image, 0, 3, 1)
    assert stack.shape == (3, 6, 1, 1)
    # slice 0: offset -1 is outside (zeros), offset 0 -> z0, offset +1 -> z1
    assert stack[0, :, 0, 0].tolist() == [0, 0, 0, 3, 1, 4]
    assert stack[2, :, 0, 0].tolist() == [1, 4, 2, 5, 0, 0]


def test_flip_equivariant_model_tta_equals_no_tta(tiny_case: Case) -> None:
    with_tta = predict_case(tiny_case, [member()], replace(QUIET, save_uncertainty=True))
    without = predict_case(tiny_case, [member()], replace(QUIET, tta=False))
    assert np.allclose(with_tta.probabilities, without.probabilities, atol=1e-6)
    assert np.array_equal(with_tta.label, without.label)
    assert with_tta.uncertainty is not None and float(with_tta.uncertainty.max()) < 1e-6


def test_same_head_stored_differently_gets_same_segmentation(tiny_case: Case) -> None:
    other = reoriented(tiny_case, ORNT, "toy_rot")
    assert other.image.shape[1:] != tiny_case.image.shape[1:]
    a = predict_case(tiny_case, [member()], QUIET)
    b = predict_case(other, [member()], QUIET)
    assert b.label.shape == other.image.shape[1:]  # on the input's own grid
    assert np.array_equal(apply_orientation(a.label, ORNT), b.label)


def test_non_1mm_input_resampled_by_recipe_and_restored() -> None:
    case = make_tiny_case((24, 32, 16), spacing=(1.5, 1.0, 2.0), seed=1)
    recipe = PreprocessConfig(target_spacing=(1.0, 1.0, 1.0))
    pred = predict_case(case, [member(preprocess=recipe)], QUIET)
    assert pred.info["members"][0]["mode"] == "whole"
    assert pred.label.shape == case.label.shape
    # The network runs on the 1 mm grid (partial-volume intensities at the tumour borders);
    # the whole tumour comes back onto the 1.5 x 1 x 2 mm grid.
    wt, _, _ = _region_dice(pred.label, case.label)
    assert wt > 0.9
    assert pred.info["preprocessing"]["target_spacing"] == [1.0, 1.0, 1.0]
    # stored differently, the same anisotropic head still gets the same segmentation
    other = predict_case(reoriented(case, ORNT, "rot"), [member(preprocess=recipe)], QUIET)
    assert np.array_equal(apply_orientation(pred.label, ORNT), other.label)
    # volumes are in mL from the header spacing: 3 mm^3 per voxel
    n_wt = int(np.count_nonzero(pred.label))
    assert pred.volumes_ml["WT"] == pytest.approx(n_wt * 3.0 / 1000)


def test_ensemble_variance_and_et_postprocessing(tiny_case: Case) -> None:
    members = [member(sharpness=1.0), member(sharpness=0.3)]
    opts = replace(QUIET, tta=False, save_uncertainty=True)
    pred = predict_case(tiny_case, members, opts)
    single = [predict_case(tiny_case, [m], opts).probabilities for m in members]
    assert np.allclose(pred.probabilities, (single[0] + single[1]) / 2, atol=1e-6)
    expected_var = ((single[0] - single[1]) / 2) ** 2
    assert pred.uncertainty is not None
    assert np.allclose(pred.uncertainty, expected_var, atol=1e-6)
    n_et = int(np.count_nonzero(pred.label == ET))
    assert n_et > 0 and pred.info["et_min_voxels"] == 0
    # a stored threshold above the ET volume turns it into necrosis
    stored = [replace(m, et_min_voxels=n_et + 1) for m in members]
    post = predict_case(tiny_case, stored, opts)
    assert not np.any(post.label == ET) and post.info["et_replaced_by_necrosis"]
    assert np.array_equal(post.label > 0, pred.label > 0)
    # an explicit option wins over the stored value
    explicit = predict_case(tiny_case, stored, replace(opts, et_min_voxels=n_et))
    assert np.array_equal(explicit.label, pred.label)


def test_forced_sliding_window_equals_whole(tiny_case: Case) -> None:
    whole = predict_case(tiny_case, [member()], replace(QUIET, tta=False))
    slid = predict_case(tiny_case, [member()], replace(QUIET, tta=False, sliding_window="always"))
    assert slid.info["members"][0]["mode"] == "sliding"
    assert np.allclose(slid.probabilities, whole.probabilities, atol=1e-5)


def test_stacked_flips_give_the_same_probabilities(tiny_case: Case) -> None:
    torch.manual_seed(0)
    # A 3x3x3 convolution with random weights is not flip-equivariant: every flip matters.
    net = torch.nn.Sequential(torch.nn.Conv3d(4, 3, 3, padding=1), torch.nn.Sigmoid()).eval()
    one = predict_case(tiny_case, [member(network=net)], replace(QUIET, flips_per_call=1))
    auto = predict_case(tiny_case, [member(network=net)], QUIET)
    assert one.info["members"][0]["flips_per_call"] == 1
    assert auto.info["members"][0]["flips_per_call"] == 2  # the CPU default when it fits
    assert np.allclose(auto.probabilities, one.probabilities, atol=1e-5)
    plain = predict_case(tiny_case, [member(network=net)], replace(QUIET, tta=False))
    assert plain.info["members"][0]["flips_per_call"] == 1
    assert not np.allclose(plain.probabilities, one.probabilities, atol=1e-3)
    with pytest.raises(ConfigError, match="flips_per_call"):
        PredictOptions(flips_per_call=0)


# --------------------------------------------------------------------------------------------
# predict: files


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("layout", WRITABLE_LAYOUTS)
def test_output_geometry_and_label_convention_round_trip(tmp_path: Path, layout: str) -> None:
    case = reoriented(make_tiny_case(seed=2), ORNT, "case_001")
    data = tmp_path / "data"
    write_case(case, data, layout)
    ref = discover_cases(data)[0]
    out = tmp_path / "out"
    before = _files_under(tmp_path)
    results = predict([member()], data, out, replace(QUIET, save_probabilities=True))
    assert [r.status for r in results] == ["ok"]
    # nothing but the four outputs was written, all inside the output folder
    assert _files_under(tmp_path) - before == {
        out / f"{ref.case_id}{suffix}" for suffix in (".nii.gz", ".json", "_probabilities.nii.gz")
    }
    written = nib.load(out / f"{ref.case_id}.nii.gz")
    source = nib.load(next(p for k, p in ref.files.items() if k != "seg"))
    assert written.shape == case.image.shape[1:]
    assert np.array_equal(written.affine, source.affine)
    raw = np.asarray(written.dataobj)
    expected = predict_case(case, [member()], QUIET).label
    assert np.array_equal(to_internal(raw, ref.label_convention), expected)
    assert set(np.unique(raw)) >= {0, 1, 2}
    probs = nib.load(out / f"{ref.case_id}_probabilities.nii.gz")
    assert probs.shape == (*case.image.shape[1:], 3)
    assert np.array_equal(probs.affine, source.affine)
    record = json.loads((out / f"{ref.case_id}.json").read_text())
    assert record["label_convention"] == ref.label_convention
    assert record["volumes_ml"]["WT"] == pytest.approx(np.count_nonzero(expected) / 1000)


def test_labels_option_overrides_convention(tmp_path: Path, tiny_case: Case) -> None:
    case_dir = write_case(
        replace(tiny_case, meta=replace(tiny_case.meta, case_id="c1")), tmp_path / "d", "brats2021"
    )
    predict([member()], case_dir, tmp_path / "o21", QUIET)
    predict([member()], case_dir, tmp_path / "o23", replace(QUIET, labels="brats2023"))
    raw21 = np.asarray(nib.load(tmp_path / "o21" / "c1.nii.gz").dataobj)
    raw23 = np.asarray(nib.load(tmp_path / "o23" / "c1.nii.gz").dataobj)
    assert ET in set(np.unique(raw23)) and 4 not in set(np.unique(raw23))
    assert 4 in set(np.unique(raw21)) and 3 not in set(np.unique(raw21))
    assert np.array_equal(to_internal(raw21, "brats2021"), to_internal(raw23, "brats2023"))


def test_four_explicit_files(tmp_path: Path, tiny_case: Case) -> None:
    case_dir = write_case(
        replace(tiny_case, meta=replace(tiny_case.meta, case_id="BraTS-GLI-00001-000")),
        tmp_path / "d",
        "brats2023",
    )
    files = sorted(p for p in case_dir.iterdir() if "seg" not in p.name)
    ordered = files_in_modality_order(files)
    assert [p.name.split("-")[-1] for p in ordered] == [
        "t2f.nii.gz",
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
    ]
    results = predict([member()], files, tmp_path / "out", QUIET)
    assert [(r.case_id, r.status) for r in results] == [("BraTS-GLI-00001-000", "ok")]
    raw = np.asarray(nib.load(tmp_path / "out" / "BraTS-GLI-00001-000.nii.gz").dataobj)
    assert 3 in set(np.unique(raw))  # a 2023 case gets 2023 labels back


def _dataset(root: Path, n: int = 3) -> Path:
    for i in range(n):
        case = make_tiny_case(seed=i, case_id=f"BraTS2021_{i:05d}")
        write_case(case, root, "brats2021")
    return root


def test_batch_with_broken_case_continues(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    broken = data / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz"
    broken.write_bytes(broken.read_bytes()[:-200])  # truncated download
    lines: list[str] = []
    results = predict([member()], data, tmp_path / "out", QUIET, echo=lines.append)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "truncated" in results[1].message and "t1ce" in results[1].message
    assert not (tmp_path / "out" / "BraTS2021_00001.nii.gz").exists()
    assert (tmp_path / "out" / "BraTS2021_00002.nii.gz").exists()
    assert "3 case(s): 2 written" in lines[-2] and "1 failed" in lines[-2]
    assert lines[-1].startswith("failed: BraTS2021_00001:")


def test_existing_outputs_not_overwritten(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", n=1)
    out = tmp_path / "out"
    predict([member()], data, out, QUIET)
    target = out / "BraTS2021_00000.nii.gz"
    target.write_bytes(b"sentinel")
    results = predict([member()], data, out, QUIET)
    assert results[0].status == "skipped" and "--overwrite" in results[0].message
    assert target.read_bytes() == b"sentinel"
    results = predict([member()], data, out, replace(QUIET, overwrite=True))
    assert results[0].status == "ok"
    assert nib.load(target).shape == (32, 32, 24)


# --------------------------------------------------------------------------------------------
# command line with real checkpoints


def _checkpoint(path: Path, name: str, model_args: dict[str, Any]) -> Path:
    torch.manual_seed(0)
    model = build_model(name, **model_args)
    config = to_dict(apply_overrides(Config(), [f"model.name={name}"]))
    atomic_torch_save(
        make_checkpoint(
            model_name=name,
            model_args=model.model_args,
            model_state=model.state_dict(),
            config=config,
            epoch=1,
        ),
        path,
    )
    return path


def test_cli_predict_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data", n=2)
    ckpt = _checkpoint(tmp_path / "m.pt", "unet3d", {"base_width": 4, "depth": 1, "norm_groups": 2})
    out = tmp_path / "out"
    argv = ["predict", "--model", str(ckpt), "--input", str(data), "--output", str(out)]
    assert cli.main([*argv, "--no-tta", "--no-progress", "--device", "cpu"]) == 0
    assert (out / "BraTS2021_00001.nii.gz").exists()
    assert cli.main([*argv, "--no-tta", "--no-progress", "--device", "cpu"]) == 1  # skipped
    assert "2 skipped" in capsys.readouterr().out
    (data / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz").write_bytes(b"not a nifti")
    code = cli.main([*argv, "--no-tta", "--no-progress", "--device", "cpu", "--overwrite"])
    assert code == 1
    text = capsys.readouterr().out
    assert "1 failed" in text and "failed: BraTS2021_00000" in text
    # a model that does not fit is a user error (exit 2) with a one-line message
    bad = _checkpoint(
        tmp_path / "bad.pt",
        "unet3d",
        {"in_channels": 2, "base_width": 4, "depth": 1, "norm_groups": 2},
    )
    assert (
        cli.main(["predict", "--model", str(bad), "--input", str(data), "--output", str(out)]) == 2
    )
    assert "2 input channels" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "args"),
    [("cunet", {"base_width": 4, "depth": 1}), ("unet2d", {"base_width": 4, "depth": 1})],
)
def test_2d_models_fuse_brain_mask(
    tmp_path: Path, tiny_case: Case, name: str, args: dict[str, int]
) -> None:
    from cascadeseg.inference.loading import load_models

    ckpt = _checkpoint(tmp_path / f"{name}.pt", name, args)
    members = load_models([ckpt])
    pred = predict_case(tiny_case, members, replace(QUIET, tta=False))
    outside = tiny_case.image.max(axis=0) == 0
    assert pred.info["members"][0]["brain_mask_fused"]
    assert float(pred.probabilities[:, outside].max()) == 0.0
    assert float(pred.probabilities[:, ~outside].max()) > 0.0


class _OutOfMemoryAbove(IntensityNet):
    """The toy network, but a whole volume larger than 16^3 voxels "runs out of GPU memory"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0, 0].numel() > 16**3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return super().forward(x)


def test_out_of_memory_falls_back_and_the_case_completes(tiny_case: Case) -> None:
    flaky = replace(member(), network=_OutOfMemoryAbove().eval())
    expected = predict_case(tiny_case, [member()], replace(QUIET, tta=False))
    pred = predict_case(tiny_case, [flaky], replace(QUIET, tta=False))
    info = pred.info["members"][0]
    assert info["mode"] == "sliding"
    assert info["fallbacks"] == ["whole volume out of memory: sliding window"]
    assert np.allclose(pred.probabilities, expected.probabilities, atol=1e-5)
    assert np.array_equal(pred.label, expected.label)
