"""Experiment files: the grid's cells, trials and keys, bad files, the shipped files, the runners."""

from pathlib import Path

import pytest

from poisonclip.errors import UsageError
from poisonclip.experiments.grid import load_sweep
from tests.sweep_files import TINY, assert_refused, tiny_sweep


def test_grid_expands_to_cells_and_shares_models_between_evaluation_settings():
    sweep = tiny_sweep()
    assert len(sweep.cells) == 12 and sweep.seeds == (0, 1)
    assert len({c.key for c in sweep.cells}) == 12
    trials = sweep.trials()
    assert len(trials) == 10  # (1 clean + 2 counts × 2 placements) × 2 seeds
    assert [t.seed for t in trials] == [0] * 5 + [1] * 5  # seed-major
    assert sorted(len(t.cells) for t in trials[:5]) == [2, 2, 2, 2, 4]
    for trial in trials:
        assert len({c.train_key for c in trial.cells}) == 1
        assert len({c.params.eval_placement for c in trial.cells}) == 2
    clean = next(t for t in trials if t.cells[0].params.poison_count == 0)
    assert {c.params.placement for c in clean.cells} == {"consistent", "random"}
    cell = sweep.cells[0]
    assert cell.train.model == "toy-vit-micro" and cell.data.num_train == 300


def test_config_hash_is_stable_and_covers_training_settings():
    base = tiny_sweep()
    assert [c.key for c in tiny_sweep().cells] == [c.key for c in base.cells]
    same = tiny_sweep(TINY.replace('preset = "tiny"', 'preset = "tiny"\nlr = 0.002'))
    assert [c.key for c in same.cells] == [c.key for c in base.cells]  # the preset's own value
    other = tiny_sweep(TINY.replace('preset = "tiny"', 'preset = "tiny"\nlr = 1'))
    assert not {c.key for c in other.cells} & {c.key for c in base.cells}
    floats = tiny_sweep(TINY.replace('preset = "tiny"', 'preset = "tiny"\nlr = 1.0'))
    assert [c.key for c in floats.cells] == [c.key for c in other.cells]  # 1 and 1.0: one config


def test_seed_count_and_scalar_values():
    sweep = tiny_sweep(
        'seeds = 3\n[data]\nnum_train = 300\n[train]\npreset = "tiny"\n[backdoor]\npoison_count = 7'
    )
    assert sweep.seeds == (0, 1, 2) and len(sweep.cells) == 1
    assert sweep.cells[0].params.poison_count == 7 and sweep.name == "tiny"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds = [0, 1]", "seedz = [0, 1]"), "unknown keys ['seedz']"),
        (("poison_count =", "poison_cnt ="), "[backdoor] unknown keys ['poison_cnt']"),
        (('preset = "tiny"', 'preset = "tiny"\nepoch = 3'), "[train] unknown keys ['epoch']"),
        (('preset = "tiny"', 'preset = "tiny"\nseed = 3'), "seeds"),
        (('preset = "tiny"', 'preset = "nope"'), "unknown preset"),
        (('preset = "tiny"', 'preset = "tiny"\nmodel = "no-such-model"'), "unknown model config"),
        (('preset = "tiny"', 'preset = "tiny"\nmodel = "RN50"'), "takes 224px images"),
        (('preset = "tiny"', 'preset = "tiny"\nepochs = 0'), "epochs must be >= 1"),
        (('preset = "tiny"', 'preset = "tiny"\nepochs = "8"'), "is not of type"),
        (('preset = "tiny"', 'preset = "tiny"\nbatch_size = 512'), "exceeds num_train"),
        (("[0, 5, 20]", "[0, -5]"), "poison_count must be >= 0"),
        (("[0, 5, 20]", "[0, 500]"), "exceeds num_train"),
        (("[0, 5, 20]", "[]"), "empty list"),
        (("[0, 5, 20]", "[5, 5]"), "lists a value twice"),
        (('["consistent", "random"]\neval', '["consistent", "middle"]\neval'), "placement must be one of"),
        (("num_shapes = 10", "num_shapes = 10\nimage_size = 16"), "takes 32px images"),
        (("[backdoor]", "[backdoor]\npatch_size = 40\n"), "does not fit"),
        (("[backdoor]", '[backdoor]\ntarget_label = "zebra"\n'), "not a class"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds lists a seed twice"),
        (("seeds = [0, 1]", "seeds = 0"), "at least one seed"),
        (('figures = ["fig4"]', 'figures = ["fig99"]'), "unknown figures"),
        (('figures = ["fig4"]', 'attack = "nope"'), "unknown sweep attack 'nope'"),
        (("[data]", "[data\n"), "not valid TOML"),
    ],
)
def test_bad_experiment_files_exit_2_with_one_line_and_do_no_work(tmp_path, capsys, change, message):
    assert TINY.replace(*change) != TINY
    assert_refused(tmp_path, capsys, TINY.replace(*change), message)
    with pytest.raises(UsageError, match="not found"):
        load_sweep(tmp_path / "missing.toml")


EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiment_files_are_valid_and_say_what_they_cost(path):
    sweep = load_sweep(path)
    assert sweep.name == path.stem and sweep.figures and len(sweep.seeds) >= 3
    text = path.read_text()
    assert "Cost:" in text and "poisonclip sweep run" in text and "GPU cluster" in text


def test_every_figure_has_an_experiment_file():
    from poisonclip.report.figure_registry import list_figures

    assert {f for path in EXPERIMENTS for f in load_sweep(path).figures} == set(list_figures())


def test_the_listed_builtin_runners_and_matrix_attacks_are_what_their_modules_register():
    import importlib

    from poisonclip.experiments.poisoning import (
        BUILTIN_MATRIX_ATTACKS,
        get_matrix_attack,
        list_matrix_attacks,
    )
    from poisonclip.experiments.runners import BUILTIN_RUNNERS, get_runner, list_runners

    for module in {*BUILTIN_RUNNERS.values(), *BUILTIN_MATRIX_ATTACKS.values()}:
        importlib.import_module(module)
    assert list_runners() == sorted(BUILTIN_RUNNERS)  # a new built-in runner needs its line in the table
    for name, module in BUILTIN_RUNNERS.items():
        runner = get_runner(name)
        assert (runner.prepare or runner.run).__module__ == module
    assert list_matrix_attacks() == sorted(BUILTIN_MATRIX_ATTACKS)
    for name, module in BUILTIN_MATRIX_ATTACKS.items():
        assert get_matrix_attack(name).__module__ == module
