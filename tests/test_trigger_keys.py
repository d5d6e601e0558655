"""The trigger's keys in experiment files: derived from the spec, validated per grid point, and
hashed so that every checkerboard cell keeps the result key it had before triggers were plugins."""

import tomllib
from pathlib import Path

import pytest

from poisonclip.errors import UsageError
from poisonclip.experiments.backdoor_trial import BackdoorParams
from poisonclip.experiments.defense_runner import DefenseMatrixParams
from poisonclip.experiments.grid import load_sweep, parse_sweep
from poisonclip.keys import config_dict

from .conftest import TINY_GRID as HEAD

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def cells(table: str, attack: str = "backdoor"):
    text = (f'attack = "{attack}"\n' if attack != "backdoor" else "") + HEAD + f"[{attack}]\n" + table
    return parse_sweep(tomllib.loads(text), "t").cells


def test_checkerboard_parameters_hash_exactly_as_before():
    legacy = {"target_label": "star", "poison_count": 100, "patch_size": 4, "placement": "consistent",
              "eval_placement": "consistent"}  # fmt: skip
    assert config_dict(BackdoorParams()) == legacy
    assert config_dict(BackdoorParams(trigger="checkerboard", patch_size=4)) == legacy
    matrix = config_dict(DefenseMatrixParams())
    assert matrix["patch_size"] == 4 and matrix["placement"] == "consistent" and "trigger" not in matrix
    [explicit] = cells('trigger = "checkerboard"\npatch_size = 4\n')
    [implicit] = cells("poison_count = 100\n")
    assert explicit.key == implicit.key and explicit.train_key == implicit.train_key


def test_another_trigger_keeps_only_its_own_parameters_in_the_key():
    [blended] = cells('trigger = "blended"\nalpha = 0.3\n')
    assert config_dict(blended.params) == {
        "target_label": "star", "poison_count": 100,
        "trigger": "blended", "trigger_params": (("alpha", 0.3),),
    }  # fmt: skip
    [default] = cells('trigger = "blended"\nalpha = 0.2\n')  # the default is no setting
    assert default.key == cells('trigger = "blended"\n')[0].key
    assert (
        cells('trigger = "blended"\nalpha = 1\n')[0].key == cells('trigger = "blended"\nalpha = 1.0\n')[0].key
    )
    [badnets] = cells('trigger = "badnets"\npatch_size = 3\n')
    assert (
        badnets.params.patch_size == 3
        and badnets.params.placement == badnets.params.eval_placement == "random"
    )


def test_trigger_axes_share_the_clean_model():
    sweep = parse_sweep(
        tomllib.loads(
            HEAD + '[backdoor]\npoison_count = [0, 5]\ntrigger = ["checkerboard", "sig", "wanet"]\n'
        ),
        "t",
    )
    assert len(sweep.cells) == 6 and len(sweep.trials()) == 4  # one clean model evaluated three ways


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'trigger = "blended"\npatch_size = 4\n',
            "has no parameter patch_size; its parameters: alpha, pattern, pattern_seed",
        ),
        ("patch_sise = 4\n", "[backdoor] unknown keys ['patch_sise'] for trigger 'checkerboard'"),
        ('trigger = "sig"\neval_placement = "random"\n', "trigger 'sig' has no placement"),
        ('eval_placement = "middle"\n', "eval_placement: trigger 'checkerboard': placement must be one of"),
        ('trigger = "blended"\nalpha = 2\n', "alpha must be in (0, 1]"),
        ('trigger = "sig"\ndelta = "big"\n', "delta = 'big' is not of type float"),
        ('trigger = "nope"\n', "unknown trigger 'nope'"),
        ('trigger = ["checkerboard", "sig"]\npatch_size = 3\n', "trigger 'sig' has no parameter patch_size"),
        ("patch_size = 40\n", "does not fit"),
    ],
)
def test_bad_trigger_keys_are_one_usage_error(table, message):
    with pytest.raises(UsageError) as err:
        cells(table)
    assert message in str(err.value)


def test_the_defense_matrix_has_the_same_trigger_keys():
    [cell] = cells(
        'defense = "none"\npoison_count = 8\nclean_pairs = 200\ntrigger = "wanet"\nstrength = 1\n', "defense"
    )
    assert cell.params.trigger_spec().strength == 1.0 and cell.params.patch_size is None
    with pytest.raises(UsageError, match="unknown keys \\['alpha'\\] for trigger 'wanet'"):
        cells('defense = "none"\nclean_pairs = 200\ntrigger = "wanet"\nalpha = 0.5\n', "defense")


def test_the_trigger_experiment_files_validate():
    triggers = load_sweep(EXPERIMENTS / "triggers.toml")
    assert len(triggers.cells) == 21 and len(triggers.trials()) == 45
    matrix = load_sweep(EXPERIMENTS / "triggers_defenses.toml")
    assert len(matrix.cells) == 28 and len(matrix.trials()) == 21
