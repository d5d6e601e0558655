"""Every subcommand over bad input: exit code 2, one ``error:`` line, no traceback, nothing written.

``CASES`` (in ``tests/bad_input_cases.py``) is the table: add a row for a new bad input (or a new
subcommand: the coverage test fails until every subcommand has at least one). Each row is a command
line with ``{placeholders}`` for the prepared inputs in ``inputs`` below; it runs in an empty working
directory, and every file there and among the inputs must be unchanged afterwards.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sqlite3
from pathlib import Path

import open_clip
import pytest
from PIL import Image

import poisonclip.data.reading as reading_module
import poisonclip.train.model as model_module
from poisonclip.cli import build_parser, main
from tests.bad_input_cases import CASES
from tests.sweep_files import TINY


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_data_dir) -> dict[str, str]:
    """Every input the cases name: good ones (data, a checkpoint, a poison set) and broken ones."""
    root = tmp_path_factory.mktemp("inputs")
    assert main(["poison", "backdoor", "--data", str(small_data_dir / "train.csv"), "--out",
                 str(root / "poisons"), "--poison-count", "4", "--target-label", "star",
                 "--no-progress"]) == 0  # fmt: skip
    ckpt = root / "ckpt"
    assert main(["train", "--data", str(small_data_dir / "train.csv"), "--out", str(ckpt), "--preset",
                 "tiny", "--epochs", "1", "--no-progress"]) == 0  # fmt: skip
    weights = (ckpt / "open_clip_model.safetensors").read_bytes()
    broken = {
        "ckpt_truncated": ("open_clip_model.safetensors", weights[: len(weights) // 2]),
        "ckpt_zero": ("open_clip_model.safetensors", b""),
        "ckpt_garbage": ("open_clip_model.safetensors", bytes(range(256)) * 40),
        "ckpt_bad_json": ("open_clip_config.json", b"{not json"),
        "ckpt_no_model_cfg": ("open_clip_config.json", b'{"preprocess_cfg": {}}'),
    }
    paths = {}
    for name, (member, content) in broken.items():
        copy = root / name
        copy.mkdir()
        for f in ckpt.iterdir():
            (copy / f.name).write_bytes(content if f.name == member else f.read_bytes())
        paths[name] = copy
    image = next((small_data_dir / "images" / "test").iterdir())
    (root / "latin1.csv").write_bytes(f"filepath\ttitle\n{image}\ta café crème\n".encode("latin-1"))
    (root / "notes.txt").write_text("a user's file\n")
    Image.new("RGB", (48, 40)).save(root / "large.png")  # real data: images of several sizes
    (root / "mixed.csv").write_text(f"filepath\ttitle\n{image}\ta star\n{root / 'large.png'}\ta star\n")
    (root / "userdir").mkdir()
    (root / "userdir" / "thesis.tex").write_text("years of work\n")
    (root / "binary.toml").write_bytes(bytes(range(256)))
    (root / "empty.toml").write_text("")
    (root / "tiny.toml").write_text(TINY)
    (root / "cuda.toml").write_text(TINY.replace('preset = "tiny"', 'preset = "tiny"\ndevice = "cuda:99"'))
    (root / "manifest_no_key.jsonl").write_text('{"caption": "a star"}\n')
    (root / "manifest_bad.jsonl").write_text('{"poison_key": "poison/000000.png"\n')
    (root / "loss_bad.json").write_text("{truncated")
    (root / "bad.json").write_text("{not json")
    (root / "list.json").write_text("[1, 2]")
    (root / "no_vision.json").write_text('{"embed_dim": 16, "text_cfg": {"width": 16}}')
    (root / "preset_wrong_type.json").write_text('{"epochs": "ten"}')
    (root / "latin1_names.txt").write_bytes("circle\ncafé\n".encode("latin-1"))
    (root / "manifest_latin1.jsonl").write_bytes('{"poison_key": "café"}\n'.encode("latin-1"))
    (root / "zero.sqlite").write_bytes(b"")
    with sqlite3.connect(root / "foreign.sqlite") as db:
        db.execute("CREATE TABLE accounts (name TEXT)")
    paths |= {
        "data": small_data_dir,
        "train": small_data_dir / "train.csv",
        "test": small_data_dir / "test.csv",
        "classnames": small_data_dir / "classnames.txt",
        "image": image,
        "ckpt": ckpt,
        "poisons": root / "poisons",
        "latin1": root / "latin1.csv",
        "mixed": root / "mixed.csv",
        "file": root / "notes.txt",
        "userdir": root / "userdir",
        "binary": root / "binary.toml",
        "empty_toml": root / "empty.toml",
        "tiny_toml": root / "tiny.toml",
        "cuda_toml": root / "cuda.toml",
        "manifest_no_key": root / "manifest_no_key.jsonl",
        "manifest_bad": root / "manifest_bad.jsonl",
        "loss_bad": root / "loss_bad.json",
        "foreign_db": root / "foreign.sqlite",
        "bad_json": root / "bad.json",
        "list_json": root / "list.json",
        "no_vision_json": root / "no_vision.json",
        "preset_wrong_type": root / "preset_wrong_type.json",
        "latin1_names": root / "latin1_names.txt",
        "manifest_latin1": root / "manifest_latin1.jsonl",
        "zero_db": root / "zero.sqlite",
    }
    return {name: str(path) for name, path in paths.items()}


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and directory under ``roots``."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.stat()
            found[str(path)] = (stat.st_size if path.is_file() else -1, stat.st_mtime_ns)
    return found


def run_case(command: str, inputs: dict[str, str], tmp_path: Path, monkeypatch, capsys) -> str:
    """Run one case in an empty working directory; return its stderr after the common checks."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    watched = [work, Path(inputs["data"]), Path(inputs["ckpt"]).parent]
    before = snapshot(*watched)
    argv = shlex.split(command.format(**inputs))
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in (out + err).splitlines() if "error:" in line]
    assert code == 2, f"exit {code}; output:\n{out}{err}"
    assert len(errors) == 1 and re.match(r"poisonclip( [a-z]+)*: error: \S", errors[0]), errors
    assert snapshot(*watched) == before, "the command wrote or changed files"
    return errors[0]


@pytest.mark.parametrize("command", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(
    command, inputs, tmp_path, monkeypatch, capsys
):
    run_case(command, inputs, tmp_path, monkeypatch, capsys)


def subcommands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command path of the parser (``("poison", "backdoor")``, ``("train",)`` ...)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= subcommands(sub, (*prefix, name)) or {(*prefix, name): sub}
    return found


def test_every_subcommand_has_bad_input_cases():
    paths = subcommands(build_parser())
    covered = {tuple(shlex.split(command))[: len(path)] for _, command in CASES for path in paths}
    missing = [" ".join(path) for path in paths if path not in covered]
    assert not missing, f"add bad-input cases to CASES for: {missing}"


def test_every_output_option_is_checked_and_can_be_overwritten():
    """An option that names an output is declared to main's checks, and comes with --overwrite."""
    for path, parser in subcommands(build_parser()).items():
        declared = parser.get_default("outputs") or {}
        for action in parser._actions:
            if action.dest in ("out", "merged_csv"):
                assert action.dest in declared, f"{' '.join(path)}: {action.dest} is not checked"
        if declared:
            assert any(a.dest == "overwrite" for a in parser._actions), f"{' '.join(path)}: no --overwrite"


@pytest.mark.parametrize(
    "command",
    [
        "train --data {train} --out out --preset tiny --model RN50 --pretrained openai",
        "train --backend open_clip --data {train} --out out --preset tiny --model RN50 --pretrained openai",
        "defend cleanclip --pretrained openai --model RN50 --clean-data {train} --out out --preset tiny",
    ],
    ids=["train", "train-open-clip", "defend-cleanclip"],
)
def test_an_offline_pretrained_tag_is_one_error_line_before_any_work(
    command, inputs, tmp_path, monkeypatch, capsys
):
    """No network: open_clip's download fails (here: made to, nothing is downloaded in the tests)
    before any data is read or model built."""

    def no_network(cfg, *args, **kwargs):
        raise FileNotFoundError("Failed to download file (open_clip_pytorch_model.bin) for timm/x")

    def no_work(*args, **kwargs):
        raise AssertionError("work began before the download")

    monkeypatch.setattr(open_clip, "download_pretrained", no_network)
    monkeypatch.setattr(reading_module, "read_data", no_work)
    monkeypatch.setattr(model_module, "create_model", no_work)
    error = run_case(command, inputs, tmp_path, monkeypatch, capsys)
    assert "--pretrained openai: cannot download the weights of model 'RN50'" in error


@pytest.mark.parametrize("case", ["targeted-classnames-missing", "targeted-classnames-dir"])
def test_targeted_reads_the_classnames_file_it_is_given(case, inputs, tmp_path, monkeypatch, capsys):
    """Not skipped for the split's own classnames.txt (or none): the error names the file given."""
    assert "class-name file" in run_case(dict(CASES)[case], inputs, tmp_path, monkeypatch, capsys)
