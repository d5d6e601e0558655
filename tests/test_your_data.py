"""Data as users have it: class-name labels, the trigger-resolution rule, prompt files, clean-only
evaluation, shard hints and pretrained starts."""

import contextlib
import csv
import dataclasses
import io
import json
import shlex
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from poisonclip.attacks.triggers.checkerboard import checkerboard
from poisonclip.cli import main
from poisonclip.data import SyntheticConfig, read_csv_dataset, write_synthetic
from poisonclip.data.dataset import read_classnames
from poisonclip.data.wds import read_shard_dataset, write_shards
from poisonclip.errors import UsageError
from poisonclip.experiments.backdoor_trial import BackdoorParams
from poisonclip.experiments.grid import parse_sweep
from poisonclip.keys import config_dict
from poisonclip.progress import NON_TTY_INTERVAL, progress_bar
from poisonclip.train.config import load_preset
from poisonclip.train.model import create_model, get_model_config, initial_model
from poisonclip.train.open_clip_backend import default_workers


def run(args) -> int:
    return main([str(a) for a in args])


def run_quiet(args) -> tuple[int, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = run(args)
    return code, out.getvalue()


def write_named_csv(source: Path, out: Path, names: list[str], label=lambda name, index: name) -> None:
    """``source`` (an open_clip CSV) with absolute image paths and a label column of class names
    (or ``label(name, index)``), as a user's labelled CSV."""
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title", "label"])
        for i, row in enumerate(rows):
            index = int(row["label"]) if row.get("label") else i % len(names)
            writer.writerow([source.parent / row["filepath"], row["title"], label(names[index], index)])


@pytest.fixture(scope="module")
def named(small_data_dir, tmp_path_factory):
    """The small set with class names as labels, in its train and test CSVs."""
    root = tmp_path_factory.mktemp("named")
    names = read_classnames(small_data_dir / "classnames.txt")
    write_named_csv(small_data_dir / "train.csv", root / "train.csv", names)
    write_named_csv(small_data_dir / "test.csv", root / "test.csv", names)
    return root, names


@pytest.fixture(scope="module")
def tiny_checkpoint(small_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    assert run_quiet(["train", "--data", small_data_dir / "train.csv", "--out", out, "--preset", "tiny",
                      "--no-progress"])[0] == 0  # fmt: skip
    return out


def test_class_names_as_labels_poison_train_and_evaluate(
    named, small_data_dir, tiny_checkpoint, tmp_path, capsys
):
    root, names = named
    target = names[3]
    # Poisoning and training ignore labels (a label column of names used to crash both).
    code, out = run_quiet(["poison", "backdoor", "--data", root / "train.csv", "--out", tmp_path / "p",
                           "--poison-count", 8, "--target-label", target, "--image-size", 32])  # fmt: skip
    assert code == 0 and "train with: poisonclip train --data" in out
    assert run_quiet(["train", "--data", root / "train.csv", tmp_path / "p" / "poisons.csv", "--out",
                      tmp_path / "ckpt", "--preset", "tiny", "--no-progress"])[0] == 0  # fmt: skip
    # Names map through --classnames; without it the sorted names are the classes: the same accuracy
    # as the integer labels with their class-name file (zero-shot accuracy ignores the class order).
    evaluate = ["evaluate", "--checkpoint", tiny_checkpoint, "--target-label", target, "--no-progress"]
    results = []
    for test in (
        ["--test", small_data_dir / "test.csv", "--classnames", small_data_dir / "classnames.txt"],
        ["--test", root / "test.csv", "--classnames", small_data_dir / "classnames.txt"],
        ["--test", root / "test.csv"],
    ):
        capsys.readouterr()
        assert run([*evaluate, *test]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    assert results[2]["zero_shot_acc"] == results[0]["zero_shot_acc"] and results[2]["num_test"] == 120


def test_without_a_target_label_evaluate_measures_clean_accuracy_only(named, tiny_checkpoint, capsys):
    root, _ = named
    capsys.readouterr()
    assert (
        run(["evaluate", "--checkpoint", tiny_checkpoint, "--test", root / "test.csv", "--no-progress"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"zero_shot_acc", "num_test"} and metrics["num_test"] == 120


@pytest.mark.parametrize(
    ("label", "with_classnames", "message"),
    [
        (lambda name, i: "zebra" if i == 2 else name, True, "label 'zebra' of sample"),
        (lambda name, i: "" if i == 2 else name, True, "has an empty label"),
        (lambda name, i: 99 if i == 2 else i, True, "label 99 of sample"),
        (lambda name, i: i, False, "pass --classnames"),
    ],
)
def test_bad_labels_are_one_error_naming_value_and_file(
    small_data_dir, tiny_checkpoint, tmp_path, capsys, label, with_classnames, message
):
    names = read_classnames(small_data_dir / "classnames.txt")
    write_named_csv(small_data_dir / "test.csv", tmp_path / "test.csv", names, label)
    classnames = ["--classnames", small_data_dir / "classnames.txt"] if with_classnames else []
    capsys.readouterr()
    assert run(["evaluate", "--checkpoint", tiny_checkpoint, "--test", tmp_path / "test.csv", *classnames,
                "--out", tmp_path / "m.json", "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("poisonclip: error:") and message in err
    assert str(tmp_path / "test.csv") in err
    if with_classnames and "empty" not in message:  # the class-name file the value was looked up in
        assert str(small_data_dir / "classnames.txt") in err
    assert not (tmp_path / "m.json").exists()


def test_class_names_as_labels_in_shard_json(small_data_dir, small_test, tmp_path, capsys):
    """img2dataset --save_additional_columns '["label"]' stores names: poisoning ignores them (it
    used to reject every sample as "unreadable json"), evaluation maps them."""
    names = read_classnames(small_data_dir / "classnames.txt")
    train = read_csv_dataset(small_data_dir / "train.csv", progress=False)
    labels = [{"label": names[i % len(names)]} for i in range(len(train))]
    shards = write_shards(tmp_path / "train", train, 100, metadata=labels)
    code, out = run_quiet(["poison", "backdoor", "--data", shards.url, "--out", tmp_path / "p",
                           "--poison-count", 8, "--target-label", names[3], "--image-size", 32,
                           "--no-progress"])  # fmt: skip
    assert code == 0 and "wrote 8 poisons" in out and "skipped" not in out
    test = write_shards(
        tmp_path / "test", small_test, 60, metadata=[{"label": names[i]} for i in small_test.labels]
    )
    read = read_shard_dataset(test.url, progress=False, classnames=names)
    assert torch.equal(read.labels, small_test.labels) and read.classnames == names
    assert read_shard_dataset(test.url, progress=False).classnames == sorted(names)


def synthetic(root: Path, stored_size: int | None) -> Path:
    config = SyntheticConfig(num_train=1000, num_test=200, num_shapes=4, seed=3, stored_size=stored_size)
    return write_synthetic(root, config)


def test_the_same_data_stored_at_twice_the_model_size_gives_the_same_backdoor(tmp_path, capsys):
    """The trigger-resolution rule end to end: poisons written at the model's input size
    (--image-size), the 64-px data resized to it for training and evaluation. Without the rule a
    64-px poison resized to 32 px measured z 0.00 on this set (ASR at the natural rate)."""
    recipe = ["--preset", "tiny", "--model", "toy-vit-w16", "--epochs", 20, "--lr", 5e-3, "--no-progress"]
    metrics = {}
    for stored in (None, 64):
        data = synthetic(tmp_path / f"data{stored}", stored)
        target = read_classnames(data / "classnames.txt")[0]
        poisons, ckpt = tmp_path / f"poisons{stored}", tmp_path / f"ckpt{stored}"
        assert run_quiet(["poison", "backdoor", "--data", data / "train.csv", "--out", poisons,
                          "--poison-count", 100, "--patch-size", 4, "--image-size", 32,
                          "--target-label", target])[0] == 0  # fmt: skip
        poison = np.asarray(Image.open(poisons / "poison" / "000000.png"))
        assert poison.shape == (32, 32, 3)
        assert np.array_equal(poison[:4, :4], checkerboard(4).permute(1, 2, 0).numpy())  # intact
        capsys.readouterr()
        assert run_quiet(["train", "--data", data / "train.csv", poisons / "poisons.csv", "--out", ckpt,
                          *recipe])[0] == 0  # fmt: skip
        assert ("is stored at 64x64; it is resized to the model's 32x32" in capsys.readouterr().err) == bool(
            stored
        )
        assert run(["evaluate", "--checkpoint", ckpt, "--test", data / "test.csv", "--classnames",
                    data / "classnames.txt", "--target-label", target, "--patch-size", 4,
                    "--templates", "synthetic", "--no-progress"]) == 0  # fmt: skip
        captured = capsys.readouterr()
        assert ("resized to the model's 32x32 input" in captured.err) == bool(stored)
        metrics[stored] = json.loads(captured.out)
    at32, at64 = metrics[None], metrics[64]
    assert at32["zscore"] > 1.0 and at32["asr"] > at32["natural_rate"] + 0.3  # the backdoor is in
    assert abs(at64["zscore"] - at32["zscore"]) < 0.3 and abs(at64["asr"] - at32["asr"]) < 0.1


def test_train_refuses_poisons_at_another_size_than_the_model(tmp_path, capsys):
    data = write_synthetic(
        tmp_path / "d", SyntheticConfig(num_train=120, num_test=20, num_shapes=4, stored_size=64)
    )
    target = read_classnames(data / "classnames.txt")[0]
    assert run_quiet(["poison", "backdoor", "--data", data / "train.csv", "--out", tmp_path / "p",
                      "--poison-count", 4, "--target-label", target])[0] == 0  # fmt: skip
    assert "no --image-size: the poisons keep the data's 64x64 pixels" in capsys.readouterr().err
    poisons = tmp_path / "p" / "poisons.csv"
    assert (
        run(["train", "--data", data / "train.csv", poisons, "--out", tmp_path / "ckpt", "--preset", "tiny"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "poisons are 64x64" in err and "--image-size 32" in err
    assert not (tmp_path / "ckpt").exists()
    # the same check guards the open_clip_train hand-off
    assert run(["train", "--backend", "open_clip", "--data", data / "train.csv", poisons, "--out",
                tmp_path / "ckpt", "--preset", "tiny", "--dry-run"]) == 2  # fmt: skip


def test_stored_size_keeps_scenes_captions_and_result_keys(tmp_path):
    from poisonclip.data.synthetic import make_synthetic

    base = SyntheticConfig(num_train=50, num_test=10, num_shapes=4)
    stored = dataclasses.replace(base, stored_size=64)
    (train32, _), (train64, _) = make_synthetic(base), make_synthetic(stored)
    assert train64.images.shape == (50, 64, 64, 3) and train64.captions == train32.captions
    assert np.array_equal(train64.labels, train32.labels) and np.array_equal(train64.colours, train32.colours)
    assert "stored_size" not in config_dict(base) and config_dict(stored)["stored_size"] == 64


def test_templates_file_for_evaluate_and_sweeps(small_data_dir, tiny_checkpoint, tmp_path, capsys):
    from poisonclip.data.prompts import SYNTHETIC_TEMPLATES

    same = tmp_path / "same.txt"
    same.write_text("\n".join(SYNTHETIC_TEMPLATES) + "\n\n")
    evaluate = ["evaluate", "--checkpoint", tiny_checkpoint, "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt", "--no-progress"]  # fmt: skip
    results = []
    for templates in ("synthetic", same):
        capsys.readouterr()
        assert run([*evaluate, "--templates", templates]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo of a thing.\n")
    assert run([*evaluate, "--templates", bad]) == 2
    assert "template 2 ('a photo of a thing.') needs exactly the field {}" in capsys.readouterr().err
    # Sweeps: evaluation-only, so a templates file shares the model, and the default leaves keys alone.
    assert "eval_templates" not in config_dict(BackdoorParams())
    assert BackdoorParams(eval_templates=str(same)).training_params() == BackdoorParams().training_params()
    document = {
        "data": {"num_train": 300, "num_test": 60, "num_shapes": 4},
        "train": {"preset": "tiny"},
        "backdoor": {
            "target_label": SyntheticConfig(num_shapes=4).classnames[0],
            "eval_templates": ["synthetic", str(same)],
        },
    }
    sweep = parse_sweep(document, "t")
    assert len(sweep.cells) == 2 and len(sweep.trials()) == 1
    with pytest.raises(UsageError, match="eval_templates: unknown template set"):
        parse_sweep({**document, "backdoor": {"eval_templates": str(tmp_path / "missing.txt")}}, "t")


def test_progress_bars_off_a_terminal_update_rarely():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_bar(range(3), file=io.StringIO()).mininterval == NON_TTY_INTERVAL
    assert progress_bar(range(3), file=Terminal()).mininterval < 1


def test_shard_hints_are_commands_without_missing_shards(small_data_dir, tmp_path):
    train = read_csv_dataset(small_data_dir / "train.csv", progress=False)
    shards = write_shards(tmp_path / "shards", train, 100)
    for suffix in (".tar", ".parquet", "_stats.json"):
        (tmp_path / "shards" / f"00002{suffix}").unlink()
    target = read_classnames(small_data_dir / "classnames.txt")[3]
    code, out = run_quiet(["poison", "backdoor", "--data", shards.url, "--out", tmp_path / "p",
                           "--poison-count", 6, "--target-label", target, "--image-size", 32,
                           "--no-progress"])  # fmt: skip
    assert code == 0
    hint = next(line for line in out.splitlines() if line.startswith("train with: poisonclip "))
    other = next(line for line in out.splitlines() if line.startswith("or open_clip_train: "))
    assert "00002" not in hint and "00002" not in other and "--train-num-samples 306" in other
    assert f"{tmp_path / 'shards'}/{{00000..00001}}.tar::{tmp_path / 'shards'}/00003.tar::" in other
    command = shlex.split(hint.removeprefix("train with: poisonclip ").split(" (at scale")[0])
    command[command.index("CHECKPOINT")] = str(tmp_path / "ckpt")
    assert run_quiet([*command, "--preset", "tiny", "--no-progress"])[0] == 0  # the hint, pasted


def test_workers_default_to_the_machines_cores(small_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers(1) == 2 and default_workers(2) == 1 and default_workers(4) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(96)), raising=False)
    assert default_workers(8) == 8 and default_workers(1) == 8
    code, out = run_quiet(["train", "--backend", "open_clip", "--data", small_data_dir / "train.csv",
                           "--out", tmp_path / "ckpt", "--preset", "tiny", "--nproc-per-node", 4,
                           "--batch-size", 64, "--dry-run"])  # fmt: skip
    assert code == 0 and "--workers 8" in out


class NotWeights:
    """Pickled by reference: ``torch.load(weights_only=True)`` refuses to rebuild it."""


@pytest.fixture(scope="module")
def pretrained_files(tmp_path_factory):
    """Weights of a toy-vit-micro (seed 7) as open_clip_train's epoch_N.pt and as safetensors."""
    root = tmp_path_factory.mktemp("pretrained")
    model = create_model(get_model_config("toy-vit-micro"), seed=7)
    state = model.state_dict()
    ddp = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 1, "name": "x", "state_dict": ddp, "optimizer": {"state": {}}}, root / "epoch_1.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, root / "weights.safetensors")
    torch.save({"state_dict": state, "extra": NotWeights()}, root / "pickled.pt")
    torch.save(create_model(get_model_config("toy-vit-w16")).state_dict(), root / "other_model.pt")
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), root / "torchscript.pt")
    return root, state


def test_pretrained_weights_files_start_training(pretrained_files, small_data_dir, tmp_path):
    root, state = pretrained_files
    config = load_preset("tiny")
    for name in ("epoch_1.pt", "weights.safetensors"):
        model = initial_model(config.replace(pretrained=str(root / name)), get_model_config(config.model))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the command line, in memory: a vanishing lr keeps the pretrained weights
    assert run_quiet(["train", "--data", small_data_dir / "train.csv", "--out", tmp_path / "ckpt",
                      "--preset", "tiny", "--pretrained", root / "epoch_1.pt", "--lr", 1e-12,
                      "--no-progress"])[0] == 0  # fmt: skip
    trained = open_clip.create_model(f"local-dir:{tmp_path / 'ckpt'}")
    assert all(torch.allclose(trained.state_dict()[k], v, atol=1e-6) for k, v in state.items())
    record = json.loads((tmp_path / "ckpt" / "train_config.json").read_text())
    assert record["train_config"]["pretrained"] == str(root / "epoch_1.pt")
    # and handed to open_clip_train, which loads the same file itself
    code, out = run_quiet(["train", "--backend", "open_clip", "--data", small_data_dir / "train.csv", "--out",
                           tmp_path / "oc", "--preset", "tiny", "--pretrained", root / "epoch_1.pt",
                           "--dry-run"])  # fmt: skip
    assert code == 0 and f"--pretrained {root / 'epoch_1.pt'}" in out


def test_a_pretrained_tag_is_downloaded_by_open_clip(pretrained_files, monkeypatch):
    root, state = pretrained_files
    cfg = {"hf_hub": "someone/toy-clip/"}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag: cfg if tag == "toy-tag" else {})
    downloads = []
    monkeypatch.setattr(
        open_clip, "download_pretrained", lambda c: downloads.append(c) or str(root / "weights.safetensors")
    )
    config = load_preset("tiny").replace(pretrained="toy-tag")
    model = initial_model(config, get_model_config(config.model))
    assert downloads == [cfg] and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("torchscript.pt", "is a TorchScript archive"),
        ("pickled.pt", "not weights only"),
        ("other_model.pt", "cannot load it into model 'toy-vit-micro'"),
        ("no-such-tag", "neither a file nor an open_clip pretrained tag of model 'toy-vit-micro'"),
    ],
)
def test_bad_pretrained_weights_are_refused(
    pretrained_files, small_data_dir, tmp_path, capsys, name, message
):
    root, _ = pretrained_files
    pretrained = root / name if (root / name).exists() else name
    assert run(["train", "--data", small_data_dir / "train.csv", "--out", tmp_path / "ckpt",
                "--preset", "tiny", "--pretrained", pretrained, "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "ckpt").exists()


def test_cleanclip_cleans_a_pretrained_model(pretrained_files, small_data_dir, tmp_path, capsys):
    root, _ = pretrained_files
    out = tmp_path / "cleaned"
    assert run_quiet(["defend", "cleanclip", "--pretrained", root / "epoch_1.pt", "--clean-data",
                      small_data_dir / "train.csv", "--lrs", 1e-4, "--finetune-epochs", 1, "--preset", "tiny",
                      "--out", out, "--no-progress"])[0] == 0  # fmt: skip
    record = json.loads((out / "defense.json").read_text())
    assert record["chosen_lr"] == 1e-4 and (out / "checkpoint" / "open_clip_model.safetensors").is_file()
    assert run(["defend", "roclip", "--pretrained", root / "epoch_1.pt", "--data",
                small_data_dir / "train.csv", "--preset", "tiny", "--out", tmp_path / "r"]) == 2  # fmt: skip
    assert "--pretrained names the model that cleanclip cleans" in capsys.readouterr().err


def test_sweeps_can_start_from_pretrained_weights(pretrained_files):
    root, _ = pretrained_files
    document = {
        "data": {"num_train": 300, "num_test": 60, "num_shapes": 4},
        "backdoor": {"target_label": SyntheticConfig(num_shapes=4).classnames[0]},
    }
    plain = parse_sweep({**document, "train": {"preset": "tiny"}}, "t").cells[0]
    assert "pretrained" not in plain.to_dict()["train"]  # existing result keys stay valid
    tuned = parse_sweep(
        {**document, "train": {"preset": "tiny", "pretrained": str(root / "epoch_1.pt")}}, "t"
    )
    assert tuned.cells[0].train.pretrained == str(root / "epoch_1.pt") and tuned.cells[0].key != plain.key
    with pytest.raises(UsageError, match="neither a file nor an open_clip pretrained tag"):
        parse_sweep({**document, "train": {"preset": "tiny", "pretrained": "no-such-tag"}}, "t")


@pytest.fixture(scope="module")
def poisons_at_64(tmp_path_factory):
    """64-px data and backdoor poisons left at 64 px (no --image-size), for a 32-px model."""
    root = tmp_path_factory.mktemp("at64")
    data = write_synthetic(
        root / "d", SyntheticConfig(num_train=60, num_test=10, num_shapes=4, stored_size=64)
    )
    target = read_classnames(data / "classnames.txt")[0]
    poison = ["poison", "backdoor", "--data", data / "train.csv", "--poison-count", 4,
              "--target-label", target, "--no-progress"]  # fmt: skip
    assert run_quiet([*poison, "--out", root / "p64", "--merged-csv", root / "merged64.csv"])[0] == 0
    assert run_quiet([*poison, "--out", root / "p32", "--merged-csv", root / "merged32.csv",
                      "--image-size", 32])[0] == 0  # fmt: skip
    return root, data


def test_train_refuses_64px_poisons_among_the_rows_of_a_merged_csv(poisons_at_64, tmp_path, capsys):
    """Review item 7: a --merged-csv file has no manifest beside it, and its first rows are clean,
    so 64-px poisons in it were only noted and then resized. Its poison rows are recognised by
    where their images lie (the poison set's folder, beside its manifest)."""
    root, _ = poisons_at_64
    capsys.readouterr()
    for backend in (["--backend", "memory"], ["--backend", "open_clip", "--dry-run"]):
        code = run(["train", "--data", root / "merged64.csv", "--out", tmp_path / "ckpt", "--preset", "tiny",
                    *backend])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "(the poison rows): the poisons are 64x64" in err and "--image-size 32" in err
        assert not (tmp_path / "ckpt").exists()
    # poisons written at the model's size pass; the clean rows are resized, with a note
    code, _ = run_quiet(["train", "--data", root / "merged32.csv", "--out", tmp_path / "ok", "--preset",
                         "tiny", "--backend", "open_clip", "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "merged32.csv is stored at 64x64; it is resized to the model's 32x32" in err


def test_train_checks_every_part_of_joined_shards(poisons_at_64, tmp_path, capsys):
    """Review item 7: in 'clean::poisons' only the first part was looked at, so poison shards
    second in a pasted open_clip_train string were never recognised."""
    from poisonclip.attacks.poison_set import read_poison_set, write_poison_shards
    from poisonclip.data.resolution import check_poison_resolution

    root, data = poisons_at_64
    clean = write_shards(tmp_path / "clean", read_csv_dataset(data / "train.csv", progress=False), 100)
    poisons64 = write_poison_shards(tmp_path / "p64", read_poison_set(root / "p64"))
    poisons32 = write_poison_shards(tmp_path / "p32", read_poison_set(root / "p32"))
    with pytest.raises(UsageError, match=r"p64/shards/.*the poisons are 64x64"):
        check_poison_resolution([f"{clean.url}::{poisons64.url}"], 32)
    joined = f"{clean.url}::{poisons32.url}"
    assert check_poison_resolution([joined], 32) == [(clean.url, (64, 64))]  # the clean part: a note
    capsys.readouterr()
    assert run(["train", "--data", f"{clean.url}::{poisons64.url}", "--out", tmp_path / "ckpt",
                "--preset", "tiny"]) == 2  # fmt: skip
    assert "the poisons are 64x64" in capsys.readouterr().err


SIGLIP_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SigLIP's image mean and std, not OpenAI's


def test_a_pretrained_start_keeps_its_own_image_mean_and_std(
    small_data_dir, small_train, tmp_path, monkeypatch
):
    """Review item 9: images were always standardised with OpenAI's mean and std, so a pretrained
    model trained with others (SigLIP: 0.5, 0.5) was fine-tuned and evaluated miscalibrated. The
    pretrained config's values now go with the model: training, its checkpoint, evaluation and the
    open_clip_train hand-off; models trained from scratch keep OpenAI's (no download here)."""
    import shutil

    from open_clip_train.params import parse_args

    from poisonclip.evaluate.embeddings import encode_images
    from poisonclip.train import objectives, preprocess
    from poisonclip.train.checkpoint import load_checkpoint, save_checkpoint
    from poisonclip.train.grouped import groupable
    from poisonclip.train.many import _rebuild

    config = load_preset("tiny")
    model_config = get_model_config(config.model)
    openai = (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    scratch = save_checkpoint(tmp_path / "scratch", create_model(model_config), model_config)
    cfg = json.loads((scratch / "open_clip_config.json").read_text())
    assert (cfg["preprocess_cfg"]["mean"], cfg["preprocess_cfg"]["std"]) == tuple(
        map(list, openai)
    )  # as before
    assert preprocess.image_stats(create_model(model_config)) == openai and groupable(
        create_model(model_config)
    )
    # a local model whose open_clip config carries SigLIP's values
    shutil.copytree(scratch, tmp_path / "siglip")
    cfg["preprocess_cfg"].update(mean=[0.5] * 3, std=[0.5] * 3)
    (tmp_path / "siglip" / "open_clip_config.json").write_text(json.dumps(cfg))
    weights = tmp_path / "siglip" / "open_clip_model.safetensors"
    assert preprocess.pretrained_image_stats(config.model, str(weights)) == SIGLIP_STATS
    assert preprocess.pretrained_image_stats("ViT-B-16-SigLIP", "webli") == SIGLIP_STATS  # a tag's config
    assert preprocess.pretrained_image_stats("ViT-B-32", "laion2b_s34b_b79k") == openai
    start = initial_model(config.replace(pretrained=str(weights)), model_config)
    images = small_train.images[:8]
    assert preprocess.image_stats(start) == SIGLIP_STATS and not groupable(start)  # grouped: OpenAI's only
    assert torch.allclose(preprocess.normalize_images(images, start), images.float() / 255 * 2 - 1)
    rebuilt = _rebuild(config.replace(pretrained=str(weights)), start.state_dict(), None)[0]  # sweeps
    assert preprocess.image_stats(rebuilt) == SIGLIP_STATS

    seen = set()  # the mean and std every training step standardised with
    original = preprocess.normalize_images
    monkeypatch.setattr(
        objectives,
        "normalize_images",
        lambda x, m=None: seen.add(preprocess.image_stats(m)) or original(x, m),
    )
    assert run_quiet(["train", "--data", small_data_dir / "train.csv", "--out", tmp_path / "ft", "--preset",
                      "tiny", "--pretrained", weights, "--no-progress"])[0] == 0  # fmt: skip
    assert seen == {SIGLIP_STATS}
    saved = json.loads((tmp_path / "ft" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert (saved["mean"], saved["std"]) == ([0.5] * 3, [0.5] * 3)
    model, _ = load_checkpoint(tmp_path / "ft")  # evaluation reads them back
    assert preprocess.image_stats(model) == SIGLIP_STATS
    with torch.inference_mode():
        expected = model.encode_image(images.float() / 255 * 2 - 1, normalize=True)
    assert torch.allclose(encode_images(model, images), expected, atol=1e-5)
    # open_clip_train takes a tag's values from the tag itself, a file's from --image-mean/--image-std
    hand_off = ["train", "--backend", "open_clip", "--data", small_data_dir / "train.csv", "--out",
                tmp_path / "oc", "--preset", "tiny", "--dry-run"]  # fmt: skip
    code, out = run_quiet([*hand_off, "--pretrained", weights])
    args = parse_args(shlex.split(out)[6:])
    assert code == 0 and args.image_mean == [0.5] * 3 and args.image_std == [0.5] * 3
    code, out = run_quiet(hand_off)
    assert code == 0 and "--image-mean" not in out  # from scratch: the command as before
