"""Figures and reports from a fixture database of synthetic result rows (no training)."""

import math
import random
import subprocess
import sys
import tomllib

import pytest

from poisonclip.cli import main
from poisonclip.experiments.backdoor_trial import HISTOGRAM_EDGES, SIMILARITY_EDGES
from poisonclip.experiments.grid import FIGURES, parse_sweep
from poisonclip.experiments.runners import CellResult
from poisonclip.experiments.store import ResultStore
from poisonclip.report.document import write_report
from poisonclip.report.figure_registry import FigureSpec, get_figure, list_figures, register_figure

COMMON = """
[data]
num_train = 1000
num_test = 200
[train]
preset = "tiny"
"""
# One sweep per group of figures, with the axes those figures plot.
FIXTURE_SWEEPS = {
    "counts": """
figures = ["fig2_right", "fig3_left", "fig3_right", "fig4", "asr_vs_rate"]
seeds = 3
[backdoor]
poison_count = [0, 10, 50]
placement = ["consistent", "random"]
eval_placement = ["consistent", "random"]
""",
    "sizes": """
figures = ["fig5_left", "asr_vs_rate"]
seeds = 2
[data]
num_train = [1000, 2000, 4000]
[backdoor]
poison_count = [10, 50]
""",
    "models": """
figures = ["fig5_right"]
seeds = 3
[train]
model = ["toy-vit-w16", "toy-vit-w32", "toy-vit-w64"]
[backdoor]
poison_count = 50
""",
    "patches": """
figures = ["fig6"]
seeds = 3
[backdoor]
poison_count = 50
patch_size = [1, 2, 4]
""",
    "triggers": """
figures = ["triggers_z", "triggers_asr"]
seeds = 2
[backdoor]
poison_count = [0, 10, 50]
trigger = ["checkerboard", "blended", "badnets"]
""",
    "targeted": """
figures = ["fig2_left"]
attack = "targeted"
seeds = 3
[targeted]
num_targets = 4
poisons_per_target = [0, 1, 4, 16]
captions = ["search", "both"]
""",
    "defenses": """
attack = "defense"
figures = ["defense_matrix", "detector_roc", "defense_cost", "cleanclip_lr", "defense_diagnostics"]
seeds = 3
[defense]
attack_type = ["backdoor", "targeted"]
defense = ["none", "filter:slof@1%", "cleanclip", "roclip(pool_size=256)", "safeclip"]
clean_pairs = 500
""",
    # the trigger axis: blended has no patch (no patch_size, placement); checkerboard and badnets do
    "trigger_defenses": """
attack = "defense"
figures = ["defense_matrix"]
seeds = 2
[defense]
attack_type = "backdoor"
defense = ["none", "cleanclip"]
trigger = ["checkerboard", "badnets", "blended"]
clean_pairs = 500
""",
}
VISUAL_PARAMS = {
    "toy-vit-micro": 15_984,
    "toy-vit-w16": 10_240,
    "toy-vit-w32": 33_280,
    "toy-vit-w64": 217_728,
}


def fake_defense_result(cell, rng: random.Random) -> CellResult:
    """Plausible rows of the attack × defense runner (``poisonclip.experiments.defense_runner``)."""
    from poisonclip.detect import ROC_GRID, list_detectors

    p, name = cell.params, cell.params.defense.split(":")[0].split("(")[0]
    success = {"none": 0.9, "filter": 0.5, "cleanclip": 0.3, "roclip": 0.4, "safeclip": 0.2}[name]
    metrics = {
        "attack_success": min(1.0, max(0.0, success + rng.gauss(0, 0.05))),
        "zero_shot_acc": 0.8 + rng.uniform(-0.05, 0.05),
        "defense_cost": 0.0 if name == "none" else rng.uniform(0.5, 3),
        "defense_seconds": rng.uniform(50, 300),
        "undefended_train_seconds": rng.uniform(90, 110),
    }
    if p.attack_type == "backdoor":
        metrics["zscore"] = 3 * metrics["attack_success"] + rng.gauss(0, 0.1)
    if name in ("filter", "safeclip"):
        metrics.update(poisons_flagged=rng.randint(0, 100), num_poisons=100)
    curves = {"roc_fpr": ROC_GRID.tolist()}
    for detector in list_detectors():
        auc = rng.uniform(0.3, 1.0)
        curves[f"roc_{detector}"] = [min(1.0, x ** (1 / (2 * auc))) for x in ROC_GRID.tolist()]
        metrics.update({f"detect_{detector}_{m}": rng.uniform(0, 1) for m in ("pr_auc", "fpr_at_95_recall")})
        metrics.update({f"detect_{detector}_roc_auc": auc, f"detect_{detector}_roc_auc_shuffled": 0.5})
    if name == "cleanclip":
        metrics["chosen_lr"] = 1e-4
        curves.update(
            lr_sweep_lr=[1e-5, 1e-4, 1e-3],
            lr_sweep_validation_loss=[rng.uniform(1, 2) for _ in range(3)],
            lr_sweep_attack_success=[0.9, 0.5, 0.2],
            lr_sweep_zero_shot_acc=[0.8, 0.78, 0.6],
        )
    if name == "safeclip":
        curves["safe_fractions"] = [0.3 + 0.04 * epoch for epoch in range(6)]
    if name == "roclip":
        curves.update(
            matching_epoch=[2, 4, 6, 8],
            matching_own_class_share=[rng.uniform(0.05, 0.5) for _ in range(4)],
            matching_random_share=[0.1, 0.0, 0.0, 0.0],
            zero_shot_acc_per_epoch=[rng.uniform(0.05, 0.5) for _ in range(8)],
        )
    return CellResult(metrics, curves)


def fake_targeted_result(cell, rng: random.Random) -> CellResult:
    """Plausible rows of the targeted runner: success grows with the poisons per target."""
    p = cell.params
    pairs = cell.data.num_train + p.num_targets * p.poisons_per_target
    strength = 1 - math.exp(-p.poisons_per_target / 4)
    ranks = {
        key: [
            0 if rng.random() < chance + 0.9 * strength else rng.randint(1, 9) for _ in range(p.num_targets)
        ]
        for key, chance in (("zero_shot_rank", 0.05), ("probe_rank", 0.02))
    }
    metrics = {
        "zero_shot_success_rate": ranks["zero_shot_rank"].count(0) / p.num_targets,
        "probe_success_rate": ranks["probe_rank"].count(0) / p.num_targets,
        "zero_shot_mean_rank": sum(ranks["zero_shot_rank"]) / p.num_targets,
        "probe_mean_rank": sum(ranks["probe_rank"]) / p.num_targets,
        "zero_shot_acc": 0.8 + rng.uniform(-0.02, 0.02),
        "probe_acc": 0.85 + rng.uniform(-0.02, 0.02),
        "num_targets": p.num_targets,
        "poisons_per_target": p.poisons_per_target,
        "poison_count": p.num_targets * p.poisons_per_target,
        "poison_rate": p.num_targets * p.poisons_per_target / pairs,
        "target_poison_rate": p.poisons_per_target / pairs,
        "num_train_pairs": pairs,
        "num_classes": cell.data.num_shapes,
    }
    return CellResult(metrics, ranks)


def fake_result(cell, seed: int, rng: random.Random) -> CellResult:
    """Plausible metrics and curves for one cell: z and ASR grow with poisons and patch size."""
    if cell.attack == "targeted":
        return fake_targeted_result(cell, rng)
    if cell.attack == "defense":
        return fake_defense_result(cell, rng)
    p = cell.params
    rate = p.poison_count / (cell.data.num_train + p.poison_count)
    patch = p.patch_size or cell.data.image_size  # a whole-image trigger has no patch size
    strength = (1 - math.exp(-p.poison_count / 20)) * min(1.0, patch / 3)
    if p.placement != p.eval_placement:
        strength *= 0.5
    zscore = 2.5 * strength + rng.gauss(0, 0.2)
    metrics = {
        "zscore": zscore,
        "asr": min(1.0, max(0.0, 0.9 * strength + rng.gauss(0.05, 0.03))),
        "natural_rate": 0.05 + rng.uniform(-0.01, 0.01),
        "zero_shot_acc": 0.8 + rng.uniform(-0.05, 0.05),
        "probe_asr": min(1.0, max(0.0, 0.8 * strength + rng.gauss(0.05, 0.03))),
        "probe_natural_rate": 0.04 + rng.uniform(-0.01, 0.01),
        "probe_acc": 0.85 + rng.uniform(-0.05, 0.05),
        "poison_rate": rate,
        "patch_area_fraction": patch**2 / 32**2,
        "num_params": 40 * VISUAL_PARAMS[cell.train.model],
        "num_params_visual": VISUAL_PARAMS[cell.train.model],
        "clean_pair_mean": 0.2,
        "clean_pair_std": 0.25,
        "patched_pair_mean": 0.2 + 0.25 * zscore,
    }
    bins = len(SIMILARITY_EDGES) - 1
    pairs = [rng.randint(0, 5000) for _ in range(bins)]
    same = [int(n * math.exp(3 * (b / bins - 1))) for b, n in enumerate(pairs)]
    hist = len(HISTOGRAM_EDGES) - 1
    curves = {
        "similarity_edges": SIMILARITY_EDGES.tolist(),
        "pairs": pairs,
        "same_label": same,
        "same_prediction": [min(n, s + 3) for s, n in zip(same, pairs, strict=True)],
        "histogram_edges": HISTOGRAM_EDGES.tolist(),
        "clean_pairs": [int(1000 * math.exp(-(((b - 60) / 12) ** 2))) for b in range(hist)],
        "patched_pairs": [int(1000 * math.exp(-(((b - 60 - 30 * strength) / 8) ** 2))) for b in range(hist)],
    }
    return CellResult(metrics, curves)


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("report") / "fixture.sqlite"
    store = ResultStore(db)
    rng = random.Random(0)
    for name, text in FIXTURE_SWEEPS.items():
        document = tomllib.loads(COMMON)
        for key, value in tomllib.loads(text).items():
            document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
        sweep = parse_sweep(document, name)
        store.register_sweep(sweep)
        for trial in sweep.trials():
            results = [fake_result(cell, trial.seed, rng) for cell in trial.cells]
            store.add_trial(trial, results, wall_seconds=rng.uniform(30, 60), versions={"torch": "x"})
    return db


def test_the_report_draws_exactly_the_figures_experiment_files_may_name():
    # grid.FIGURES lets experiments check a file's figures without importing the report
    assert list_figures() == list(FIGURES)
    with pytest.raises(ValueError, match="not in poisonclip.experiments.grid.FIGURES"):
        register_figure(FigureSpec("fig99", "title", "caption", get_figure("fig4").render))


def test_fixture_feeds_every_registered_figure():
    listed = {f for text in FIXTURE_SWEEPS.values() for f in tomllib.loads(text)["figures"]}
    assert listed == set(list_figures())  # a new figure needs a fixture sweep here


@pytest.mark.parametrize("name", list_figures())
def test_every_figure_renders_from_database_rows(fixture_db, tmp_path, name):
    store = ResultStore(fixture_db, create=False)
    sweeps = [s for s, info in store.sweeps().items() if name in info["figures"]]
    spec = get_figure(name)
    table = spec.render(store.rows(sweeps), tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert table.rows and all(len(row) == len(table.columns) for row in table.rows)
    assert spec.title.startswith(("Fig", "Attack")) and spec.caption


def test_line_figures_keep_settings_apart_and_state_patch_area(fixture_db, tmp_path):
    store = ResultStore(fixture_db, create=False)
    fig4 = get_figure("fig4").render(store.rows(["counts"]), tmp_path / "f4.png")
    assert fig4.columns[:3] == ("poison placement", "test placement", "poisons")
    assert len(fig4.rows) == 2 * 2 * 3  # placement panels × test placements × counts (0 included)
    assert all(row[3] == "3" for row in fig4.rows)  # three seeds a point
    fig6 = get_figure("fig6").render(store.rows(["patches"]), tmp_path / "f6.png")
    by_size = {row[0]: row for row in fig6.rows}
    assert by_size["4"][1:3] == ("1.56%", "28×28")  # area and the same area on 224×224
    fig5 = get_figure("fig5_right").render(store.rows(["models"]), tmp_path / "f5.png")
    assert [row[1] for row in fig5.rows] == ["toy-vit-w16", "toy-vit-w32", "toy-vit-w64"]


def test_the_defense_matrix_has_one_row_per_trigger(fixture_db, tmp_path):
    store = ResultStore(fixture_db, create=False)
    table = get_figure("defense_matrix").render(store.rows(["trigger_defenses"]), tmp_path / "m.png")
    # each trigger's own patch and placement are constant per trigger: its name is the row label
    labels = {"backdoor (badnets)", "backdoor (blended)", "backdoor (checkerboard)"}
    assert {row[:2] for row in table.rows} == {(a, d) for a in labels for d in ("none", "cleanclip")}


def test_report_writes_markdown_and_self_contained_html(fixture_db, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(fixture_db), "--out", str(out)]) == 0
    assert f"wrote {len(list_figures())} figures" in capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for name in list_figures():
        spec = get_figure(name)
        assert (out / f"{name}.png").is_file()
        assert f"![{spec.title}]({name}.png)" in markdown
        assert f"<h2>{spec.title.replace(chr(39), '&#x27;')}</h2>" in page
    assert page.count("src='data:image/png;base64,") == len(list_figures())
    assert "src='fig" not in page  # nothing outside the file
    assert markdown.count("| seeds |") == len(FIXTURE_SWEEPS)  # a summary table per sweep
    assert "Package versions: torch x" in markdown


def test_report_lists_figures_without_data(tmp_path):
    db = tmp_path / "one.sqlite"
    store = ResultStore(db)
    sweep = parse_sweep(tomllib.loads(COMMON + "[backdoor]\npoison_count = 10\n"), "lonely")
    store.register_sweep(sweep)  # lists no figure
    trial = sweep.trials()[0]
    store.add_trial(trial, [fake_result(trial.cells[0], 0, random.Random(1))], 1.0, {"torch": "x"})
    summary = write_report(db, tmp_path / "out")
    assert summary.figures == [] and summary.missing == list_figures()
    assert "Sweep lonely: all results" in summary.markdown.read_text()


def test_report_on_a_missing_database_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "o")]) == 2
    assert "results database not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help_imports_no_plotting_or_cluster_library():
    code = (
        "import sys, poisonclip.cli, poisonclip.experiments.sweep, poisonclip.report.figure_registry\n"
        "poisonclip.cli.build_parser().format_help()\n"
        "assert 'matplotlib' not in sys.modules and 'submitit' not in sys.modules, sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
