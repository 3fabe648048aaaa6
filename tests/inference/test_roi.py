"""Flip passes on the tumour's box (``tta_region="tumour"``): the box arithmetic, the moments
inside and outside the box, the all-background case, ensembles, the refusal of 2D members and
the case's JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from tiny_members import tiny_checkpoint, tiny_member
from torch import nn

from cascadeseg import cli
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError
from cascadeseg.inference.ensemble import MomentSum
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.options import PredictOptions, options_from_recipe
from cascadeseg.inference.predictor import predict_preprocessed
from cascadeseg.inference.roi import (
    TumourRegion,
    box_voxels,
    grow_box,
    image_box,
    label_box,
    network_crop,
    resolve_tta_region,
    tumour_box,
)
from cascadeseg.inference.sliding import pad_to_multiple
from cascadeseg.inference.tta import flip_combinations
from cascadeseg.inference.volume import member_moments
from toy import make_tiny_case

VOLUME = PredictOptions(
    progress=False, device="cpu", sliding_window="never", flips_per_call=1, precision="fp32"
)
TUMOUR = replace(VOLUME, tta_region="tumour", tta_region_margin=2)
CPU = torch.device("cpu")


class BlobNet(nn.Module):
    """A 3x3x3 convolution's sigmoid where channel 0 is bright (> 2), else 0: a local "tumour",
    and not flip-equivariant, so every flip differs."""

    output_kind = "probabilities"
    spatial_dims = 3
    in_channels = 4

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(4, 3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)) * (x[:, :1] > 2).float()


def blob_image(shape: tuple[int, int, int] = (20, 24, 18), blob: bool = True) -> np.ndarray:
    """``(4, *shape)`` noise below 2, with a bright block in channel 0 when ``blob``."""
    image = np.random.default_rng(0).uniform(-1, 1, size=(4, *shape)).astype(np.float32)
    if blob:
        image[0, 3:7, 5:9, 4:6] = 3.0
    return image


def pre_of(image: np.ndarray) -> Any:
    return SimpleNamespace(image=image, brain_mask=np.ones(image.shape[1:], bool))


def members(n: int, root: Path | None = None) -> list[LoadedModel]:
    """``n`` BlobNet members; with ``root``, snapshots of one run (paired flips)."""
    if root is None:
        return [tiny_member(BlobNet(i).eval(), source=f"m{i}.pt") for i in range(n)]
    return [
        tiny_member(
            BlobNet(i).eval(), source=root / "checkpoints" / f"snapshot_{i:04d}.pt", run_dir=root
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------
# box arithmetic


def test_tumour_box_is_the_bounding_box_above_the_threshold() -> None:
    p = np.zeros((3, 10, 12, 8), np.float32)
    p[1, 2, 3, 4] = 0.2
    p[2, 5, 7, 6] = 0.06
    p[0, 9, 0, 0] = 0.05  # not above the threshold
    assert tumour_box(p, 0.05) == ((2, 6), (3, 8), (4, 7))
    assert tumour_box(np.zeros_like(p), 0.05) is None


def test_grow_box_clips_to_the_volume() -> None:
    assert grow_box(((2, 6), (3, 8), (4, 7)), 3, (10, 12, 8)) == ((0, 9), (0, 11), (1, 8))
    assert grow_box(((2, 6),), 0, (10,)) == ((2, 6),)


def test_network_crop_rounds_out_to_the_multiple_in_padded_coordinates() -> None:
    # 20 voxels padded to 24 by (2, 2): box 5..9 is 7..11 padded, rounded out to 0..16.
    assert network_crop(((5, 9),), ((2, 2),), 8, (24,)) == ((0, 16),)
    # 8..17 padded 10..19 -> 8..24; the end clipped to the padded size.
    assert network_crop(((8, 17),), ((2, 2),), 8, (24,)) == ((8, 24),)
    # multiple 1: the box itself, moved by the padding.
    assert network_crop(((3, 5), (0, 2)), ((1, 0), (0, 0)), 1, (10, 10)) == ((4, 6), (0, 2))
    # an empty box stays empty (nothing to run)
    assert box_voxels(network_crop(((0, 0),), ((2, 2),), 8, (24,))) == 0


def test_image_box_undoes_the_padding_and_clips() -> None:
    assert image_box(((0, 16), (8, 24)), ((2, 2), (2, 2)), (20, 20)) == ((0, 14), (6, 20))


def test_region_box_from_the_first_pass() -> None:
    first = torch.zeros((1, 3, 24, 24, 24))
    first[0, 0, 10, 11, 12] = 0.9  # image voxel (8, 9, 10) with pads of 2
    region = TumourRegion(threshold=0.05, margin=3)
    region.decide(first, ((2, 2),) * 3, 8)
    # grown: (5..12, 6..13, 7..14); padded (7..14, 8..15, 9..16) -> (0..16, 8..16, 8..16)
    assert region.box == ((0, 14), (6, 14), (6, 14))
    record = region.record()
    assert record["box_voxels"] == 14 * 8 * 8
    assert record["box_fraction"] == pytest.approx(14 * 8 * 8 / 20**3, abs=1e-6)


def test_a_given_box_replaces_the_first_pass_box_and_keeps_margin_and_rounding() -> None:
    label = np.zeros((20, 20, 20), np.uint8)
    label[8, 9, 10] = 2
    assert label_box(label) == ((8, 9), (9, 10), (10, 11))
    assert label_box(np.zeros_like(label)) is None
    first = torch.zeros((1, 3, 24, 24, 24))  # nothing above the threshold: no box of its own
    region = TumourRegion(threshold=0.05, margin=3, given=label_box(label))
    region.decide(first, ((2, 2),) * 3, 8)
    # as test_region_box_from_the_first_pass, whose first pass found the same voxel
    assert region.box == ((0, 14), (6, 14), (6, 14))
    assert region.record()["box_given"] is True


def test_predict_preprocessed_takes_a_given_box_with_the_tumour_region_only() -> None:
    pre = pre_of(blob_image(blob=False))  # the network finds no tumour
    (member,) = members(1)
    given = ((3, 7), (5, 9), (4, 6))
    _, _, info = predict_preprocessed(pre, [member], TUMOUR, tumour_box=given)
    assert info["passes"] == 8 and info["tta_region_box"]["box_given"]
    assert 0 < info["tta_region_box"]["box_fraction"] < 1
    _, _, alone = predict_preprocessed(pre, [member], TUMOUR)
    assert alone["passes"] == 1 and not alone["tta_region_box"]["box_given"]
    with pytest.raises(ConfigError, match="tta_region 'tumour'"):
        predict_preprocessed(pre, [member], VOLUME, tumour_box=given)


# --------------------------------------------------------------------------------------------
# the moments


def test_margin_covering_the_volume_equals_volume_exactly(tmp_path: Path) -> None:
    pre = pre_of(blob_image())
    wide = replace(TUMOUR, tta_region_margin=100)
    for ensemble in (members(1), members(8, tmp_path / "run"), members(2)):
        for mode in ("paired", "product"):
            mean_v, var_v, info_v = predict_preprocessed(
                pre, ensemble, replace(VOLUME, ensemble_mode=mode)
            )
            mean_t, var_t, info_t = predict_preprocessed(
                pre, ensemble, replace(wide, ensemble_mode=mode)
            )
            np.testing.assert_array_equal(mean_t, mean_v)
            np.testing.assert_array_equal(var_t, var_v)
            assert info_t["passes"] == info_v["passes"]
            assert info_t["tta_region_box"]["box_fraction"] == 1.0


def test_all_background_first_pass_is_the_only_pass(tmp_path: Path) -> None:
    image = blob_image(blob=False)
    pre = pre_of(image)
    for ensemble in (members(1), members(8, tmp_path / "run")):
        mean, variance, info = predict_preprocessed(pre, ensemble, TUMOUR)
        assert info["passes"] == 1
        assert [m["passes"] for m in info["members"]][1:] == [0] * (len(ensemble) - 1)
        assert info["tta_region_box"]["box_voxels"] == 0
        assert not mean.any() and not variance.any()


def _by_hand(net: nn.Module, image: np.ndarray, crop: tuple[slice, ...]) -> tuple[Any, Any]:
    """Identity on the whole padded volume; inside ``crop`` the other 7 flips on the crop."""
    x, _ = pad_to_multiple(torch.from_numpy(image)[None], 8)
    with torch.no_grad():
        first = net(x)
        xc = x[(..., *crop)]
        outs = [torch.flip(net(torch.flip(xc, f)), f) for f in flip_combinations(3)[1:]]
    total, total_sq = first.clone(), first * first
    total[(..., *crop)] += sum(outs)
    total_sq[(..., *crop)] += sum(o * o for o in outs)
    count = torch.ones_like(first[:, :1])
    count[(..., *crop)] = 8
    return (total / count)[0, :, 2:22], (total_sq / count)[0, :, 2:22]


def test_moments_inside_and_outside_the_box() -> None:
    image = blob_image((20, 24, 16))  # padded to (24, 24, 16) by ((2, 2), (0, 0), (0, 0))
    (member,) = members(1)
    region = TumourRegion(threshold=0.05, margin=2)
    mean, mean_sq, info = member_moments(member, image, TUMOUR, CPU, "fp32", region=region)
    # blob 3..7, 5..9, 4..6 -> grown 1..9, 3..11, 2..8 -> padded 3..11 -> 0..16, 0..16, 0..8
    assert region.box == ((0, 14), (0, 16), (0, 8))
    assert info["passes"] == 8 and info["covers"] is None
    expected_mean, expected_sq = _by_hand(
        member.network, image, (slice(0, 16),) * 2 + (slice(0, 8),)
    )
    np.testing.assert_allclose(mean, expected_mean, atol=1e-6)
    np.testing.assert_allclose(mean_sq, expected_sq, atol=1e-6)
    moments = MomentSum()
    moments.add(mean.numpy(), mean_sq.numpy(), info["covers"])
    _, variance = moments.result()
    assert not variance[:, 14:].any() and not variance[:, :, :, 8:].any()  # one pass outside
    assert variance[:, 3:7, 5:9, 4:6].max() > 1e-4  # the flips differ inside


def test_paired_members_share_the_first_members_box(tmp_path: Path) -> None:
    image = blob_image()
    ensemble = members(8, tmp_path / "run")
    mean, variance, info = predict_preprocessed(pre_of(image), ensemble, TUMOUR)
    box = info["tta_region_box"]["box"]
    assert info["passes"] == 8 and 0 < info["tta_region_box"]["box_fraction"] < 1
    assert info["members"][0]["covers"] is None
    assert all(m["covers"] == box for m in info["members"][1:])
    outside = np.ones(image.shape[1:], bool)
    outside[tuple(slice(lo, hi) for lo, hi in box)] = False
    first, _, _ = member_moments(ensemble[0], image, VOLUME, CPU, "fp32", [()])
    np.testing.assert_array_equal(mean[:, outside], first.numpy()[:, outside])
    assert not variance[:, outside].any()


# --------------------------------------------------------------------------------------------
# refusals, options, the case's JSON


def test_2d_members_are_refused() -> None:
    flat = tiny_member(BlobNet().eval(), spatial_dims=2, in_channels=4)
    with pytest.raises(ConfigError, match="3D members only"):
        member_moments(flat, blob_image(), TUMOUR, CPU, "fp32", region=TumourRegion(0.05, 2))
    with pytest.raises(ConfigError, match="3D members only"):
        options_from_recipe([flat], {"tta_region": "tumour"}, device="cpu")
    options_from_recipe([flat], {"tta_region": "volume"}, device="cpu")  # the default is fine


def test_auto_is_the_box_on_the_cpu_for_3d_members_and_the_volume_elsewhere() -> None:
    solid = members(1)
    flat = [tiny_member(BlobNet().eval(), spatial_dims=2, in_channels=4)]
    assert resolve_tta_region("auto", "cpu", solid) == "tumour"
    assert resolve_tta_region("auto", "cuda", solid) == "volume"
    assert resolve_tta_region("auto", "cpu", flat) == "volume"
    assert resolve_tta_region("volume", "cpu", solid) == "volume"  # given values stay
    options = options_from_recipe(solid, {"tta_region": "auto"}, device="cpu")
    assert options.tta_region == "tumour"
    assert options.settings_origin["tta_region"] == "option (auto on cpu)"
    assert options_from_recipe(flat, {"tta_region": "auto"}, device="cpu").tta_region == "volume"


def test_auto_left_in_the_options_is_resolved_by_the_predictor() -> None:
    """Options made without :func:`options_from_recipe` may still say ``auto``: the predictor
    resolves it for its device and records what ran."""
    solid = members(1)
    _, _, info = predict_preprocessed(
        pre_of(blob_image()), solid, replace(VOLUME, tta_region="auto"), device=CPU
    )
    assert info["tta_region"] == "tumour" and "tta_region_box" in info


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="tta_region"):
        PredictOptions(tta_region="brain")
    with pytest.raises(ConfigError, match="tta_region_margin"):
        PredictOptions(tta_region_margin=-1)
    with pytest.raises(ConfigError, match="tta_region_threshold"):
        PredictOptions(tta_region_threshold=1.0)


def test_case_json_records_the_box_and_passes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_case(make_tiny_case(seed=0, case_id="BraTS2021_00000"), data, "brats2021")
    ckpt = tiny_checkpoint(tmp_path / "m.pt", seed=0)
    out = tmp_path / "out"
    common = ["predict", "--input", str(data), "--no-progress", "--device", "cpu"]
    argv = [*common, "--model", str(ckpt), "--output", str(out), "--tta-region", "tumour"]
    assert cli.main([*argv, "--tta-margin", "4"]) == 0
    settings = json.loads((out / "BraTS2021_00000.json").read_text())["settings"]
    assert settings["tta_region"] == "tumour"
    assert settings["settings_origin"]["tta_region"] == "option"
    record = settings["tta_region_box"]
    assert record["margin"] == 4 and record["threshold"] == 0.05
    assert 0.0 <= record["box_fraction"] <= 1.0
    assert settings["passes"] in (1, 8)


def test_maps_are_not_added_to_a_segmentation_of_the_other_region(tmp_path: Path) -> None:
    from cascadeseg.inference.predictor import predict

    data = tmp_path / "data"
    write_case(make_tiny_case(seed=0, case_id="c1"), data, "brats2021")
    ensemble = members(2, tmp_path / "run")
    out = tmp_path / "out"
    assert predict(ensemble, data, out, VOLUME)[0].status == "ok"
    result = predict(ensemble, data, out, replace(TUMOUR, save_probabilities=True))[0]
    assert result.status == "skipped" and "tta_region volume" in result.message
    assert predict(ensemble, data, out, replace(VOLUME, save_probabilities=True))[0].status == "ok"


def test_auto_is_resolved_once_for_a_batch_and_its_reruns(tmp_path: Path) -> None:
    """``predict`` resolves ``auto`` before planning: the case's JSON records the region that
    ran, and a rerun with ``auto`` adds maps to that segmentation instead of refusing it."""
    from cascadeseg.inference.predictor import predict

    data = tmp_path / "data"
    write_case(make_tiny_case(seed=0, case_id="c1"), data, "brats2021")
    ensemble = members(2, tmp_path / "run")
    out = tmp_path / "out"
    auto = replace(TUMOUR, tta_region="auto", device="cpu")
    assert predict(ensemble, data, out, auto)[0].status == "ok"
    settings = json.loads((out / "c1.json").read_text())["settings"]
    assert settings["tta_region"] == "tumour"
    assert predict(ensemble, data, out, replace(auto, save_probabilities=True))[0].status == "ok"
    assert (out / "c1_probabilities.nii.gz").is_file()


def test_a_member_of_another_multiple_counts_where_its_crop_ran() -> None:
    image = blob_image()
    first = tiny_member(BlobNet(0).eval(), source="a.pt")
    coarse = tiny_member(BlobNet(1).eval(), source="b.pt", size_divisor=16)
    mean, variance, info = predict_preprocessed(pre_of(image), [first, coarse], TUMOUR)
    box = info["tta_region_box"]["box"]
    covers = info["members"][1]["covers"]
    assert all(c_lo <= b_lo and b_hi <= c_hi for (b_lo, b_hi), (c_lo, c_hi) in zip(box, covers))
    outside = np.ones(image.shape[1:], bool)
    outside[tuple(slice(lo, hi) for lo, hi in covers)] = False
    alone, _, _ = member_moments(first, image, VOLUME, CPU, "fp32", [()])
    np.testing.assert_array_equal(mean[:, outside], alone.numpy()[:, outside])
    assert not variance[:, outside].any()
    inside = ~outside
    assert np.abs(mean[:, inside] - alone.numpy()[:, inside]).max() > 1e-4  # both members count
