"""End to end on generated data: synth -> train a few steps -> predict with TTA -> evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import pytest

from cascadeseg import cli
from cascadeseg.config import load_config

#: Quarter-scale cases (4 mm voxels) and a few iterations: the pipeline, not the accuracy.
SMOKE = [
    "--cases",
    "4",
    "--test-cases",
    "1",
    "--scale",
    "0.25",
    "--workers",
    "1",
    "data.target_spacing=null",
    "data.patch_size=[32,32,32]",
    "train.epochs=1",
    "train.iters_per_epoch=2",
    "train.val_every=1",
    "train.snapshots=1",
]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    # Quarter-scale cases (4 mm voxels) and a few iterations: the pipeline, not the accuracy.
    status = cli.main(["demo", "--out", str(out), *SMOKE])
    assert status == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "dice_wt" in printed
    # Without --minutes training is given all the default 10-minute deadline leaves: more than
    # the 7 minutes it gets without a deadline, as these tiny steps take seconds.
    budget = load_config(out / "run" / "config.yaml").train.max_minutes
    assert budget is not None and 7.0 < budget < 10.0
    assert "deadline 10 min:" in printed and f"-> training for {budget:.1f} min\n" in printed
    assert "finished in" in printed and "training" in printed.split("finished in")[1]
    predictions = sorted((out / "predictions").glob("*.nii.gz"))
    assert [p.name for p in predictions] == ["SynthBraTS2021_00000.nii.gz"]
    case_id = "SynthBraTS2021_00000"
    reference = nib.load(out / "data" / "test" / case_id / f"{case_id}_seg.nii.gz")
    predicted = nib.load(predictions[0])
    assert predicted.shape == reference.shape
    assert (predicted.affine == reference.affine).all()
    with open(out / "evaluation" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["SynthBraTS2021_00000"]
    assert 0.0 <= float(rows[0]["dice_wt"]) <= 1.0
    report = (out / "evaluation" / "report.html").read_text()
    assert "SynthBraTS2021_00000" in report and "data:image/png;base64," in report
    # The trained run is a model `cascadeseg predict --model` accepts.
    assert (out / "run" / "checkpoints").is_dir()
    # Its recipe's validation would only watch the run: every training case trained.
    assert load_config(out / "run" / "config.yaml").data.split == "all"
    split = json.loads((out / "run" / "split.json").read_text())
    assert len(split["train"]) == 3 and not split["val"]


@pytest.mark.slow
def test_demo_with_a_missing_sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    # A deadline shorter than the steps around training: training gets its minimum, said.
    argv = ["demo", "--out", str(out), "--missing", "t1ce", "--deadline", "0.1", *SMOKE]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "-> training for 1.0 min\n" in printed
    assert "warning: the deadline leaves less than 1 min of training" in printed
    assert load_config(out / "run" / "config.yaml").train.max_minutes == 1.0
    assert "recipe two_stage_missing_cpu" in printed and "5/5" in printed
    case_id = "SynthBraTS2021_00000"
    assert f"{case_id}: Dice with all four sequences and without t1ce" in printed
    record = json.loads((out / "evaluation" / "missing_sequences.json").read_text())
    assert record["case"] == case_id and record["missing"] == ["t1ce"]
    assert set(record["dice"]) == {"all four", "without t1ce"}
    assert all(0.0 <= v <= 1.0 for d in record["dice"].values() for v in d.values())
    predicted = json.loads((out / "predictions_missing" / f"{case_id}.json").read_text())
    assert predicted["missing_sequences"] == ["t1ce"] and predicted["substituted"] == {}
    # The run trained with the missing recipe's sequence dropout (not the ordinary recipe's 0).
    trained = load_config(out / "run" / "config.yaml").data
    assert trained.sequence_dropout == load_config("two_stage_missing_cpu").data.sequence_dropout
    assert trained.sequence_dropout > 0


def test_demo_preprocesses_the_cases_training_reads(tmp_path: Path) -> None:
    """The demo fills the cache before training, with its own workers; training then finds
    every labelled case there (reused, not built again)."""
    from cascadeseg import demo
    from cascadeseg.data.cache import PreprocessCache, default_cache_dir
    from cascadeseg.data.layouts import discover_cases
    from cascadeseg.data.preprocess import PreprocessConfig
    from cascadeseg.data.synth import SynthConfig, synthesize_dataset

    data = tmp_path / "train"
    synth = SynthConfig(shape_scale=0.25)
    synthesize_dataset(data, 2, seed=0, layout="brats2021", workers=1, config=synth)
    cfg = load_config("two_stage_cpu", ["data.target_spacing=null"])
    demo._preprocess(cfg, data, workers=1)
    cache = PreprocessCache(default_cache_dir(data), PreprocessConfig.from_data_config(cfg.data))
    result = cache.warm(discover_cases(data), workers=1, progress=False)
    assert len(result.reused) == 2 and not result.built and not result.failed


@pytest.mark.parametrize("model", ["two_stage", "unet3d", "cunet", "unet2d"])
def test_the_deadline_estimate_predicts_with_each_demo_model(tmp_path: Path, model: str) -> None:
    """The estimate before training runs every demo model's recipe (3D and 2D, CU-Net's own
    slice context) on a held-out case, untrained, as the prediction step will."""
    import math

    from cascadeseg.data.synth import SynthConfig, synthesize_dataset
    from cascadeseg.demo import DEMO_MODELS, one_prediction_seconds

    assert model in DEMO_MODELS
    test = tmp_path / "test"
    synth = SynthConfig(shape_scale=0.25)
    synthesize_dataset(test, 1, seed=1, layout="brats2021", workers=1, config=synth)
    cfg = load_config(f"{model}_cpu", ["data.target_spacing=null"])
    seconds = one_prediction_seconds(cfg, test)
    assert math.isfinite(seconds) and seconds > 0
