"""Checks of the command line that are not bad-input cases (those are ``test_cli_bad_inputs``'s
table): what a dry run accepts, what ``sweep status`` leaves alone, when ``poison backdoor`` warns
about the poisons' size, and the config files that are still read."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import pytest

from poisonclip.cli import main
from poisonclip.data import SyntheticConfig, write_synthetic
from poisonclip.errors import UsageError
from poisonclip.experiments.store import SCHEMA, ResultStore
from poisonclip.train.config import load_preset
from poisonclip.train.model import get_model_config, image_size_of
from tests.sweep_files import TINY

SIZE_WARNING = "warning: no --image-size"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


# --- train --dry-run: it only prints a command for another machine


def dry_run(small_data_dir: Path, out: Path, pretrained: str, capsys) -> list[str]:
    argv = ["train", "--backend", "open_clip", "--dry-run", "--data", str(small_data_dir / "train.csv"),
            "--out", str(out), "--preset", "tiny", "--pretrained", pretrained]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    return shlex.split(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_dry_run_takes_an_existing_out_and_another_machines_weights(small_data_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"  # an existing output, even a user's directory: a dry run writes nothing
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    local = tmp_path / "epoch_5.pt"
    local.write_bytes(b"weights")  # a file here is checked as before (not a TorchScript archive)
    before = snapshot(tmp_path)
    here = dry_run(small_data_dir, out, str(local), capsys)
    there = dry_run(small_data_dir, out, "/cluster/runs/epoch_5.pt", capsys)  # not on this machine
    assert snapshot(tmp_path) == before
    # the same command, the path passed on where a checked one goes
    assert there == [("/cluster/runs/epoch_5.pt" if arg == str(local) else arg) for arg in here]
    assert there[there.index("--pretrained") + 1] == "/cluster/runs/epoch_5.pt"


# --- sweep status: reads the database, never creates or changes it


def status(toml: Path, db: Path, capsys) -> str:
    assert main(["sweep", "status", str(toml), "--db", str(db)]) == 0
    return capsys.readouterr().out


def test_sweep_status_only_reads_the_database(tmp_path, capsys):
    toml = tmp_path / "tiny.toml"
    toml.write_text(TINY)
    missing = tmp_path / "missing.sqlite"
    assert "done 0 (0%)" in status(toml, missing, capsys) and not missing.exists()
    db = tmp_path / "results.sqlite"
    ResultStore(db)  # a results database as sweep run creates it
    before = snapshot(tmp_path)
    assert "done 0 (0%)" in status(toml, db, capsys)
    assert snapshot(tmp_path) == before
    old = tmp_path / "old.sqlite"  # a store from before the claims table: not upgraded by status
    with sqlite3.connect(old) as conn:
        conn.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS claims")[0])
    before = snapshot(tmp_path)
    assert "running 0" in status(toml, old, capsys)
    assert snapshot(tmp_path) == before


def test_a_read_only_store_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match="no results database"):
        ResultStore(empty, read_only=True)
    assert empty.read_bytes() == b""


# --- poison backdoor without --image-size: a warning only where the size may be wrong


def backdoor_warnings(data: Path, out: Path, capsys) -> list[str]:
    argv = ["poison", "backdoor", "--data", str(data), "--out", str(out), "--poison-count", "2",
            "--target-label", "star", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return [line for line in capsys.readouterr().err.splitlines() if SIZE_WARNING in line]


def test_no_size_warning_for_data_at_the_size_it_was_made_for(small_data_dir, tmp_path, capsys):
    # the README's quick start: data synth's 32x32 images, made for the toy models' 32x32 input
    assert backdoor_warnings(small_data_dir / "train.csv", tmp_path / "p", capsys) == []


def test_a_size_warning_for_data_stored_at_another_size(tmp_path, capsys):
    config = SyntheticConfig(num_train=40, num_test=10, num_shapes=4, seed=1, stored_size=16)
    data = write_synthetic(tmp_path / "data16", config)
    (warning,) = backdoor_warnings(data / "train.csv", tmp_path / "p", capsys)
    assert "16x16 pixels" in warning and "made for a 32x32 model" in warning and "(32)" in warning


def test_a_size_warning_where_the_models_size_is_unknown(small_data_dir, tmp_path, capsys):
    # a user's CSV: no data synth config beside it, so nothing says which model it is for
    lines = (small_data_dir / "train.csv").read_text().splitlines()
    rows = [line.split("\t", 1) for line in lines[1:]]  # image path (relative to the CSV), caption
    (tmp_path / "mine").mkdir()
    csv = [lines[0], *(f"{small_data_dir / path}\t{caption}" for path, caption in rows)]
    (tmp_path / "mine" / "train.csv").write_text("\n".join(csv) + "\n")
    (warning,) = backdoor_warnings(tmp_path / "mine" / "train.csv", tmp_path / "p", capsys)
    assert "32x32 pixels" in warning and "made for" not in warning


# --- config files that are still read as before


def test_model_and_preset_files_that_are_read(tmp_path):
    config = get_model_config("toy-vit-micro")
    wrapped = tmp_path / "open_clip_config.json"  # a checkpoint's: the model under model_cfg
    wrapped.write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    assert get_model_config(str(wrapped)) == config
    size = config["vision_cfg"]["image_size"]
    square = tmp_path / "square.json"
    square.write_text(
        json.dumps({**config, "vision_cfg": {**config["vision_cfg"], "image_size": [size, size]}})
    )
    assert image_size_of(get_model_config(str(square))) == size
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"_comment": "an int where a float goes", "lr": 1, "pretrained": None}))
    assert load_preset(str(preset)).lr == 1
