"""experiments/decoder_average.py: one trained two-stage model predicted with one decoder and
with both, the same weights (docs/results-decoder-average.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from cascadeseg.data.writers import write_case
from cascadeseg.models import build_model
from inference.tiny_members import save_model_checkpoint
from toy import make_tiny_case

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import decoder_average


def test_one_and_both_decoders_predict_every_case(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(2):
        write_case(
            make_tiny_case((24, 24, 16), seed=i, case_id=f"BraTS2021_{i:05d}"), data, "brats2021"
        )
    torch.manual_seed(0)
    model = build_model("two_stage", base_width=4, blocks=(1, 1), norm_groups=2)
    ckpt = save_model_checkpoint(tmp_path / "m.pt", "two_stage", model)
    out = tmp_path / "preds"
    argv = ["--model", str(ckpt), "--input", str(data), "--out", str(out), "--no-tta"]
    assert decoder_average.main(argv) == 0
    labels = {}
    for name in decoder_average.SETTINGS:
        files = sorted((out / name).glob("BraTS2021_*.nii.gz"))
        assert [f.name for f in files] == ["BraTS2021_00000.nii.gz", "BraTS2021_00001.nii.gz"]
        labels[name] = np.stack([np.asarray(nib.load(f).dataobj) for f in files])
    # The switch changes the output (random weights: the two decoders disagree somewhere).
    assert (labels["one"] != labels["both"]).any()


def test_a_model_without_two_decoders_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("unet3d", base_width=4, depth=1, norm_groups=2)
    ckpt = save_model_checkpoint(tmp_path / "u.pt", "unet3d", model)
    argv = ["--model", str(ckpt), "--input", str(tmp_path), "--out", str(tmp_path / "p")]
    assert decoder_average.main(argv) == 2
    assert not (tmp_path / "p").exists()
