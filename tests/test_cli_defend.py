import json

import pytest

from poisonclip.cli import main
from poisonclip.detect import list_detectors

pytestmark = pytest.mark.usefixtures("one_thread")


def run(args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def trained(small_data_dir, tmp_path_factory):
    """A tiny model trained on the small data plus 8 backdoor poisons, with its loss record."""
    root = tmp_path_factory.mktemp("cli")
    assert run(["poison", "backdoor", "--data", small_data_dir / "train.csv", "--out", root / "poisons",
                "--poison-count", 8, "--target-label", "star", "--no-progress"]) == 0  # fmt: skip
    data = [small_data_dir / "train.csv", root / "poisons" / "poisons.csv"]
    assert run(["train", "--data", *data, "--out", root / "ckpt", "--preset", "tiny",
                "--track-loss-epochs", 1, "--no-progress"]) == 0  # fmt: skip
    return root, data


def test_help_explains_detect_and_defend(capsys):
    for command in ("detect", "defend"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--manifest" in out and "--fraction" in out and "--pool-size" in out
    assert run(["list", "detectors"]) == 0 and run(["list", "defenses"]) == 0
    assert "slof" in capsys.readouterr().out


def test_detect_scores_every_pair_with_every_detector(trained, capsys):
    root, data = trained
    out = root / "detect"
    assert run(["detect", "--checkpoint", root / "ckpt", "--data", *data,
                "--manifest", root / "poisons" / "manifest.jsonl", "--out", out, "--k", 8]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["detection"]) == set(list_detectors())  # the loss record was found
    for m in metrics["detection"].values():
        assert 0 <= m["roc_auc"] <= 1 and 0 <= m["pr_auc"] <= 1 and m["num_poisons"] == 8
    assert len(metrics["roc"]["fpr"]) == len(metrics["roc"]["tpr"]["slof"])
    rows = (out / "scores.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["key", "poison"] and len(rows) == 1 + 408
    assert sum(int(row.split("\t")[1]) for row in rows[1:]) == 8
    assert "ROC-AUC" in capsys.readouterr().out
    # The earlier all-pairs variant, any space; the batch protocol scores differently.
    assert run(["detect", "--checkpoint", root / "ckpt", "--data", *data, "--out", root / "detect_all",
                "--detectors", "k-distance", "--reference", "all", "--space", "joint"]) == 0  # fmt: skip
    all_pairs = (root / "detect_all" / "scores.tsv").read_text().splitlines()
    assert all_pairs[0].split("\t") == ["key", "k-distance"] and len(all_pairs) == 1 + 408


def test_defend_filter_writes_a_checkpoint_and_the_remaining_manifest(trained, small_data_dir, capsys):
    root, data = trained
    out = root / "filtered"
    assert run(["defend", "filter", "--checkpoint", root / "ckpt", "--data", *data,
                "--manifest", root / "poisons" / "manifest.jsonl", "--detector", "clip-score",
                "--fraction", 0.1, "--preset", "tiny", "--out", out, "--no-progress"]) == 0  # fmt: skip
    record = json.loads((out / "defense.json").read_text())
    assert record["defense"] == "filter" and record["params"] == {"detector": "clip-score", "fraction": 0.1}
    assert record["num_dropped"] == 41 and record["poisons_flagged"] + record["poisons_remaining"] == 8
    remaining = (out / "remaining_manifest.jsonl").read_text().splitlines()
    assert len(remaining) == record["poisons_remaining"]
    capsys.readouterr()
    assert run(["evaluate", "--checkpoint", out / "checkpoint", "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt",
                "--target-label", "star"]) == 0  # fmt: skip
    assert "asr" in json.loads(capsys.readouterr().out)


def test_defend_cleanclip_from_the_command_line(trained, small_data_dir):
    root, _ = trained
    out = root / "cleanclip"
    # no --model: the checkpoint's architecture (toy-vit-micro), not the default preset's model
    assert run(["defend", "cleanclip", "--checkpoint", root / "ckpt",
                "--clean-data", small_data_dir / "train.csv",
                "--lrs", 1e-5, 1e-3, "--finetune-epochs", 1, "--out", out, "--no-progress"]) == 0  # fmt: skip
    record = json.loads((out / "defense.json").read_text())
    assert [row["lr"] for row in record["lr_sweep"]] == [1e-5, 1e-3] and record["chosen_lr"] in (1e-5, 1e-3)
    assert (out / "checkpoint" / "open_clip_model.safetensors").is_file()
    recorded = json.loads((out / "checkpoint" / "train_config.json").read_text())["train_config"]
    assert recorded["model"] == "toy-vit-micro"  # by name, as the checkpoint recorded it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "--detectors", "clip-score,magic"], "unknown detector 'magic'"),
        (["detect", "--detectors", "slof", "--space", "joint"], "the batch protocol queries with"),
        (["defend", "magic"], "unknown defense 'magic'"),
        (["defend", "filter", "--fraction", 1.5], "fraction must be in (0, 1)"),
        (["defend", "filter", "--fraction", 0], "fraction must be in (0, 1)"),
        (["defend", "filter", "--detector", "magic"], "unknown detector 'magic'"),
        (["defend", "filter", "--pool-size", 10], "--pool-size do(es) not apply to defense filter"),
        (["defend", "filter", "--model", "toy-vit-w64"], "architecture differs"),
        (["defend", "roclip"], "does not use --checkpoint"),
        (["defend", "cleanclip"], "cleanclip needs --clean-data"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(trained, tmp_path, capsys, args, message):
    root, data = trained
    out = tmp_path / "out"
    common = ["--checkpoint", root / "ckpt", "--data", *data, "--out", out, "--no-progress"]
    if args[0] == "defend" and "--preset" not in args:
        common += ["--preset", "tiny"]
    assert run([*args, *common]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("poisonclip: error: ") and message in errors[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
