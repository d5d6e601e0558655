"""The attack × defense matrix as a sweep: real (tiny) trials through the ``defense`` runner."""

import tomllib

import pytest
import torch

from poisonclip.detect import list_detectors
from poisonclip.errors import UsageError
from poisonclip.experiments.grid import parse_sweep
from poisonclip.experiments.store import ResultStore
from poisonclip.experiments.sweep import TrialJob, run_trials
from poisonclip.report.defense_figures import (
    _render_cleanclip_lr,
    _render_cost,
    _render_diagnostics,
    _render_matrix,
    _render_roc,
)

from .sweep_files import TINY_SETTING

DEFENSES = [
    "none",
    "filter:clip-score@10%",
    "cleanclip(epochs=1, lrs=1e-5 1e-2, batch_size=32)",
    "roclip(pool_size=64)",
    "safeclip",
]
TINY = f"""
attack = "defense"
figures = ["defense_matrix", "detector_roc", "defense_cost", "cleanclip_lr", "defense_diagnostics"]
seeds = [0]
{TINY_SETTING}epochs = 3
[defense]
attack_type = "backdoor"
defense = {DEFENSES!r}
poison_count = 12
num_targets = 2
poisons_per_target = 4
clean_pairs = 200
"""


# The targeted attack with the two defenses that report most: the baseline and CleanCLIP's lr sweep.
TARGETED = TINY.replace('attack_type = "backdoor"', 'attack_type = "targeted"').replace(
    f"defense = {DEFENSES!r}", f"defense = {[DEFENSES[0], DEFENSES[2]]!r}"
)


def tiny_sweep(text: str = TINY, name: str = "defenses"):
    return parse_sweep(tomllib.loads(text), name)


def test_results_of_the_earlier_implementations_are_not_reused():
    """The methods changed in issue 16: the revision is hashed into every defense result key."""
    from poisonclip.experiments.defense_runner import METHODS_REVISION, DefenseMatrixParams
    from poisonclip.keys import config_dict

    assert config_dict(DefenseMatrixParams())["methods_revision"] == METHODS_REVISION == 2
    with pytest.raises(UsageError, match="methods_revision 1"):
        DefenseMatrixParams(methods_revision=1)


def test_all_defenses_of_an_attack_share_one_trial():
    sweep = tiny_sweep(TINY.replace('attack_type = "backdoor"', 'attack_type = ["backdoor", "targeted"]'))
    trials = sweep.trials()
    assert len(sweep.cells) == 10 and len(trials) == 2
    assert all(len(t.cells) == len(DEFENSES) for t in trials)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('"none"', None),
        ('"magic"', "unknown defense 'magic'"),
        ('"filter:slof@150%"', "fraction must be in (0, 1)"),
        ('"roclip(pool=3)"', "has no parameter"),
        ('"roclip(pool_size=300)"', "much smaller"),
        ('"cleanclip"', "fewer than one batch of 64"),
    ],
)
def test_defense_axis_is_validated_before_any_work(change, message):
    text = TINY.replace(f"defense = {DEFENSES!r}", f"defense = {change}")
    if message is None:
        assert len(tiny_sweep(text).cells) == 1
    else:
        with pytest.raises(UsageError, match=message.replace("(", "\\(").replace(")", "\\)")):
            tiny_sweep(text)


@pytest.fixture(scope="module")
def stored_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("defense_sweep")
    store = ResultStore(root / "r.sqlite")
    threads = torch.get_num_threads()
    try:
        for sweep in (tiny_sweep(), tiny_sweep(TARGETED, "targeted")):
            store.register_sweep(sweep)
            for trial in sweep.trials():
                # One thread, as sweep workers run: on a busy CPU two threads made a tiny step 200× slower.
                [outcome] = run_trials(TrialJob((trial,), root / "r.sqlite", root / "data", threads=1))
                assert outcome.error is None, outcome.error
    finally:
        torch.set_num_threads(threads)
    return store.rows()


def test_every_defense_row_has_attack_defense_and_detection_metrics(stored_rows):
    assert len(stored_rows) == 7
    for r in stored_rows:
        m = r.metrics
        assert 0 <= m["attack_success"] <= 1 and 0 <= m["zero_shot_acc"] <= 1
        assert m["defense_cost"] >= 0 and m["undefended_train_seconds"] > 0
        for name in list_detectors():
            assert 0 <= m[f"detect_{name}_roc_auc"] <= 1
            assert len(r.curves[f"roc_{name}"]) == len(r.curves["roc_fpr"])
        if r.cell["attack_type"] == "backdoor":
            assert m["attack_success"] == m["asr"] and "zscore" in m and m["poison_count_total"] == 12
        else:
            assert m["attack_success"] == m["zero_shot_success_rate"] and m["poison_count_total"] == 8
    by_defense = {(r.cell["attack_type"], r.cell["defense"]): r for r in stored_rows}
    none = by_defense["backdoor", "none"]
    assert none.metrics["defense_cost"] == 0
    flt = by_defense["backdoor", "filter:clip-score@10%"]
    assert flt.metrics["num_dropped"] == 32 and flt.metrics["poisons_flagged"] <= 12
    assert flt.metrics["detect_clip-score_roc_auc"] == none.metrics["detect_clip-score_roc_auc"]  # one model
    clean = by_defense["targeted", "cleanclip(epochs=1, lrs=1e-5 1e-2, batch_size=32)"]
    assert clean.curves["lr_sweep_lr"] == [1e-5, 1e-2] and clean.metrics["chosen_lr"] in (1e-5, 1e-2)
    safeclip = by_defense["backdoor", "safeclip"]
    assert safeclip.metrics["first_safe_fraction"] == safeclip.curves["safe_fractions"][0]
    roclip = by_defense["backdoor", "roclip(pool_size=64)"]
    assert roclip.curves["matching_epoch"] == [2] and len(roclip.curves["zero_shot_acc_per_epoch"]) == 3
    assert 0 <= roclip.curves["matching_own_class_share"][0] <= 1
    for name in ("slof", "isolation-forest"):  # the all-pairs variant, beside the batch protocol
        assert 0 <= none.metrics[f"detect_{name}-all_roc_auc"] <= 1


@pytest.mark.parametrize(
    "render", [_render_matrix, _render_roc, _render_cost, _render_cleanclip_lr, _render_diagnostics]
)
def test_defense_figures_render_from_real_rows(stored_rows, tmp_path, render):
    table = render(stored_rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert table.rows and all(len(row) == len(table.columns) for row in table.rows)
