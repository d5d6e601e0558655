"""What the sweep tests' experiment files share: the tiny data and training setting, the tiny grids
(``TINY``, ``SMALL``) and their parsed sweep, the check that ``sweep run`` refuses a bad file, and
reading back which trials a results database holds."""

import sqlite3
import tomllib
from pathlib import Path

import pytest

from poisonclip.cli import main
from poisonclip.experiments.grid import parse_sweep

# 300 clean pairs of 10 shapes, 120 test images, the tiny preset: a trial takes seconds.
TINY_SETTING = """[data]
num_train = 300
num_test = 120
num_shapes = 10
[train]
preset = "tiny"
"""

# A tiny grid: 3 poison counts × 2 poison placements × 2 test placements = 12 cells; the clean
# model (0 poisons) is shared by its 4 cells and each poisoned model by 2: 5 models a seed.
TINY = f"""
figures = ["fig4"]
seeds = [0, 1]
{TINY_SETTING}[backdoor]
poison_count = [0, 5, 20]
placement = ["consistent", "random"]
eval_placement = ["consistent", "random"]
"""

# TINY at 2 poison counts and one poison placement: 4 cells, 2 models a seed.
SMALL = TINY.replace("[0, 5, 20]", "[0, 5]").replace('["consistent", "random"]\neval', '"consistent"\neval')


def tiny_sweep(text: str = TINY, name: str = "tiny"):
    return parse_sweep(tomllib.loads(text), name)


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def stored(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT config_hash, seed FROM results").fetchall()


def expected_keys(sweep) -> set[tuple[str, int]]:
    return {(cell.key, seed) for cell in sweep.cells for seed in sweep.seeds}


def assert_refused(tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str) -> None:
    """``sweep run`` on an experiment file holding ``text`` exits 2 with one line that names the file
    and says ``message``, before any work: no database, no data."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["sweep", "run", str(path), "--db", str(tmp_path / "out" / "r.sqlite"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "out").exists()
