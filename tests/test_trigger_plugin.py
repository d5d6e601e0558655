"""Issue 18's acceptance test: a trigger declared in one file (this one) works through the CLI, a
sweep and the attack × defense matrix, with nothing else edited."""

import json
import tomllib
from dataclasses import dataclass, field

import torch

from poisonclip.attacks.triggers import Trigger, Triggered, register_trigger
from poisonclip.cli import main
from poisonclip.experiments.grid import parse_sweep
from poisonclip.experiments.store import ResultStore
from poisonclip.experiments.sweep import TrialJob, run_trials

from .conftest import TINY_GRID as DATA


@register_trigger("toy")
@dataclass(frozen=True)
class Toy(Trigger):
    """The bottom two rows of the image set to one grey level."""

    toy_level: int = field(default=255, metadata={"help": "grey level of the bottom two rows"})

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> Triggered:
        out = images.clone()
        out[:, :, -2:, :] = self.toy_level
        return Triggered(out, [{"toy_rows": 2} for _ in range(len(images))])


def run(args) -> int:
    return main([str(a) for a in args])


def test_a_trigger_declared_in_a_test_file_runs_through_the_cli(small_data_dir, tmp_path, capsys):
    poisons, ckpt = tmp_path / "poisons", tmp_path / "ckpt"
    assert run(["poison", "backdoor", "--data", small_data_dir / "train.csv", "--out", poisons,
                "--poison-count", 8, "--target-label", "star",
                "--trigger", "toy", "--toy-level", 200]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (poisons / "manifest.jsonl").read_text().splitlines()]
    assert all(
        r["trigger"] == "toy" and r["trigger_params"] == {"toy_level": 200} and r["toy_rows"] == 2
        for r in rows
    )
    assert run(["train", "--data", small_data_dir / "train.csv", poisons / "poisons.csv",
                "--out", ckpt, "--preset", "tiny", "--no-progress"]) == 0  # fmt: skip
    evaluate = ["evaluate", "--checkpoint", ckpt, "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt", "--target-label", "star",
                "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert run([*evaluate, "--trigger-from", poisons]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert run([*evaluate, "--trigger", "toy", "--toy-level", 200]) == 0
    assert json.loads(capsys.readouterr().out) == recorded  # the poison set's trigger, exactly
    assert run([*evaluate, "--trigger", "toy"]) == 0  # another level: another trigger
    assert json.loads(capsys.readouterr().out)["zscore"] != recorded["zscore"]
    assert run([*evaluate, "--trigger", "toy", "--patch-size", 3]) == 2
    assert (
        "--patch-size: not an option of trigger 'toy' (its options: --toy-level)" in capsys.readouterr().err
    )
    assert run([*evaluate, "--trigger-from", poisons, "--toy-level", 3]) == 2
    assert "drop --toy-level" in capsys.readouterr().err


def test_a_trigger_declared_in_a_test_file_runs_in_a_sweep(tmp_path):
    text = DATA + '[backdoor]\npoison_count = [0, 6]\ntrigger = "toy"\ntoy_level = [100, 200]\n'
    sweep = parse_sweep(tomllib.loads(text), "toy")
    assert {(c.params.poison_count, c.params.trigger_params) for c in sweep.cells} == {
        (n, (("toy_level", level),)) for n in (0, 6) for level in (100, 200)
    }
    poisoned = [t for t in sweep.trials() if t.cells[0].params.poison_count][0]
    clean = [t for t in sweep.trials() if not t.cells[0].params.poison_count][0]
    assert len(clean.cells) == 2  # one clean model, evaluated with both levels
    store = ResultStore(tmp_path / "r.sqlite")
    store.register_sweep(sweep)
    for trial in (poisoned, clean):
        [outcome] = run_trials(TrialJob((trial,), tmp_path / "r.sqlite", tmp_path / "data", threads=1))
        assert outcome.error is None, outcome.error
    rows = store.rows()
    assert len(rows) == 3 and all(r.cell["trigger"] == "toy" for r in rows)
    assert all("patch_size" not in r.cell and "patch_area_fraction" not in r.metrics for r in rows)
    assert {json.dumps(r.cell["trigger_params"]) for r in rows if r.cell["poison_count"] == 0} == {
        '[["toy_level", 100]]',
        '[["toy_level", 200]]',
    }


def test_a_trigger_declared_in_a_test_file_runs_in_the_defense_matrix(tmp_path):
    text = (
        'attack = "defense"\n' + DATA + '[defense]\ndefense = "none"\npoison_count = 8\nclean_pairs = 200\n'
    )
    sweep = parse_sweep(tomllib.loads(text + 'trigger = "toy"\n'), "m")
    [trial] = sweep.trials()
    store = ResultStore(tmp_path / "r.sqlite")
    store.register_sweep(sweep)
    [outcome] = run_trials(TrialJob((trial,), tmp_path / "r.sqlite", tmp_path / "data", threads=1))
    assert outcome.error is None, outcome.error
    [row] = store.rows()
    assert row.cell["trigger"] == "toy" and row.cell["defense"] == "none"
    assert 0 <= row.metrics["attack_success"] <= 1 and row.metrics["poison_count_total"] == 8
