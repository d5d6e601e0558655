"""What the sweep tests' experiment files share: the tiny data and training setting, and the check
that ``sweep run`` refuses a bad file."""

from pathlib import Path

import pytest

from poisonclip.cli import main

# 300 clean pairs of 10 shapes, 120 test images, the tiny preset: a trial takes seconds.
TINY_SETTING = """[data]
num_train = 300
num_test = 120
num_shapes = 10
[train]
preset = "tiny"
"""


def assert_refused(tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str) -> None:
    """``sweep run`` on an experiment file holding ``text`` exits 2 with one line that names the file
    and says ``message``, before any work: no database, no data."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["sweep", "run", str(path), "--db", str(tmp_path / "out" / "r.sqlite"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "out").exists()
