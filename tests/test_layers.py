"""Imports run one way (the contracts in pyproject.toml) and ``import poisonclip`` stays light."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import poisonclip
from poisonclip.attacks.backdoor import make_backdoor
from poisonclip.evaluate.metrics import backdoor_zscore
from poisonclip.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def run_here(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter that imports this checkout's poisonclip."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold():
    # What `make lint` runs: layers, no circles in a package, a package root that imports nothing heavy.
    done = run_here(
        "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", done.stdout), done.stdout


def test_import_poisonclip_loads_no_heavy_package():
    done = run_here(
        "import sys, poisonclip; "
        "print(sorted({'torch', 'open_clip', 'sklearn', 'matplotlib'} & set(sys.modules)))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_package_names_load_on_first_use():
    for name in poisonclip.__all__:
        assert name in dir(poisonclip)
        assert getattr(poisonclip, name) is not None
    assert poisonclip.make_backdoor is make_backdoor
    assert poisonclip.TrainConfig is TrainConfig
    assert poisonclip.evaluate.backdoor_zscore is backdoor_zscore
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert poisonclip.__version__ == project["version"]
    with pytest.raises(AttributeError, match="no attribute 'make_backdor'"):
        poisonclip.make_backdor  # noqa: B018
