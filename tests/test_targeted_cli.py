"""``poisonclip poison targeted`` on the command line: help, defaults, good and bad inputs."""

import numpy as np
import pytest
from PIL import Image

from poisonclip.attacks import read_poison_set
from poisonclip.attacks.dedup import exact_duplicate_filter
from poisonclip.attacks.targeted_spec import DEFAULT_NOISE_STD
from poisonclip.cli import build_parser, main
from tests.targeted_helpers import CLASSNAMES, other_label


def run(args):
    return main([str(a) for a in args])


def test_cli_help_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["poison", "targeted", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--target-index", "--captions", "--noise-std", "--perturb-captions"))
    flags = ["--data", "d", "--out", "o", "--target-index", "0", "--target-label", "y", "--poison-count", "1"]
    args = build_parser().parse_args(["poison", "targeted", *flags])
    assert args.noise_std == DEFAULT_NOISE_STD


def test_cli_poison_targeted_from_index_and_from_file(small_data_dir, small_test, tmp_path, capsys):
    index = 7
    label = other_label(small_test, index)
    out = tmp_path / "p"
    assert run(["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", out,
                "--target-index", index, "--target-split", small_data_dir / "test.csv",
                "--target-label", label, "--poison-count", 12, "--captions", "both",
                "--perturb-captions", "--seed", 2]) == 0  # fmt: skip
    assert "min PSNR" in capsys.readouterr().out
    poisons = read_poison_set(out)
    assert len(poisons) == 12 and len(exact_duplicate_filter(poisons.samples.images)) == 12
    assert {r["target_index"] for r in poisons.manifest} == {index}
    assert {r["target_true_label"] for r in poisons.manifest} == {CLASSNAMES[int(small_test.labels[index])]}

    image_file = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 48, 3), dtype=np.uint8)).save(image_file)
    out2 = tmp_path / "q"
    assert run(["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", out2,
                "--target-image", image_file, "--target-label", "star", "--poison-count", 3,
                "--noise-std", 0]) == 0  # fmt: skip
    back = read_poison_set(out2)
    assert back.samples.images.shape == (3, 3, 32, 32) and (back.samples.images == 0).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-index", 0, "--target-label", "zebra"], "appears in no training caption"),
        (["--target-index", 0, "--target-label", "OWN"], "already of class"),
        (["--target-index", 10_000, "--target-label", "star"], "outside the 120 samples"),
        (["--target-image", "missing.png", "--target-label", "star"], "cannot read target image"),
    ],
)
def test_cli_bad_inputs_exit_2_and_write_nothing(
    small_data_dir, small_test, tmp_path, capsys, extra, message
):
    extra = [CLASSNAMES[int(small_test.labels[0])] if a == "OWN" else a for a in extra]
    out = tmp_path / "p"
    args = ["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", out,
            "--target-split", small_data_dir / "test.csv", "--poison-count", 5, *extra]  # fmt: skip
    assert run(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]  # one line (CSV progress bars aside)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_target_index_needs_a_split(small_data_dir, tmp_path, capsys):
    assert run(["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", tmp_path / "p",
                "--target-index", 0, "--target-label", "star", "--poison-count", 2]) == 2  # fmt: skip
    assert "--target-split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # x' from a file and an index at once: argparse's error
        main(["poison", "targeted", "--target-image", "a.png", "--target-index", "0"])
    assert exit_info.value.code == 2
