"""The targeted attack's options are declared once (``TargetedOptions``) and derived everywhere:
the command line, the sweep's ``[targeted]`` keys, the matrix's ``[defense]`` keys, the poisoning."""

import argparse
import dataclasses

import pytest

from poisonclip.attacks.targeted_spec import TargetedOptions, add_targeted_options, targeted_options_from_args
from poisonclip.errors import UsageError
from poisonclip.experiments.defense_runner import DefenseMatrixParams
from poisonclip.experiments.poisoning import TrialData, get_matrix_attack, list_matrix_attacks
from poisonclip.experiments.targeted_trial import TargetedParams
from poisonclip.keys import config_dict
from poisonclip.train.config import load_preset
from tests.conftest import SMALL

OPTION_NAMES = {f.name for f in dataclasses.fields(TargetedOptions)}


def parse(argv: list[str]) -> TargetedOptions:
    parser = argparse.ArgumentParser()
    add_targeted_options(parser)
    return targeted_options_from_args(parser.parse_args(argv))


def test_command_line_options_are_the_spec():
    assert parse([]) == TargetedOptions()
    argv = ["--captions", "both", "--noise-std", "0", "--perturb-captions", "--templates", "synthetic"]
    assert parse([*argv, "--substring"]) == TargetedOptions("both", 0.0, True, "synthetic", False)
    with pytest.raises(SystemExit):  # argparse refuses a caption source the spec does not list
        parse(["--captions", "nearest"])
    with pytest.raises(UsageError, match=r"^--templates: unknown template set"):  # the flag, not the field
        parse(["--templates", "no-such-file.txt"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"captions": "nearest"}, "captions must be one of"),
        ({"noise_std": -1.0}, "noise_std must be a finite number >= 0"),
        ({"noise_std": float("nan")}, "noise_std must be a finite number >= 0"),
        ({"noise_std": "loud"}, "noise_std must be a number"),
        ({"perturb_captions": "yes"}, "perturb_captions must be true or false"),
        ({"template_set": "no-such-set"}, "template_set: unknown template set"),
    ],
)
def test_bad_options_are_usage_errors(values, message):
    with pytest.raises(UsageError, match=message):
        TargetedOptions(**values)


def test_parameter_classes_inherit_the_options_and_keep_their_keys():
    for cls in (TargetedParams, DefenseMatrixParams):
        assert {f.name for f in dataclasses.fields(cls)} >= OPTION_NAMES  # inherited, not re-typed
    changed = TargetedParams(noise_std=0, word_boundary=False)
    assert changed.options() == TargetedOptions(noise_std=0.0, word_boundary=False)
    # [targeted] hashed the first four options from the start; word_boundary is new
    assert set(config_dict(TargetedParams())) & OPTION_NAMES == OPTION_NAMES - {"word_boundary"}
    assert config_dict(changed)["word_boundary"] is False
    # [defense] had only captions: the other options leave the keys of existing cells alone
    assert set(config_dict(DefenseMatrixParams())) & OPTION_NAMES == {"captions"}
    assert config_dict(DefenseMatrixParams(attack_type="targeted", noise_std=0))["noise_std"] == 0.0


def test_the_matrix_poisons_with_the_cells_options(small_train, small_test):
    assert list_matrix_attacks() == ["backdoor", "targeted"]
    classnames, poison = list(SMALL.classnames), get_matrix_attack("targeted")
    for noise, exact in ((0.0, True), (1.0, False)):
        params = DefenseMatrixParams(
            attack_type="targeted", num_targets=2, poisons_per_target=3, noise_std=noise, captions="templates"
        )
        poisoned = poison(params, TrialData(small_train, small_test, classnames, 0, load_preset("tiny")))
        assert len(poisoned.dataset) == len(small_train) + 6 and len(poisoned.manifest) == 6
        assert all(row["caption_source"] == "template" for row in poisoned.manifest)
        assert all((row["psnr_db"] is None) == exact for row in poisoned.manifest)
    with pytest.raises(UsageError, match="attack_type must be one of"):
        DefenseMatrixParams(attack_type="poison-frogs")
