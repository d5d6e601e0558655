import json

import numpy as np
import pytest
import torch

from poisonclip.cli import build_parser, main


def run(args):
    return main([str(a) for a in args])


def test_help_works_for_every_command(capsys):
    for args in (
        [],
        ["demo"],
        ["data", "synth"],
        ["poison", "backdoor"],
        ["train"],
        ["evaluate"],
        ["list"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--help"])
        assert exit_info.value.code == 0
    assert "--patch-size" in capsys.readouterr().out  # options are explained


def test_demo_end_to_end_writes_metrics_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    code = run(["demo", "--out", out, "--num-train", 300, "--poison-count", 6, "--preset", "tiny",
                "--no-progress"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("clean", "backdoor"):
        for key in ("zero_shot_acc", "asr", "zscore", "natural_rate", "train_seconds"):
            assert isinstance(metrics[model][key], float)
    assert metrics["poison_count"] == 6
    assert metrics["poison_rate"] == pytest.approx(6 / 306)
    assert metrics["train_seconds"] > 0
    assert (out / "similarity_histograms.png").stat().st_size > 10_000
    assert len((out / "poisons" / "manifest.jsonl").read_text().splitlines()) == 6
    assert "backdoor z-score" in capsys.readouterr().out


def test_poison_train_evaluate_pipeline(small_data_dir, tmp_path, capsys):
    poisons = tmp_path / "poisons"
    ckpt = tmp_path / "ckpt"
    assert run(["poison", "backdoor", "--data", small_data_dir / "train.csv", "--out", poisons,
                "--poison-count", 8, "--target-label", "star"]) == 0  # fmt: skip
    assert run(["train", "--data", small_data_dir / "train.csv", poisons / "poisons.csv",
                "--out", ckpt, "--preset", "tiny", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert run(["evaluate", "--checkpoint", ckpt, "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt", "--target-label", "star",
                "--out", tmp_path / "m.json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "m.json").read_text())
    assert 0 <= printed["asr"] <= 1 and printed["num_test"] == 120
    # The default prompts are CLIP's 80 (not the synthetic shapes' ones, which must be asked for).
    clean = ["evaluate", "--checkpoint", ckpt, "--test", small_data_dir / "test.csv",
             "--classnames", small_data_dir / "classnames.txt", "--no-progress"]  # fmt: skip
    accuracy = {}
    for templates in (None, "openai", "synthetic"):
        assert run([*clean, *(["--templates", templates] if templates else [])]) == 0
        accuracy[templates] = json.loads(capsys.readouterr().out)["zero_shot_acc"]
    assert accuracy[None] == accuracy["openai"]
    assert run(["list", "models"]) == 0


def test_only_the_demo_assumes_a_target_label(small_data_dir, tmp_path, capsys):
    """The synthetic set's 'star' is the demo's default only: poisoning other data must name y'."""
    parser = build_parser()
    assert parser.parse_args(["demo"]).target_label == "star"
    assert parser.parse_args(["evaluate", "--checkpoint", "c", "--test", "t"]).target_label is None
    assert parser.parse_args(["evaluate", "--checkpoint", "c", "--test", "t"]).templates == "openai"
    out = tmp_path / "p"
    with pytest.raises(SystemExit) as exit_info:
        main(["poison", "backdoor", "--data", str(small_data_dir / "train.csv"), "--out", str(out),
              "--poison-count", "4"])  # fmt: skip
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [
        "poisonclip poison backdoor: error: the following arguments are required: --target-label"
    ]
    assert not out.exists()


def test_open_clip_workers_0_loads_data_in_the_training_process(small_data_dir, tmp_path, capsys):
    """--workers 0 is meaningful for open_clip_train (no loader processes) and passed on as such."""
    out = tmp_path / "ckpt"
    assert run(["train", "--backend", "open_clip", "--data", small_data_dir / "train.csv", "--out", out,
                "--preset", "tiny", "--device", "cpu", "--workers", 0, "--dry-run"]) == 0  # fmt: skip
    command = capsys.readouterr().out
    assert "--workers 0" in command and not out.exists()


def test_evaluate_a_targeted_attack(small_data_dir, tmp_path, capsys):
    from PIL import Image

    from poisonclip.data.dataset import read_classnames
    from poisonclip.evaluate.embeddings import encode_images
    from poisonclip.evaluate.zeroshot import zero_shot_classifier
    from poisonclip.train.checkpoint import load_checkpoint
    from poisonclip.train.model import tokenizer_for

    ckpt = tmp_path / "ckpt"
    assert run(["train", "--data", small_data_dir / "train.csv", "--out", ckpt, "--preset", "tiny",
                "--epochs", 1, "--no-progress"]) == 0  # fmt: skip
    image = small_data_dir / (small_data_dir / "test.csv").read_text().splitlines()[1].split("\t")[0]
    evaluate = ["evaluate", "--checkpoint", ckpt, "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt", "--target-image", image,
                "--templates", "synthetic"]  # fmt: skip
    capsys.readouterr()
    assert run([*evaluate, "--target-label", "heart"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # The rank again, by hand: classes scored above 'heart' for this image.
    model, config = load_checkpoint(ckpt)
    classnames = read_classnames(small_data_dir / "classnames.txt")
    classifier = zero_shot_classifier(model, classnames, "synthetic", tokenizer_for(config))
    pixels = torch.tensor(np.asarray(Image.open(image).convert("RGB"))).permute(2, 0, 1)[None]
    scores = (encode_images(model, pixels) @ classifier)[0]
    expected = int((scores > scores[classnames.index("heart")]).sum())
    assert metrics["zero_shot_rank"] == expected and metrics["zero_shot_success"] == (expected == 0)
    assert 0 <= metrics["probe_rank"] < len(classnames) and metrics["num_probe_fit"] > 0
    # x′ is a test image: left out of the probe's fit half and of the clean accuracy
    assert metrics["target_copies_left_out_of_test"] == 1
    assert metrics["num_probe_fit"] + metrics["num_eval"] == 119
    assert run([*evaluate, "--target-label", "zebra"]) == 2
    assert "not class names" in capsys.readouterr().err
    assert run(evaluate) == 2
    assert "--target-image needs --target-label" in capsys.readouterr().err
    assert run([*evaluate, "--target-label", "heart", "--probe-train", tmp_path]) == 2
    assert "drop --probe-train" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--patch-size", 33], "does not fit"),
        (["--target-label", "zebra"], "appears in no training caption"),
        (["--poison-count", 100_000], "exceeds"),
    ],
)
def test_poison_bad_inputs_exit_2_and_write_nothing(small_data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "p"
    args = ["poison", "backdoor", "--data", small_data_dir / "train.csv", "--out", out,
            "--poison-count", 5, "--target-label", "star", "--no-progress", *extra]  # fmt: skip
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_model_config_exits_2_and_writes_nothing(small_data_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    assert run(["train", "--data", small_data_dir / "train.csv", "--out", out,
                "--model", "no-such-model"]) == 2  # fmt: skip
    assert "unknown model config" in capsys.readouterr().err
    assert not out.exists()


def test_demo_bad_target_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["demo", "--out", out, "--target-label", "zebra", "--preset", "tiny"]) == 2
    assert not out.exists()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["poison", "backdoor", "--placement", "middle"])
    assert exit_info.value.code == 2


def test_gpu_path_flags_reach_the_train_config():
    from poisonclip.cli import build_parser
    from poisonclip.cli.options import train_config

    def config(*flags):
        return train_config(build_parser().parse_args(["train", "--data", "d.csv", "--out", "o", *flags]))

    default = config()
    assert default.compile is False and default.data_on_device is True  # the demo preset's
    chosen = config("--compile", "--no-data-on-device", "--precision", "bf16")
    assert chosen.compile is True and chosen.data_on_device is False and chosen.precision == "bf16"
