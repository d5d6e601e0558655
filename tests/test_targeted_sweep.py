"""The targeted attack on the sweep machinery: ``[targeted]`` grids, the runner, Fig 2 left."""

import csv
import random
import tomllib
from pathlib import Path

import pytest

from poisonclip.cli import main
from poisonclip.experiments.grid import load_sweep, parse_sweep
from poisonclip.experiments.store import ResultStore
from poisonclip.report.document import write_report
from poisonclip.report.figure_registry import get_figure

from .sweep_files import TINY_SETTING, assert_refused
from .test_report import fake_result

# 2 target counts × 3 poison counts × 2 zero-shot prompt sets = 12 cells. The clean model
# (0 poisons) is shared by its 4 cells (K and the prompts are evaluation-only there); each poisoned
# model by its 2 prompt sets: 5 models a seed.
TINY = f"""
figures = ["fig2_left"]
attack = "targeted"
seeds = [0, 1]
{TINY_SETTING}[targeted]
num_targets = [2, 3]
poisons_per_target = [0, 2, 8]
eval_templates = ["synthetic", "openai"]
"""
METRICS = ("zero_shot_success_rate", "probe_success_rate", "zero_shot_mean_rank", "probe_mean_rank",
           "zero_shot_acc", "probe_acc", "num_targets", "poisons_per_target", "poison_count",
           "poison_rate", "target_poison_rate", "num_train_pairs", "num_classes", "min_psnr_db",
           "train_seconds")  # fmt: skip


def tiny_sweep(text: str = TINY):
    return parse_sweep(tomllib.loads(text), "tiny_targeted")


def test_targeted_grid_shares_the_clean_model_and_keeps_evaluation_settings_apart():
    sweep = tiny_sweep()
    assert sweep.attack == "targeted" and len(sweep.cells) == 12
    trials = sweep.trials()
    assert len(trials) == 10 and [t.seed for t in trials] == [0] * 5 + [1] * 5
    assert sorted(len(t.cells) for t in trials[:5]) == [2, 2, 2, 2, 4]
    clean = next(t for t in trials if t.cells[0].params.poisons_per_target == 0)
    assert {(c.params.num_targets, c.params.eval_templates) for c in clean.cells} == {
        (2, "synthetic"), (2, "openai"), (3, "synthetic"), (3, "openai")
    }  # fmt: skip
    for trial in trials:
        if trial is not clean and trial.seed == 0:
            assert len({c.params.num_targets for c in trial.cells}) == 1  # K changes the poisons
            assert {c.params.eval_templates for c in trial.cells} == {"synthetic", "openai"}
    params = sweep.cells[0].params
    assert (params.captions, params.noise_std, params.perturb_captions) == ("search", 1.0, False)


def test_shipped_fig2_left_is_the_demo_setting():
    from poisonclip.data.synthetic import SyntheticConfig
    from poisonclip.train.config import load_preset

    fig2 = load_sweep(Path(__file__).parents[1] / "experiments" / "fig2_left.toml")
    assert fig2.cells[0].data == SyntheticConfig()  # the demo's data (20,000 pairs)
    assert fig2.cells[0].train == load_preset("demo")  # and its model and recipe
    assert sorted(c.params.poisons_per_target for c in fig2.cells) == [0, 1, 4, 16]
    assert {c.params.num_targets for c in fig2.cells} == {8} and len(fig2.trials()) == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("num_targets =", "num_target ="), "[targeted] unknown keys ['num_target']"),
        (("[2, 3]", "0"), "num_targets must be >= 1"),
        (("[2, 3]", "2.5"), "is not of type"),
        (("[2, 3]", "61"), "exceeds the 60 test images"),
        (("[0, 2, 8]", "[0, -1]"), "poisons_per_target must be >= 0"),
        (("[0, 2, 8]", "[0, 101]"), "303 poisons exceeds num_train 300"),
        (("[targeted]", '[targeted]\ncaptions = "web"'), "captions must be one of"),
        (("[targeted]", "[targeted]\nnoise_std = -1"), "noise_std must be a finite number >= 0"),
        (("[targeted]", "[targeted]\nperturb_captions = 1"), "is not of type"),
        (("[targeted]", '[targeted]\ntemplate_set = "imagenet"'), "template_set: unknown template"),
        (('"openai"]', '"nope"]'), "eval_templates: unknown template set 'nope'"),
        (('attack = "targeted"', 'attack = "targeted"\n[backdoor]\npoison_count = 5'), "unknown keys"),
    ],
)
def test_bad_targeted_tables_exit_2_with_one_line_and_do_no_work(tmp_path, capsys, change, message):
    assert TINY.replace(*change) != TINY
    assert_refused(tmp_path, capsys, TINY.replace(*change), message)


# One seed, 2 × 2 × 2 cells: the clean model (4 cells) and two poisoned models (2 cells each).
RUN = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace("[0, 2, 8]", "[0, 4]")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("targeted_sweep")
    path = root / "tiny_targeted.toml"
    path.write_text(RUN)
    db = root / "results.sqlite"
    assert main(["sweep", "run", str(path), "--db", str(db), "--workers", "1", "--no-progress"]) == 0
    return load_sweep(path), db


def test_tiny_targeted_sweep_stores_every_cell_once_with_its_metrics(tiny_run):
    sweep, db = tiny_run
    rows = ResultStore(db, create=False).rows()
    assert {(r.config_hash, r.seed) for r in rows} == {(c.key, 0) for c in sweep.cells}
    assert len({r.train_hash for r in rows}) == 3  # one clean and two poisoned models
    for r in rows:
        assert set(METRICS) <= set(r.metrics), set(METRICS) - set(r.metrics)
        k, ppt = r.cell["num_targets"], r.cell["poisons_per_target"]
        assert r.metrics["num_targets"] == k and r.metrics["poison_count"] == k * ppt
        assert r.metrics["num_train_pairs"] == 300 + k * ppt and r.metrics["num_classes"] == 10
        assert r.metrics["target_poison_rate"] == pytest.approx(ppt / (300 + k * ppt))
        assert 0 <= r.metrics["zero_shot_success_rate"] <= 1 and 0 <= r.metrics["probe_success_rate"] <= 1
        assert len(r.curves["zero_shot_rank"]) == len(r.curves["probe_rank"]) == k
        assert r.metrics["zero_shot_success_rate"] == r.curves["zero_shot_rank"].count(0) / k
        assert (r.metrics["min_psnr_db"] is None) == (ppt == 0)
        if ppt:
            assert r.metrics["min_psnr_db"] > 40
    # The clean model scores the K = 2 and K = 3 targets of the seed: the first two are the same.
    clean = {r.cell["num_targets"]: r for r in rows if r.cell["poisons_per_target"] == 0
             and r.cell["eval_templates"] == "synthetic"}  # fmt: skip
    for key in ("zero_shot_rank", "probe_rank"):
        assert clean[3].curves[key][:2] == clean[2].curves[key]
    assert ResultStore(db).rows() == rows  # reading twice changes nothing


def test_tiny_targeted_sweep_resumes_with_nothing_to_do(tiny_run, capsys):
    sweep, db = tiny_run
    path = db.parent / "tiny_targeted.toml"
    assert main(["sweep", "run", str(path), "--db", str(db), "--workers", "1", "--no-progress"]) == 0
    assert "ran 0 trials, 3 were already" in capsys.readouterr().out


def test_report_of_the_tiny_targeted_sweep_writes_fig2_left_png_and_csv(tiny_run, tmp_path):
    _, db = tiny_run
    summary = write_report(db, tmp_path / "report")
    assert [p.name for p in summary.figures] == ["fig2_left.png"]
    with open(tmp_path / "report" / "fig2_left.csv", newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]
    assert header[:3] == ["targets per model", "zero-shot prompts", "poisons per target"]
    assert len(body) == 2 * 2 * 2  # K × prompt sets × {0, 4} poisons per target
    markdown = summary.markdown.read_text()
    assert "targeted zero-shot success" in markdown and "![Fig 2 left" in markdown


@pytest.fixture(scope="module")
def fixture_rows(tmp_path_factory):
    """Synthetic rows (no training) of a Fig 2 left sweep with two caption sets."""
    text = TINY.replace("seeds = [0, 1]", "seeds = 3").replace("[0, 2, 8]", "[0, 1, 4, 16]")
    text = text.replace("num_targets = [2, 3]", "num_targets = 4").replace(
        'eval_templates = ["synthetic", "openai"]', 'captions = ["search", "both"]'
    )
    sweep = tiny_sweep(text)
    store = ResultStore(tmp_path_factory.mktemp("fig2") / "fixture.sqlite")
    store.register_sweep(sweep)
    rng = random.Random(0)
    for trial in sweep.trials():
        results = [fake_result(cell, trial.seed, rng) for cell in trial.cells]
        store.add_trial(trial, results, wall_seconds=1.0, versions={"torch": "x"})
    return store.rows()


def test_fig2_left_table_gives_counts_rates_chance_and_clean_accuracy(fixture_rows, tmp_path):
    table = get_figure("fig2_left").render(fixture_rows, tmp_path / "fig2_left.png")
    assert (tmp_path / "fig2_left.png").stat().st_size > 10_000
    assert table.columns[:4] == ("caption set", "poisons per target", "per target ÷ training pairs",
                                 "poisons in all")  # fmt: skip
    column = {name: i for i, name in enumerate(table.columns)}
    rows = {(row[0], row[1]): row for row in table.rows}
    assert set(rows) == {(c, n) for c in ("both", "search") for n in ("0", "1", "4", "16")}
    row = rows["search", "16"]
    assert row[column["per target ÷ training pairs"]] == f"{16 / (300 + 64):.3%}"
    assert row[column["poisons in all"]] == "64" and row[column["models"]] == "3"
    assert row[column["attacks"]] == "12"  # 4 targets × 3 seeds
    clean = rows["search", "0"]
    assert clean[column["poisons in all"]] == "0" and clean[column["poison rate"]] == "0.000%"
    assert clean[column["change vs clean model (points)"]] == "0.0 ± 0.0"
    for name in ("zero-shot success", "linear-probe success", "clean zero-shot top-1"):
        assert " ± " in row[column[name]]
