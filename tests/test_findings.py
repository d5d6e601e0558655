"""The paper-vs-toy table is computed from stored rows: change a row and the verdict changes."""

import random
import sqlite3
import tomllib

from poisonclip.experiments.grid import parse_sweep
from poisonclip.experiments.store import ResultStore
from poisonclip.report.document import figure_rows, write_report
from poisonclip.report.findings import FINDINGS, NOT, PARTLY, REPRODUCES, paper_vs_toy
from tests.test_report import COMMON, FIXTURE_SWEEPS, fake_result

VERDICTS = (REPRODUCES, PARTLY, NOT)


def build(db, names=tuple(FIXTURE_SWEEPS)) -> ResultStore:
    store = ResultStore(db)
    rng = random.Random(0)
    for name in names:
        document = tomllib.loads(COMMON)
        for key, value in tomllib.loads(FIXTURE_SWEEPS[name]).items():
            document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
        sweep = parse_sweep(document, name)
        store.register_sweep(sweep)
        for trial in sweep.trials():
            results = [fake_result(cell, trial.seed, rng) for cell in trial.cells]
            store.add_trial(trial, results, wall_seconds=1.0, versions={"torch": "x"})
    return store


def table(store: ResultStore) -> dict[str, tuple[str, ...]]:
    return {row[0]: row for row in paper_vs_toy(figure_rows(store)).rows}


def test_every_finding_is_measured_with_a_verdict(tmp_path):
    rows = table(build(tmp_path / "r.sqlite"))
    assert list(rows) == [f.claim for f in FINDINGS]
    for claim, (_, paper, measured, verdict, rule) in rows.items():
        assert verdict in VERDICTS, (claim, measured)
        assert paper and rule and measured != "not run yet"


def test_a_changed_row_changes_the_verdict(tmp_path):
    db = tmp_path / "r.sqlite"
    store = build(db, ["patches"])
    claim = next(f.claim for f in FINDINGS if "Fig 6" in f.claim)
    _, _, before_text, before, _ = table(store)[claim]
    assert before == REPRODUCES and "1×1: 0.3" in before_text  # the 1×1 patch fails in the fixture
    with sqlite3.connect(db) as connection:  # now the 1×1 patch works as well as the larger ones
        connection.execute(
            "UPDATE results SET metrics = json_set(metrics, '$.asr', 0.95) "
            "WHERE json_extract(config, '$.params.patch_size') = 1"
        )
    _, _, after_text, after, _ = table(store)[claim]
    assert after == NOT and "1×1: 0.95" in after_text


def test_findings_without_rows_say_not_run_and_the_report_shows_the_table(tmp_path):
    store = build(tmp_path / "r.sqlite", ["patches"])
    rows = table(store)
    assert sum(row[2] == "not run yet" for row in rows.values()) == len(FINDINGS) - 1
    summary = write_report(tmp_path / "r.sqlite", tmp_path / "report")
    markdown = summary.markdown.read_text()
    assert "## The paper vs the toy" in markdown and "| finding | paper | toy (measured) |" in markdown
    assert (tmp_path / "report" / "paper_vs_toy.csv").read_text().count("\n") == len(FINDINGS) + 1
