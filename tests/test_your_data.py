"""Data as users have it: class-name labels, clean-only evaluation, prompt files, progress bars,
shard hints and loader workers."""

import csv
import io
import json
import shlex
from pathlib import Path

import pytest
import torch

from poisonclip.data import SyntheticConfig, read_csv_dataset
from poisonclip.data.dataset import read_classnames
from poisonclip.data.wds import read_shard_dataset, write_shards
from poisonclip.errors import UsageError
from poisonclip.experiments.backdoor_trial import BackdoorParams
from poisonclip.experiments.grid import parse_sweep
from poisonclip.keys import config_dict
from poisonclip.progress import NON_TTY_INTERVAL, progress_bar
from poisonclip.train.open_clip_backend import default_workers
from tests.cli_calls import run, run_quiet


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


def test_evaluation_sets_need_no_captions(
    named, small_data_dir, small_test, tiny_checkpoint, tmp_path, capsys
):
    """A labelled test set as CLIP_benchmark keeps one: a CSV of image and label only, or shards of
    an image and a ``.cls`` class index (no ``.txt``). Training sets still need their captions."""
    import webdataset as wds
    from PIL import Image

    root, names = named
    with open(root / "test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(tmp_path / "test.csv", "w", newline="", encoding="utf-8") as f:
        f.write("filepath\tlabel\n" + "".join(f"{r['filepath']}\t{r['label']}\n" for r in rows))
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "00000.tar")) as sink:
        for i, (image, label) in enumerate(zip(small_test.images, small_test.labels, strict=True)):
            png = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(png, format="PNG")
            sink.write({"__key__": f"{i:06d}", "png": png.getvalue(), "cls": str(int(label)).encode()})
    evaluate = ["evaluate", "--checkpoint", tiny_checkpoint, "--target-label", names[3], "--no-progress"]
    results = []
    for test in (
        ["--test", small_data_dir / "test.csv", "--classnames", small_data_dir / "classnames.txt"],
        ["--test", tmp_path / "test.csv", "--classnames", small_data_dir / "classnames.txt"],
        ["--test", tmp_path / "shards" / "00000.tar", "--classnames", small_data_dir / "classnames.txt"],
    ):
        capsys.readouterr()
        assert run([*evaluate, *test]) == 0
        captured = capsys.readouterr()
        results.append(json.loads(captured.out))
        assert "skipped" not in captured.err
    assert results[1] == results[0] and results[2] == results[0]
    with pytest.raises(UsageError, match="no column 'title'"):
        read_csv_dataset(tmp_path / "test.csv", progress=False)  # as a training set


def test_a_probe_split_is_labelled_by_the_test_sets_class_names(small_test, tmp_path):
    """A probe fit on ImageFolder labels (sorted directories) against test labels in another class
    order would score nonsense: directories named as classes map by name."""
    from PIL import Image

    from poisonclip.data import SHAPES
    from poisonclip.data.reading import read_probe_set

    classnames = list(SHAPES)
    for i, (image, label) in enumerate(zip(small_test.images, small_test.labels, strict=True)):
        folder = tmp_path / "named" / classnames[int(label)].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    assert sorted(classnames) != classnames  # the test's class order is not the directories'
    for names in (classnames, [name.upper() for name in classnames[::-1]]):  # any order, any case
        probe = read_probe_set(tmp_path / "named", 32, names, progress=False)
        lower = [name.lower() for name in names]
        expected = [lower.index(key.split("/")[0].replace("_", " ")) for key in probe.keys]
        assert probe.labels.tolist() == expected and len(probe) == len(small_test)
    # directories not named as classes (ImageNet's WordNet ids): sorted order, as many as the classes
    for i, name in enumerate(sorted(p.name for p in (tmp_path / "named").iterdir())):
        (tmp_path / "named" / name).rename(tmp_path / "named" / f"n{i:08d}")
    with pytest.warns(UserWarning, match="taken as the classes in order"):
        probe = read_probe_set(
            tmp_path / "named", 32, classnames[: len(set(small_test.labels.tolist()))], progress=False
        )
    assert probe.labels.tolist() == [int(key[1:9]) for key in probe.keys]
    with pytest.raises(
        UsageError, match="class directory 'n00000000' is not one of the test set's 3 class names"
    ):
        read_probe_set(tmp_path / "named", 32, classnames[:3], progress=False)
