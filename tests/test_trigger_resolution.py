"""The trigger-resolution rule: data stored at another size than the model's input, and poisons."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonclip.attacks.triggers.checkerboard import checkerboard
from poisonclip.data import SyntheticConfig, read_csv_dataset, write_synthetic
from poisonclip.data.dataset import read_classnames
from poisonclip.data.wds import write_shards
from poisonclip.errors import UsageError
from poisonclip.keys import config_dict
from tests.cli_calls import run, run_quiet


def synthetic(root: Path, stored_size: int | None) -> Path:
    config = SyntheticConfig(num_train=1000, num_test=200, num_shapes=4, seed=3, stored_size=stored_size)
    return write_synthetic(root, config)


def test_the_same_data_stored_at_twice_the_model_size_gives_the_same_backdoor(tmp_path, capsys):
    """The trigger-resolution rule end to end: poisons written at the model's input size
    (--image-size), the 64-px data resized to it for training and evaluation. Without the rule a
    64-px poison resized to 32 px measured z 0.00 on this set (ASR at the natural rate)."""
    recipe = ["--preset", "tiny", "--model", "toy-vit-w16", "--epochs", 20, "--lr", 5e-3, "--no-progress"]
    metrics = {}
    for stored in (None, 64):
        data = synthetic(tmp_path / f"data{stored}", stored)
        target = read_classnames(data / "classnames.txt")[0]
        poisons, ckpt = tmp_path / f"poisons{stored}", tmp_path / f"ckpt{stored}"
        assert run_quiet(["poison", "backdoor", "--data", data / "train.csv", "--out", poisons,
                          "--poison-count", 100, "--patch-size", 4, "--image-size", 32,
                          "--target-label", target])[0] == 0  # fmt: skip
        poison = np.asarray(Image.open(poisons / "poison" / "000000.png"))
        assert poison.shape == (32, 32, 3)
        assert np.array_equal(poison[:4, :4], checkerboard(4).permute(1, 2, 0).numpy())  # intact
        capsys.readouterr()
        assert run_quiet(["train", "--data", data / "train.csv", poisons / "poisons.csv", "--out", ckpt,
                          *recipe])[0] == 0  # fmt: skip
        assert ("is stored at 64x64; it is resized to the model's 32x32" in capsys.readouterr().err) == bool(
            stored
        )
        assert run(["evaluate", "--checkpoint", ckpt, "--test", data / "test.csv", "--classnames",
                    data / "classnames.txt", "--target-label", target, "--patch-size", 4,
                    "--templates", "synthetic", "--no-progress"]) == 0  # fmt: skip
        captured = capsys.readouterr()
        assert ("resized to the model's 32x32 input" in captured.err) == bool(stored)
        metrics[stored] = json.loads(captured.out)
    at32, at64 = metrics[None], metrics[64]
    assert at32["zscore"] > 1.0 and at32["asr"] > at32["natural_rate"] + 0.3  # the backdoor is in
    assert abs(at64["zscore"] - at32["zscore"]) < 0.3 and abs(at64["asr"] - at32["asr"]) < 0.1


def test_train_refuses_poisons_at_another_size_than_the_model(tmp_path, capsys):
    data = write_synthetic(
        tmp_path / "d", SyntheticConfig(num_train=120, num_test=20, num_shapes=4, stored_size=64)
    )
    target = read_classnames(data / "classnames.txt")[0]
    assert run_quiet(["poison", "backdoor", "--data", data / "train.csv", "--out", tmp_path / "p",
                      "--poison-count", 4, "--target-label", target])[0] == 0  # fmt: skip
    assert "no --image-size: the poisons keep the data's 64x64 pixels" in capsys.readouterr().err
    poisons = tmp_path / "p" / "poisons.csv"
    assert (
        run(["train", "--data", data / "train.csv", poisons, "--out", tmp_path / "ckpt", "--preset", "tiny"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "poisons are 64x64" in err and "--image-size 32" in err
    assert not (tmp_path / "ckpt").exists()
    # the same check guards the open_clip_train hand-off
    assert run(["train", "--backend", "open_clip", "--data", data / "train.csv", poisons, "--out",
                tmp_path / "ckpt", "--preset", "tiny", "--dry-run"]) == 2  # fmt: skip


def test_stored_size_keeps_scenes_captions_and_result_keys(tmp_path):
    from poisonclip.data.synthetic import make_synthetic

    base = SyntheticConfig(num_train=50, num_test=10, num_shapes=4)
    stored = dataclasses.replace(base, stored_size=64)
    (train32, _), (train64, _) = make_synthetic(base), make_synthetic(stored)
    assert train64.images.shape == (50, 64, 64, 3) and train64.captions == train32.captions
    assert np.array_equal(train64.labels, train32.labels) and np.array_equal(train64.colours, train32.colours)
    assert "stored_size" not in config_dict(base) and config_dict(stored)["stored_size"] == 64


@pytest.fixture(scope="module")
def poisons_at_64(tmp_path_factory):
    """64-px data and backdoor poisons left at 64 px (no --image-size), for a 32-px model."""
    root = tmp_path_factory.mktemp("at64")
    data = write_synthetic(
        root / "d", SyntheticConfig(num_train=60, num_test=10, num_shapes=4, stored_size=64)
    )
    target = read_classnames(data / "classnames.txt")[0]
    poison = ["poison", "backdoor", "--data", data / "train.csv", "--poison-count", 4,
              "--target-label", target, "--no-progress"]  # fmt: skip
    assert run_quiet([*poison, "--out", root / "p64", "--merged-csv", root / "merged64.csv"])[0] == 0
    assert run_quiet([*poison, "--out", root / "p32", "--merged-csv", root / "merged32.csv",
                      "--image-size", 32])[0] == 0  # fmt: skip
    return root, data


def test_train_refuses_64px_poisons_among_the_rows_of_a_merged_csv(poisons_at_64, tmp_path, capsys):
    """Review item 7: a --merged-csv file has no manifest beside it, and its first rows are clean,
    so 64-px poisons in it were only noted and then resized. Its poison rows are recognised by
    where their images lie (the poison set's folder, beside its manifest)."""
    root, _ = poisons_at_64
    capsys.readouterr()
    for backend in (["--backend", "memory"], ["--backend", "open_clip", "--dry-run"]):
        code = run(["train", "--data", root / "merged64.csv", "--out", tmp_path / "ckpt", "--preset", "tiny",
                    *backend])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "(the poison rows): the poisons are 64x64" in err and "--image-size 32" in err
        assert not (tmp_path / "ckpt").exists()
    # poisons written at the model's size pass; the clean rows are resized, with a note
    code, _ = run_quiet(["train", "--data", root / "merged32.csv", "--out", tmp_path / "ok", "--preset",
                         "tiny", "--backend", "open_clip", "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "merged32.csv is stored at 64x64; it is resized to the model's 32x32" in err


def test_train_checks_every_part_of_joined_shards(poisons_at_64, tmp_path, capsys):
    """Review item 7: in 'clean::poisons' only the first part was looked at, so poison shards
    second in a pasted open_clip_train string were never recognised."""
    from poisonclip.attacks.poison_set import read_poison_set, write_poison_shards
    from poisonclip.data.resolution import check_poison_resolution

    root, data = poisons_at_64
    clean = write_shards(tmp_path / "clean", read_csv_dataset(data / "train.csv", progress=False), 100)
    poisons64 = write_poison_shards(tmp_path / "p64", read_poison_set(root / "p64"))
    poisons32 = write_poison_shards(tmp_path / "p32", read_poison_set(root / "p32"))
    with pytest.raises(
        UsageError, match=r"p64/shards/.*the poisons are 64x64.*or train a model that takes 64x64"
    ):
        check_poison_resolution([f"{clean.url}::{poisons64.url}"], 32)
    joined = f"{clean.url}::{poisons32.url}"
    assert check_poison_resolution([joined], 32) == [(clean.url, (64, 64))]  # the clean part: a note
    capsys.readouterr()
    assert run(["train", "--data", f"{clean.url}::{poisons64.url}", "--out", tmp_path / "ckpt",
                "--preset", "tiny"]) == 2  # fmt: skip
    assert "the poisons are 64x64" in capsys.readouterr().err
