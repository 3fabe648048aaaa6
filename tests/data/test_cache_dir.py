"""Where the preprocessing cache lives: --cache, the dataset folder, or the user's cache folder
when the dataset is read-only (train, preprocess)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascadeseg.cli import main
from cascadeseg.config import Config, apply_overrides, save_config
from cascadeseg.data.cache import default_cache_dir, resolve_cache_dir, user_cache_dir
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from toy import make_tiny_case


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for i in range(3):
        case = make_tiny_case((24, 24, 24), seed=i, case_id=f"toy_{i:03d}", with_et=i != 2)
        write_case(case, root, "brats2021")
    return root


@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "cascadeseg"


@pytest.fixture
def read_only(data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``data`` as a read-only folder. chmod does not stop root, so os.access is answered for
    paths under ``data`` (and the real permission removed too, for non-root runs)."""
    real_access = os.access

    def access(path: os.PathLike[str] | str, mode: int, **kw: object) -> bool:
        inside = os.path.realpath(path).startswith(os.path.realpath(data))
        if inside and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    data.chmod(0o555)
    yield data
    data.chmod(0o755)


def test_user_cache_dir_follows_xdg(user_cache: Path) -> None:
    assert user_cache_dir() == user_cache


def test_given_default_and_fallback(data: Path, user_cache: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    assert resolve_cache_dir(data, tmp_path / "c", echo=notes.append) == tmp_path / "c"
    assert resolve_cache_dir(data, echo=notes.append) == default_cache_dir(data)
    assert notes == []


def test_read_only_dataset_falls_back_to_the_user_cache(read_only: Path, user_cache: Path) -> None:
    notes: list[str] = []
    first = resolve_cache_dir(read_only, echo=notes.append)
    assert first.parent == user_cache and first.name.startswith("data-")
    assert resolve_cache_dir(read_only, echo=notes.append) == first  # keyed by the dataset path
    assert len(notes) == 2 and str(first) in notes[0] and "not writable" in notes[0]
    with pytest.raises(InputError, match="not a writable folder"):
        resolve_cache_dir(read_only, read_only / "cache")


def test_preprocess_of_a_read_only_dataset(
    read_only: Path, user_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preprocess", str(read_only), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert str(user_cache) in out and "3 built" in out
    assert not default_cache_dir(read_only).exists()
    assert any(user_cache.rglob("image.npy"))


def test_train_cache_flag_and_read_only_fallback(
    read_only: Path, user_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg: Config = apply_overrides(
        Config(),
        [
            "model.name=unet3d",
            "model.args={base_width: 4, depth: 1, norm_groups: 2}",
            "data.patch_size=[16,16,16]",
            "data.num_workers=0",
            "data.folds=3",
            "train.epochs=1",
            "train.iters_per_epoch=1",
            "train.batch_size=1",
            "train.val_every=0",
            "train.precision=fp32",
            "train.tensorboard=false",
        ],
    )
    recipe = tmp_path / "recipe.yaml"
    save_config(cfg, recipe)
    argv = ["train", str(recipe), "--data", str(read_only), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "run1")]) == 0
    assert str(user_cache) in capsys.readouterr().out
    assert any(user_cache.rglob("image.npy"))
    chosen = tmp_path / "my_cache"
    assert main([*argv, "--out", str(tmp_path / "run2"), "--cache", str(chosen)]) == 0
    assert any(chosen.rglob("image.npy"))
    assert "not writable" not in capsys.readouterr().out
