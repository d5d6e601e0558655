"""Output safety, concurrent sweeps and the edge cases of reading data (README "Reliability")."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonclip.cli import main
from poisonclip.data.dataset import load_image, read_csv_dataset
from poisonclip.data.io import OUTPUT_MARKER, OutputExistsError, atomic_path, overwrite_allowed
from poisonclip.errors import UsageError
from poisonclip.experiments.store import ResultStore
from tests.sweep_files import tiny_sweep


def run(*args) -> int:
    return main([str(a) for a in args])


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- atomic_path -------------------------------------------------------------------------------


def test_atomic_path_never_replaces_without_permission(tmp_path):
    out = tmp_path / "out"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("first")
    assert (out / OUTPUT_MARKER).is_file() and (out / "a.txt").read_text() == "first"
    with pytest.raises(OutputExistsError), atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("second")
    assert (out / "a.txt").read_text() == "first"
    with atomic_path(out, overwrite=True) as tmp:  # a previous output: replaced as a whole
        tmp.mkdir()
        (tmp / "b.txt").write_text("second")
    assert sorted(tree(out)) == [OUTPUT_MARKER, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_atomic_path_replaces_only_previous_outputs_and_never_the_working_directory(tmp_path, monkeypatch):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not a poisonclip output"), atomic_path(user, overwrite=True) as tmp:
        tmp.mkdir()
    with pytest.raises(UsageError, match="is a directory"), atomic_path(user, overwrite=True) as tmp:
        tmp.write_text("a file where a directory was")
    (user / OUTPUT_MARKER).write_text("")
    monkeypatch.chdir(user)
    with pytest.raises(UsageError, match="current directory"), atomic_path(user, overwrite=True) as tmp:
        tmp.mkdir()
    assert (user / "thesis.tex").read_text() == "years of work"
    with (
        overwrite_allowed([user / "elsewhere"]),
        pytest.raises(OutputExistsError),
        atomic_path(user / "thesis.tex") as tmp,
    ):
        tmp.write_text("replaced")  # permission is per path
    assert (user / "thesis.tex").read_text() == "years of work"


def test_a_file_that_appears_meanwhile_is_not_clobbered(tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(OutputExistsError), atomic_path(out) as tmp:
        tmp.write_text("ours")
        out.write_text("another process's")
    assert out.read_text() == "another process's"


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    stale = tmp_path / f".out.{host}-{dead.pid}.abc123"
    live = tmp_path / f".out.{host}-{os.getpid()}.def456"
    other_host = tmp_path / f".out.elsewhere-{dead.pid}.ghi789"
    for path in (stale, live, other_host):
        (path / "out").mkdir(parents=True)
    with atomic_path(tmp_path / "out") as tmp:
        tmp.mkdir()
    assert not stale.exists() and live.exists() and other_host.exists()


def test_an_output_being_replaced_by_a_killed_process_is_put_back(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.{os.uname().nodename}-{dead.pid}.abc123"
    (stale / "replaced").mkdir(parents=True)  # killed between the two renames of a replacement
    (stale / "replaced" / "metrics.json").write_text("{}")
    with pytest.raises(OutputExistsError), atomic_path(tmp_path / "out") as tmp:
        tmp.mkdir()
    assert (tmp_path / "out" / "metrics.json").read_text() == "{}" and not stale.exists()


# --- --out and --overwrite through the CLI ------------------------------------------------------


def test_overwrite_replaces_previous_outputs_and_nothing_else(small_data_dir, tmp_path, monkeypatch, capsys):
    """Every command that writes: refused without --overwrite (output untouched), replaced with it;
    the inputs and the working directory survive."""
    monkeypatch.chdir(tmp_path)
    inputs = tree(small_data_dir)
    train, test = small_data_dir / "train.csv", small_data_dir / "test.csv"
    classnames = small_data_dir / "classnames.txt"
    commands = {
        "synth": ["data", "synth", "synth", "--num-train", 30, "--num-test", 10],
        "poisons": ["poison", "backdoor", "--data", train, "--out", "poisons", "--poison-count", 3,
                    "--target-label", "star", "--merged-csv", "merged.csv"],
        "targeted": ["poison", "targeted", "--data", train, "--out", "targeted", "--target-index", 0,
                     "--target-split", test, "--target-label", "heart", "--poison-count", 2],
        "ckpt": ["train", "--data", train, "--out", "ckpt", "--preset", "tiny", "--no-progress"],
        "metrics.json": ["evaluate", "--checkpoint", "ckpt", "--test", test, "--classnames", classnames,
                         "--out", "metrics.json"],
        "detect": ["detect", "--checkpoint", "ckpt", "--data", train, "--out", "detect",
                   "--detectors", "k-distance", "--no-progress"],
    }  # fmt: skip
    for out, command in commands.items():
        assert run(*command) == 0, out
        first = Path(out).stat().st_mtime_ns
        assert Path(out).is_file() or (Path(out) / OUTPUT_MARKER).is_file()
        capsys.readouterr()
        assert run(*command) == 2, out
        assert "pass --overwrite" in capsys.readouterr().err
        assert Path(out).stat().st_mtime_ns == first  # untouched
        assert run(*command, "--overwrite") == 0, out
        assert Path(out).stat().st_mtime_ns != first  # replaced
    assert tree(small_data_dir) == inputs
    assert Path("merged.csv").is_file() and Path("ckpt", "open_clip_model.safetensors").is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_files_are_written_with_the_usual_permissions(small_data_dir, tmp_path):
    train = small_data_dir / "train.csv"
    assert run("train", "--data", train, "--out", tmp_path / "ckpt", "--preset", "tiny", "--no-progress") == 0
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert len(modes) == 1  # the weights too: safetensors' own writer makes them 0600


def test_same_seeds_write_byte_identical_outputs(small_data_dir, tmp_path):
    train = small_data_dir / "train.csv"
    for name in ("a", "b"):
        out = tmp_path / name
        assert run("data", "synth", out / "data", "--num-train", 30, "--num-test", 10) == 0
        assert run("poison", "backdoor", "--data", train, "--out", out / "poisons", "--poison-count", 3,
                   "--target-label", "star") == 0  # fmt: skip
        assert run("train", "--data", train, "--out", out / "ckpt", "--preset", "tiny", "--no-progress") == 0
        (out / "ckpt" / "train_config.json").unlink()  # holds the training time
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


# --- reading what users have -------------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[str, str]], bom: bool = False) -> Path:
    text = "filepath\ttitle\n" + "".join(f"{image}\t{caption}\n" for image, caption in rows)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def test_a_byte_order_mark_is_not_part_of_the_first_column(small_data_dir, tmp_path):
    rows = [line.split("\t")[:2] for line in (small_data_dir / "train.csv").read_text().splitlines()[1:50]]
    csv = write_csv(
        tmp_path / "bom.csv", [(str(small_data_dir / image), caption) for image, caption in rows], bom=True
    )
    assert read_csv_dataset(csv, progress=False).captions == [caption for _, caption in rows]
    assert run("poison", "backdoor", "--data", csv, "--out", tmp_path / "p", "--poison-count", 2,
               "--target-label", "star", "--merged-csv", tmp_path / "merged.csv") == 0  # fmt: skip
    merged = (tmp_path / "merged.csv").read_text(encoding="utf-8").splitlines()
    assert merged[0] == "filepath\ttitle" and len(merged) == 1 + len(rows) + 2


def test_decompression_bombs_are_skipped_and_counted(small_data_dir, tmp_path, monkeypatch):
    image = next((small_data_dir / "images" / "test").iterdir())  # 32x32: 1,024 pixels
    Image.new("RGB", (24, 24)).save(tmp_path / "small.png")  # 576 pixels
    csv = write_csv(tmp_path / "d.csv", [(str(image), "a big one"), ("small.png", "a small one")])
    # Bombs at this scale are quick to build: above twice the limit PIL raises, above it it warns.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256)
    with pytest.raises(UsageError, match="no readable samples"), pytest.warns(UserWarning, match="2 of 2"):
        read_csv_dataset(csv, progress=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 32x32 is above, 24x24 below
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        dataset = read_csv_dataset(csv, image_size=32, progress=False)
    assert dataset.keys == ["small.png"] and "decompression bomb" in dataset.skipped[0][1]


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    levels = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    array = load_image(tmp_path / "deep.png", None)
    assert array.shape == (64, 64, 3)
    assert abs(int(array[..., 0].mean()) - 127) <= 1 and (array == 255).mean() < 0.01


def test_skip_warnings_are_one_line(small_data_dir, tmp_path, capsys, monkeypatch):
    def show(message, category, filename, lineno, file=None, line=None):  # as Python's default does
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)  # pytest records warnings instead of printing
    image = next((small_data_dir / "images" / "test").iterdir())
    csv = write_csv(tmp_path / "d.csv", [(str(image), "a star"), (str(image), "a star"), ("gone.png", "x")])
    assert run("poison", "backdoor", "--data", csv, "--out", tmp_path / "p", "--poison-count", 1,
               "--target-label", "star", "--no-progress") == 0  # fmt: skip
    err = capsys.readouterr().err
    assert re.search(r"^poisonclip: warning: .*skipped 1 of 3", err, re.M)
    assert ".py:" not in err and "read_csv_dataset(" not in err


# --- sweeps ------------------------------------------------------------------------------------


def test_a_claim_is_atomic_skips_live_processes_and_takes_over_dead_ones(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    first, second = tiny_sweep().trials()[:2]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        assert store.claim(first, live.pid)
        assert not store.claim(first, os.getpid())  # a live process holds it
        assert store.claim(first, live.pid)  # its own claim again
    finally:
        live.kill()
        live.wait()
    assert store.claim(first, os.getpid())  # its process died: taken over
    assert store.claim(second, dead.pid) and store.claim(second, os.getpid())


TWO_PROCESS_SWEEP = """
seeds = [0, 1]
[data]
num_train = 200
num_test = 60
num_shapes = 10
[train]
preset = "tiny"
[backdoor]
poison_count = [0, 5]
"""


def test_two_sweep_processes_on_one_database_train_each_trial_once(tmp_path, capsys):
    experiment = tmp_path / "two.toml"
    experiment.write_text(TWO_PROCESS_SWEEP)
    db = tmp_path / "r.sqlite"
    command = [sys.executable, "-m", "poisonclip.cli", "sweep", "run", str(experiment), "--db", str(db),
               "--workers", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    counts = [re.search(r"ran (\d+) trials, (\d+) were already stored, (\d+) were run by another", out)
              for out, _ in outputs]  # fmt: skip
    ran = [int(c.group(1)) for c in counts]
    assert sum(ran) == len(tiny_sweep(TWO_PROCESS_SWEEP).trials()) == 4  # each trained once
    assert all(sum(int(n) for n in c.groups()) == 4 for c in counts)  # the rest: skipped, not lost
    for _, err in outputs:
        assert "Traceback" not in err and "leaked semaphore" not in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    capsys.readouterr()
    assert run("sweep", "status", experiment, "--db", db) == 0
    out = capsys.readouterr().out
    assert "done 4 (100%)" in out and "█" not in out  # a status line, not a progress bar
