"""The committed results database matches the shipped experiment files and the README.

``results/sweeps.sqlite`` is committed so that ``make figures`` resumes instead of retraining: every
sweep stored there must still have the cells its experiment file describes (an edited file would
silently stop matching its rows), and the README's paper-vs-toy table must be the one computed
from the database, not typed by hand.
"""

import sqlite3
from pathlib import Path

import pytest

from poisonclip.experiments.grid import load_sweep
from poisonclip.experiments.store import ResultStore
from poisonclip.report.document import figure_rows, table_markdown
from poisonclip.report.findings import paper_vs_toy

ROOT = Path(__file__).resolve().parent.parent
DB = ROOT / "results" / "sweeps.sqlite"

pytestmark = pytest.mark.skipif(not DB.is_file(), reason="no committed results database")


def stored_cells() -> dict[str, set[str]]:
    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True) as db:
        pairs = db.execute("SELECT sweep, config_hash FROM sweep_cells").fetchall()
    out: dict[str, set[str]] = {}
    for sweep, key in pairs:
        out.setdefault(sweep, set()).add(key)
    return out


def test_the_committed_database_holds_no_claims():
    # A claim from the machine that ran the sweep would make the next one skip its trial.
    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)


def test_every_stored_sweep_matches_its_shipped_experiment_file():
    stored = stored_cells()
    assert stored, "the committed database registers no sweep"
    for name, keys in stored.items():
        path = ROOT / "experiments" / f"{name}.toml"
        assert path.is_file(), f"{name} is stored but no experiment file ships it"
        sweep = load_sweep(path)
        assert {c.key for t in sweep.trials() for c in t.cells} == keys, (
            f"experiments/{name}.toml no longer describes the cells stored for it: rerun "
            f"`make figures` (or `poisonclip sweep run {path.relative_to(ROOT)}`) and commit the database"
        )


def test_readme_shows_the_paper_vs_toy_table_computed_from_the_database():
    expected = table_markdown(paper_vs_toy(figure_rows(ResultStore(DB, read_only=True))))
    assert expected in (ROOT / "README.md").read_text(), (
        "README's paper-vs-toy table differs from the database's: paste results/report/report.md's"
    )
