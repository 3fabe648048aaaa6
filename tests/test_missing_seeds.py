"""experiments/missing_seeds.py: the runs it trains, how it pairs seeds and its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import common  # noqa: E402
import missing_seeds  # noqa: E402
import missing_study  # noqa: E402


def _dice(mean: float, tc: float | None = None) -> dict[str, float]:
    tc = mean if tc is None else tc
    wt = et = (3 * mean - tc) / 2
    return {"wt": wt, "tc": tc, "et": et, "mean": mean}


def test_runs_and_variants() -> None:
    args = missing_seeds.parse_args(
        ["--runs", "ordinary", "p15", "--variant", "p15=data.sequence_dropout=0.15,seed=3"]
    )
    specs = missing_seeds.run_specs(args)
    assert specs == {
        "ordinary": missing_study.RUNS["ordinary"],
        "p15": ("two_stage_missing_cpu", ["data.sequence_dropout=0.15", "seed=3"]),
    }
    assert list(missing_seeds.run_specs(missing_seeds.parse_args([]))) == [
        "ordinary",
        "dropout_mask",
    ]
    with pytest.raises(RuntimeError, match="unknown run"):
        missing_seeds.run_specs(missing_seeds.parse_args(["--runs", "nope"]))
    with pytest.raises(RuntimeError, match="NAME=KEY=VALUE"):
        missing_seeds.run_specs(missing_seeds.parse_args(["--variant", "bare"]))


def test_training_command_has_the_missing_studys_budget(tmp_path: Path) -> None:
    """The same steps and batch as the missing study's runs, the seed and device asked for,
    the variant's overrides last (they win)."""
    settings = common.Settings(out=tmp_path, steps_3d=600)
    spec = ("two_stage_missing_cpu", ["data.sequence_dropout=0.15"])
    argv = missing_seeds.train_argv(settings, "p15", spec, 4, "cuda")
    assert argv[:2] == ["train", "two_stage_missing_cpu"]
    assert argv[argv.index("--out") + 1] == str(tmp_path / "runs" / "seeds_p15_s4")
    budget = common.step_budget(600, 3, 60, 1, 5).overrides()
    assert all(item in argv for item in budget)
    assert "train.batch_size=2" in argv and "train.max_minutes=null" in argv
    assert argv.index("seed=4") < argv.index("data.sequence_dropout=0.15")
    assert argv[-1] == "train.device=cuda"


def _record(run: str, seed: int, dice: dict | None, missing: dict | None = None) -> dict:
    record: dict = {"run": run, "seed": seed}
    if dice is None:
        record["error"] = "cascadeseg train exited 1: boom"
    else:
        record["dice"] = dice
    if missing is not None:
        record["missing"] = missing
    return record


def test_compare_pairs_seeds_with_the_baseline() -> None:
    records = [
        _record("ordinary", 0, _dice(0.90)),
        _record("dropout_mask", 0, _dice(0.88, tc=0.86), {"t1ce": _dice(0.5)}),
        _record("ordinary", 1, _dice(0.80)),
        _record("dropout_mask", 1, _dice(0.805), {"t1ce": _dice(0.3)}),
        _record("ordinary", 2, None),  # failed: seed 2 is not paired
        _record("dropout_mask", 2, _dice(0.70), {"t1ce": _dice(0.1)}),
    ]
    summary = missing_seeds.compare(records, ["ordinary", "dropout_mask"])
    assert summary["ordinary"]["seeds"] == 2 and "difference" not in summary["ordinary"]
    mine = summary["dropout_mask"]
    assert mine["seeds"] == 3 and mine["paired_seeds"] == 2
    assert mine["difference"]["mean"] == pytest.approx((-0.02 + 0.005) / 2)
    assert mine["difference"]["tc"] == pytest.approx((-0.04 + 0.005) / 2)
    assert mine["worst_difference"] == pytest.approx(-0.02)
    assert mine["seeds_within"] == 1
    assert mine["dice"]["mean"] == pytest.approx((0.88 + 0.805 + 0.70) / 3)
    assert mine["missing"]["t1ce"]["mean"] == pytest.approx(0.3)
    text = missing_seeds.table(records, ["ordinary", "dropout_mask"], summary)
    lines = text.splitlines()
    assert lines[0] == "| seed | ordinary | dropout_mask |"
    assert lines[4] == "| 2 | failed | 0.700 |"
    row = next(line for line in lines if line.startswith("| dropout_mask | 3 |"))
    assert "-0.008 (WT" in row and "| -0.020 | 1 of 2 | 0.300 |" in row
    assert missing_seeds.compare([_record("ordinary", 0, None)], ["ordinary"]) == {
        "ordinary": {"seeds": 0}
    }


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs of four steps on quarter-scale cases, trained, predicted (with every sequence
    and without T1ce for the dropout run) and scored by the real command line."""
    argv = ["--out", str(tmp_path), "--train-cases", "5", "--test-cases", "1", "--scale",
            "0.25", "--steps-3d", "4", "--set", "data.target_spacing=null", "--set",
            "data.patch_size=[32,32,32]", "--seeds", "0", "--parallel", "2", "--missing", "t1ce",
            "--no-progress"]  # fmt: skip
    missing_seeds.main(argv)
    result = json.loads((tmp_path / "missing_seeds" / "seeds.json").read_text())
    runs = {r["run"]: r for r in result["runs"]}
    assert set(runs) == {"ordinary", "dropout_mask"}
    assert all(r["steps"] == 4 and "error" not in r for r in runs.values())
    assert set(runs["dropout_mask"]["missing"]) == {"t1ce"} and "missing" not in runs["ordinary"]
    assert "paired_seeds" in result["summary"]["dropout_mask"]
    lines = (tmp_path / "missing_seeds" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert "| seed | ordinary | dropout_mask |" in capsys.readouterr().out


def test_an_unfinished_run_is_trained_again_and_a_finished_one_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = common.Settings(out=tmp_path, steps_3d=8)
    args = missing_seeds.parse_args(["--missing", "t1ce"])
    spec = missing_study.RUNS["dropout_mask"]
    run_dir = tmp_path / "runs" / "seeds_dropout_mask_s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "stale.txt").write_text("an interrupted run")
    trained: list[list[str]] = []

    def fake_cli(argv: list[str], log: Path, threads: int) -> float:
        if argv[1] == "two_stage_cpu":
            raise RuntimeError("cascadeseg train exited 1: boom")
        assert not (run_dir / "stale.txt").exists()
        trained.append(argv)
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"steps": 8}))
        return 60.0

    scored: list[str | None] = []

    def fake_score(settings: object, folder: Path, missing: str | None, *rest: object) -> dict:
        scored.append(missing)
        return _dice(0.8)

    monkeypatch.setattr(missing_seeds, "run_cli", fake_cli)
    monkeypatch.setattr(missing_seeds, "score", fake_score)
    record = missing_seeds.one_run(settings, "dropout_mask", spec, 0, args)
    assert len(trained) == 1 and record["steps"] == 8 and record["train_minutes"] == 1.0
    assert scored == [None, "t1ce"] and set(record["missing"]) == {"t1ce"}
    again = missing_seeds.one_run(settings, "dropout_mask", spec, 0, args)
    assert len(trained) == 1 and again["dice"] == record["dice"]
    failing = missing_seeds.one_run(settings, "ordinary", missing_study.RUNS["ordinary"], 0, args)
    assert failing["error"] == "cascadeseg train exited 1: boom" and "dice" not in failing
    lines = (tmp_path / "missing_seeds" / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["run"] for line in lines] == ["dropout_mask"] * 2 + ["ordinary"]


def test_summary_from_the_records_of_several_invocations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--from-records`` trains nothing: the latest record per run and seed, of every seed the
    file holds (or ``--seeds``), makes ``seeds.json`` and the tables."""
    folder = tmp_path / "missing_seeds"
    folder.mkdir()
    lines = [
        _record("ordinary", 6, _dice(0.90)),
        _record("dropout_mask", 6, _dice(0.89)),
        _record("dropout_mask", 7, None),  # failed, then trained again below: the later counts
        _record("ordinary", 7, _dice(0.80)),
        _record("other", 7, _dice(0.1)),  # a run not asked for
        _record("dropout_mask", 7, _dice(0.78)),
    ]
    text = "\n".join(json.dumps(r) for r in lines) + "\n\n"
    (folder / "records.jsonl").write_text(text)
    missing_seeds.main(["--out", str(tmp_path), "--from-records"])
    result = json.loads((folder / "seeds.json").read_text())
    assert [(r["run"], r["seed"]) for r in result["runs"]] == [
        ("ordinary", 6), ("dropout_mask", 6), ("ordinary", 7), ("dropout_mask", 7)
    ]  # fmt: skip
    mine = result["summary"]["dropout_mask"]
    assert mine["paired_seeds"] == 2 and mine["difference"]["mean"] == pytest.approx(-0.015)
    assert result["from_records"] is True and result["environment"] is None
    assert "| 7 | 0.800 | 0.780 |" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # no training
    missing_seeds.main(["--out", str(tmp_path), "--from-records", "--seeds", "7"])
    result = json.loads((folder / "seeds.json").read_text())
    assert {r["seed"] for r in result["runs"]} == {7}
    (folder / "records.jsonl").write_text("{not json\n")
    with pytest.raises(RuntimeError, match="line 1: not JSON"):
        missing_seeds.main(["--out", str(tmp_path), "--from-records"])
    with pytest.raises(RuntimeError, match="no records"):
        missing_seeds.main(["--out", str(tmp_path / "elsewhere"), "--from-records"])
