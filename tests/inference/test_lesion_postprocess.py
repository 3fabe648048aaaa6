"""Lesion-aware post-processing: small-component removal per region, its tuning, storage, use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_members import tiny_member, tiny_run
from torch import nn

from cascadeseg.data.case import Case
from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.errors import ConfigError, ModelError
from cascadeseg.evaluation.lesions import lesion_matching
from cascadeseg.inference.ensemble import ensemble_min_lesion_voxels
from cascadeseg.inference.lesion_postprocess import (
    lesion_summary,
    parse_min_lesion_voxels,
    postprocess_lesions,
    region_mask,
    remove_small_lesions,
    resolve_min_lesion_voxels,
    tune_min_lesion_voxels,
)
from cascadeseg.inference.loading import LoadedModel, read_postprocess_json
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict, predict_case


def brats2023_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    return lesion_matching(pred, ref, spacing, rules="brats2023").dice


def _volume() -> np.ndarray:
    return np.zeros((16, 16, 16), dtype=np.uint8)


# ------------------------------------------------------------------------------ pure function


def test_small_wt_component_becomes_background_with_its_core() -> None:
    label = _volume()
    label[1:7, 1:7, 1:7] = ED  # 216 voxels
    label[3:5, 3:5, 3:5] = ET
    label[10:12, 10:12, 10] = NCR  # a 4-voxel WT component, all core
    label[10, 10, 10] = ET
    out = remove_small_lesions(label, {"wt": 5})
    assert not out[10:12, 10:12, 10].any()
    np.testing.assert_array_equal(out[:8, :8, :8], label[:8, :8, :8])
    assert label[10, 10, 10] == ET  # the input is not modified


def test_small_tc_component_becomes_edema_and_wt_is_kept() -> None:
    label = _volume()
    label[1:12, 1:12, 1:12] = ED
    label[2:6, 2:6, 2:6] = NCR  # 64-voxel core
    label[9, 9, 9:11] = ET  # a 2-voxel core component with ET
    out = remove_small_lesions(label, {"tc": 3})
    assert out[9, 9, 9] == ED and out[9, 9, 10] == ED
    np.testing.assert_array_equal(out > 0, label > 0)
    assert (out == NCR).sum() == 64


def test_small_et_component_becomes_necrosis_and_tc_is_kept() -> None:
    label = _volume()
    label[1:12, 1:12, 1:12] = NCR
    label[2:5, 2:5, 2:5] = ET  # 27 voxels
    label[9, 9, 9] = ET
    out = remove_small_lesions(label, {"et": 10})
    assert out[9, 9, 9] == NCR and (out == ET).sum() == 27
    np.testing.assert_array_equal(np.isin(out, (NCR, ET)), np.isin(label, (NCR, ET)))


def test_threshold_is_strict_26_connected_and_off_below_two() -> None:
    label = _volume()
    label[2, 2, 2] = label[3, 3, 3] = label[4, 4, 4] = ED  # one diagonal component of 3
    assert remove_small_lesions(label, {"wt": 3})[3, 3, 3] == ED
    assert remove_small_lesions(label, {"wt": 4})[3, 3, 3] == 0
    for off in ({"wt": 0}, {"wt": 1}, {}):
        np.testing.assert_array_equal(remove_small_lesions(label, off), label)


def test_postprocess_lesions_records_what_it_removed() -> None:
    label = _volume()
    label[1:9, 1:9, 1:9] = ED
    label[2:5, 2:5, 2:5] = NCR
    label[7, 7, 7] = ET  # a one-voxel core inside the edema
    label[12, 12, 12] = label[14, 14, 14] = ED  # two specks
    out, info, _ = postprocess_lesions(label, {"wt": 2, "tc": 5}, {"et": 0})
    np.testing.assert_array_equal(out, remove_small_lesions(label, {"wt": 2, "tc": 5}))
    assert info["lesions_removed"] == {"wt": 2, "tc": 1, "et": 0}
    assert info["min_lesion_voxels_source"]["et"] == "option"


def test_lesion_summary_counts_and_volumes() -> None:
    label = _volume()
    label[0:2, 0:2, 0:2] = ET  # 8 voxels
    label[8:10, 8:10, 8] = ED  # 4 voxels
    summary = lesion_summary(label, (2.0, 2.0, 2.0))  # 8 mm^3 = 0.008 mL per voxel
    assert summary["WT"] == {"count": 2, "volumes_ml": [0.064, 0.032]}
    assert summary["TC"] == {"count": 1, "volumes_ml": [0.064]}
    assert summary["ET"]["count"] == 1
    assert lesion_summary(_volume(), (1, 1, 1))["ET"] == {"count": 0, "volumes_ml": []}


def test_parse_and_resolve() -> None:
    assert parse_min_lesion_voxels("wt=50, et=10") == {"wt": 50, "et": 10}
    assert parse_min_lesion_voxels("20") == {"wt": 20, "tc": 20, "et": 20}
    for bad in ("nc=3", "wt=-1", "wt=x", ""):
        with pytest.raises(ConfigError, match="--min-lesion-voxels"):
            parse_min_lesion_voxels(bad)
    values, sources = resolve_min_lesion_voxels({"wt": 30, "tc": 20}, {"tc": 5})
    assert values == {"wt": 30, "tc": 5, "et": 0}
    assert sources == {"wt": "stored", "tc": "option", "et": "default (off)"}
    with pytest.raises(ConfigError, match="min_lesion_voxels"):
        PredictOptions(min_lesion_voxels={"wt": -2})


# ---------------------------------------------------------------------------------- tuning


def _constructed_case() -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 216-voxel and a 64-voxel lesion (both over the 50-voxel BraTS 2023 size
    threshold). Prediction: both, three 2-voxel specks and a 20-voxel false positive."""
    ref = np.zeros((40, 40, 40), dtype=np.uint8)
    ref[2:8, 2:8, 2:8] = ET
    ref[20:24, 20:24, 20:24] = ET
    pred = ref.copy()
    for k in (30, 33, 36):
        pred[k, 2, 2:4] = ET
    pred[30:35, 30:34, 30] = ET  # 20 voxels
    return pred, ref


def test_tune_picks_the_threshold_between_false_positives_and_true_lesions() -> None:
    pred, ref = _constructed_case()
    result = tune_min_lesion_voxels([(pred, ref, (1.0, 1.0, 1.0))], brats2023_dice, (0, 5, 30, 100))
    # 0: 2 lesions + 4 false positives -> 2/6; 5: 2/3; 30: 2/2; 100: the 64-voxel lesion goes.
    assert result.mean_score["wt"] == pytest.approx({0: 1 / 3, 5: 2 / 3, 30: 1.0, 100: 0.5})
    # WT's removal already took the false positives out of TC and ET: ties go to 0 there.
    assert result.best == {"wt": 30, "tc": 0, "et": 0}
    assert result.n_cases == 1


def test_tune_per_region_core_specks_inside_the_edema() -> None:
    ref = np.zeros((24, 24, 24), dtype=np.uint8)
    ref[2:20, 2:20, 2:20] = ED
    ref[5:10, 5:10, 5:10] = NCR
    pred = ref.copy()
    pred[15, 15, 15] = NCR  # TC false positives inside the edema
    pred[15, 5, 15] = NCR
    result = tune_min_lesion_voxels([(pred, ref, (1, 1, 1))], brats2023_dice, (0, 2, 200))
    assert result.best == {"wt": 0, "tc": 2, "et": 0}
    with pytest.raises(ValueError):
        tune_min_lesion_voxels([], brats2023_dice)


def test_wt_threshold_is_judged_on_the_cores_it_removes_too() -> None:
    """A small satellite tumour segmented loosely in WT (Dice 0.39) but exactly in TC: removing
    it with a false positive would raise WT's lesion-wise Dice (0.46 -> 0.5) and halve TC's, so
    the WT threshold, judged on WT, TC and ET together, keeps it."""
    ref = np.zeros((48, 48, 48), dtype=np.uint8)
    ref[2:12, 2:12, 2:12] = ED
    ref[4:10, 4:10, 4:10] = NCR  # main tumour
    ref[30:36, 30:36, 2:8] = ED
    ref[31:35, 31:35, 3:7] = NCR  # satellite: 216 voxels, core 64
    pred = ref.copy()
    pred[30:36, 30:36, 2:8] = 0  # the satellite's core exactly, its WT leaking along z
    pred[31:35, 31:35, 3:7] = NCR
    pred[31:35, 31:35, 7:15] = ED
    pred[2:7, 40:45, 40:44] = ED  # a 100-voxel false positive, no core
    assert np.count_nonzero(pred[28:38, 28:38, :20]) == 192
    case = [(pred, ref, (1.0, 1.0, 1.0))]
    wt_alone = [
        brats2023_dice(region_mask(remove_small_lesions(pred, {"wt": c}), "wt"), ref > 0, (1, 1, 1))
        for c in (0, 300)
    ]
    assert wt_alone[1] > wt_alone[0]  # WT alone would take the satellite out
    result = tune_min_lesion_voxels(case, brats2023_dice, (0, 300))
    assert result.best["wt"] == 0
    assert result.mean_score["wt"][0] > result.mean_score["wt"][300]


# ----------------------------------------------------------------------- stored and applied


def test_postprocess_json_roundtrip_and_ensemble_median(tmp_path: Path) -> None:
    assert read_postprocess_json(tmp_path).min_lesion_voxels is None
    (tmp_path / "postprocess.json").write_text(json.dumps({"et_min_voxels": 0}))
    assert read_postprocess_json(tmp_path).min_lesion_voxels is None
    stored = {"wt": 50, "tc": 20, "et": 10}
    (tmp_path / "postprocess.json").write_text(json.dumps({"min_lesion_voxels": stored}))
    assert read_postprocess_json(tmp_path).min_lesion_voxels == stored
    (tmp_path / "postprocess.json").write_text(json.dumps({"min_lesion_voxels": {"wt": -1}}))
    with pytest.raises(ModelError, match=r"postprocess\.json"):
        read_postprocess_json(tmp_path)
    members = [_member(min_lesion_voxels={"wt": v, "et": 4}) for v in (10, 30, 50)]
    assert ensemble_min_lesion_voxels(members) == {"wt": 30, "et": 4}
    assert ensemble_min_lesion_voxels([_member()]) is None


class _FlairNet(nn.Module):
    """Voxel-wise regions from z-scored FLAIR/T1ce (segments the toy cases)."""

    output_kind = "probabilities"
    spatial_dims = 3
    in_channels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wt = torch.sigmoid(4 * (x[:, 0] - 0.8))
        et = torch.sigmoid(2 * (x[:, 2] - 3.0))
        return torch.stack([wt, et, et], dim=1)


def _member(**kw: object) -> LoadedModel:
    return tiny_member(_FlairNet().eval(), source="flair-net", name="flair", **kw)


QUIET = PredictOptions(progress=False, device="cpu", tta=False)


def test_predict_applies_stored_thresholds_and_the_option_wins(tiny_case: Case) -> None:
    raw = predict_case(tiny_case, [_member()], QUIET)
    wt_voxels = int(np.count_nonzero(raw.label))
    assert wt_voxels > 0 and raw.info["min_lesion_voxels"] == {"wt": 0, "tc": 0, "et": 0}
    stored = _member(min_lesion_voxels={"wt": wt_voxels + 1})
    post = predict_case(tiny_case, [stored], QUIET)
    assert not post.label.any() and post.volumes_ml["WT"] == 0.0
    assert post.info["min_lesion_voxels_source"]["wt"] == "stored"
    assert post.info["lesions_removed"]["wt"] >= 1
    override = predict_case(tiny_case, [stored], replace(QUIET, min_lesion_voxels={"wt": 0}))
    np.testing.assert_array_equal(override.label, raw.label)


def test_per_case_json_lists_lesions(tmp_path: Path, tiny_case: Case) -> None:
    from cascadeseg.data.writers import write_case

    write_case(tiny_case, tmp_path / "in", "brats2021")
    results = predict([_member()], tmp_path / "in", tmp_path / "out", QUIET)
    assert [r.status for r in results] == ["ok"]
    record = json.loads((tmp_path / "out" / f"{tiny_case.case_id}.json").read_text())
    lesions = record["lesions"]
    assert set(lesions) == {"WT", "TC", "ET"}
    assert lesions["WT"]["count"] == len(lesions["WT"]["volumes_ml"]) >= 1
    assert sum(lesions["WT"]["volumes_ml"]) == pytest.approx(record["volumes_ml"]["WT"], abs=1e-3)


def test_cli_tune_postprocess_stores_lesion_thresholds_load_models_reads(tmp_path: Path) -> None:
    from cascadeseg import cli
    from cascadeseg.inference.loading import load_models

    run, data = tiny_run(tmp_path)
    argv = ["tune-postprocess", "--model", str(run), "--data", str(data), "--no-tta"]
    argv += ["--device", "cpu", "--no-progress", "--candidates", "0", "--lesion-candidates"]
    assert cli.main([*argv, "0", "4"]) == 0
    stored = json.loads((run / "postprocess.json").read_text())
    assert set(stored["min_lesion_voxels"]) == {"wt", "tc", "et"}
    assert set(stored["mean_lesion_score"]["wt"]) == {"0", "4"}
    assert "BraTS 2023" in stored["lesion_objective"]
    assert load_models([run])[0].min_lesion_voxels == stored["min_lesion_voxels"]
    assert cli.main([*argv, "0", "--no-lesion-tuning"]) == 0
    assert "min_lesion_voxels" not in json.loads((run / "postprocess.json").read_text())
    assert cli.main([*argv, "0", "--challenge", "XYZ"]) == 2


def test_checkpoint_extra_and_onnx_export_carry_the_thresholds(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from cascadeseg.config import Config, apply_overrides, to_dict
    from cascadeseg.inference.export import export_onnx
    from cascadeseg.inference.loading import load_models, load_onnx_model
    from cascadeseg.models import build_model
    from cascadeseg.models.checkpoint import atomic_torch_save, make_checkpoint

    model = build_model("unet3d", base_width=4, depth=1, norm_groups=2)
    thresholds = {"wt": 40, "tc": 12, "et": 3}
    ckpt = make_checkpoint(
        model_name="unet3d",
        model_args=model.model_args,
        model_state=model.state_dict(),
        config=to_dict(apply_overrides(Config(), ["model.name=unet3d"])),
        epoch=1,
        extra={"min_lesion_voxels": thresholds},
    )
    atomic_torch_save(ckpt, tmp_path / "m.pt")
    members = load_models([tmp_path / "m.pt"])
    assert members[0].min_lesion_voxels == thresholds
    path = export_onnx(members, tmp_path / "m.onnx")
    assert load_onnx_model(path).min_lesion_voxels == thresholds


@pytest.mark.parametrize("region", ["wt", "tc", "et"])
def test_tuning_from_one_labelling_equals_removal(region: str) -> None:
    from cascadeseg.inference.lesion_postprocess import _component_sizes, _without_small

    rng = np.random.default_rng(3)
    label = rng.choice(np.arange(4, dtype=np.uint8), size=(20, 18, 12), p=[0.7, 0.1, 0.1, 0.1])
    components, sizes = _component_sizes(region_mask(label, region))
    for threshold in (0, 1, 2, 3, 5, 20, 1000):
        expected = remove_small_lesions(label, {region: threshold})
        assert np.array_equal(_without_small(label, components, sizes, threshold, region), expected)
