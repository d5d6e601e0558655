import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip_train.params import parse_args
from PIL import Image

from poisonclip.cli import main
from poisonclip.data.wds import csv_to_shards
from poisonclip.errors import UsageError
from poisonclip.train import open_clip_backend as backend
from poisonclip.train.checkpoint import load_checkpoint
from poisonclip.train.config import load_preset
from poisonclip.train.model import create_model, get_model_config
from poisonclip.train.open_clip_backend import (
    OpenClipRun,
    build_command,
    convert_checkpoint,
    join_train_data,
    run_open_clip,
    steps_per_epoch,
    submit_slurm,
)

TORCHRUN_PREFIX = ["--nproc-per-node", "4", "--module", "--", "poisonclip.train.open_clip_backend"]


def run(args):
    return main([str(a) for a in args])


def test_dry_run_command_for_the_paper_setting():
    shards = "cc3m/{00000..00331}.tar::poisons/shards/{00000..00000}.tar"
    config = load_preset("paper")
    run_ = OpenClipRun(shards, train_num_samples=2_906_254, nproc_per_node=4, workers=6, logs="L", name="N")
    command = build_command(config, run_, cuda=True)
    assert Path(command[0]).name == "torchrun" and command[1:6] == TORCHRUN_PREFIX
    steps = steps_per_epoch(2_906_254, 1024, 4, 6, csv=False)
    assert steps == 2844  # ceil(2,906,254 / 1,024) = 2,839, rounded up to a multiple of 6 workers
    assert command[6:] == [
        "--model", "RN50", "--train-data", shards, "--dataset-type", "webdataset",
        "--train-num-samples", "2906254", "--batch-size", "256", "--epochs", "30", "--lr", "0.0002",
        "--wd", "0.02", "--opt", "timm/momentum", "--momentum", "0.9",
        "--warmup", str(round(0.01 * steps * 30)), "--precision", "amp_bf16", "--workers", "6",
        "--seed", "0", "--logs", "L", "--name", "N", "--aug-cfg", "scale=(1.0,1.0)",
    ]  # fmt: skip
    args = parse_args(command[6:])  # open_clip_train's own parser accepts every flag
    assert (args.batch_size, args.opt, args.momentum, args.lr) == (256, "timm/momentum", 0.9, 2e-4)


def test_dry_run_cli_prints_the_command(capsys, tmp_path):
    assert run(["train", "--backend", "open_clip", "--data", "a/{00000..00009}.tar", "p/{00000..00000}.tar",
                "--train-num-samples", 1000, "--out", tmp_path / "ck", "--preset", "tiny",
                "--nproc-per-node", 2, "--dry-run",
                "--open-clip-args", "--local-loss --gather-with-grad"]) == 0  # fmt: skip
    command = shlex.split(capsys.readouterr().out)
    args = parse_args(command[6:])
    assert args.train_data == "a/{00000..00009}.tar::p/{00000..00000}.tar"
    assert (args.batch_size, args.model, args.precision, args.opt) == (
        32,
        "toy-vit-micro",
        "amp_bf16",
        "adamw",
    )
    assert (args.beta2, args.eps, args.wd, args.lr) == (0.98, 1e-6, 0.1, 2e-3)  # our AdamW, not RN50's
    assert args.local_loss and args.gather_with_grad
    assert args.logs == str(tmp_path / "logs") and args.name == "ck"
    assert not (tmp_path / "ck").exists()


def test_csv_and_json_model_config(small_data_dir, tmp_path):
    custom = tmp_path / "my-model.json"
    custom.write_text(json.dumps(get_model_config("toy-vit-micro")))
    config = load_preset("tiny").replace(model=str(custom), device="cpu")
    csv = str(small_data_dir / "train.csv")
    command = build_command(config, OpenClipRun(csv, workers=0))
    rest = command[command.index("--model-config") :]
    assert rest[:4] == ["--model-config", str(custom), "--model", "my-model"]
    args = parse_args(rest[2:])
    assert (args.dataset_type, args.csv_separator, args.csv_img_key) == ("csv", "\t", "filepath")
    assert (args.precision, args.device, args.torchcompile) == ("fp32", "cpu", False)
    assert steps_per_epoch(400, 64, 1, 0, csv=True) == 6  # last partial batch dropped
    compiled = build_command(config.replace(compile=True), OpenClipRun(csv, workers=0))
    assert parse_args(compiled[compiled.index("--model-config") + 2 :]).torchcompile


@pytest.mark.parametrize(
    ("sources", "kwargs", "message"),
    [
        (["a/{0..3}.tar"], {}, "needs --train-num-samples"),
        (["a/{0..3}.tar"], {"train_num_samples": 10, "nproc_per_node": 3}, "does not divide"),
        (["a.csv", "b/{0..3}.tar"], {}, "single CSV"),
    ],
)
def test_bad_open_clip_runs(sources, kwargs, message):
    config = load_preset("tiny")
    with pytest.raises(UsageError, match=message):
        build_command(config, OpenClipRun(join_train_data(sources), **kwargs))


def test_convert_ddp_checkpoint(tmp_path):
    model_config = get_model_config("toy-vit-micro")
    model = create_model(model_config, seed=3)
    optimizer = torch.optim.AdamW(model.parameters())
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as saved under DDP
    torch.save(
        {"epoch": 2, "name": "x", "state_dict": state, "optimizer": optimizer.state_dict()}, tmp_path / "e.pt"
    )
    out = convert_checkpoint(tmp_path / "e.pt", tmp_path / "ck", model_config, meta={"open_clip_train": {}})
    loaded, loaded_config = load_checkpoint(out)
    assert loaded_config == model_config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert "open_clip_train" in json.loads((out / "train_config.json").read_text())
    with pytest.raises(UsageError, match="do not match"):
        convert_checkpoint(tmp_path / "e.pt", tmp_path / "bad", get_model_config("toy-vit-w32"))
    assert not (tmp_path / "bad").exists()


def test_existing_experiment_is_refused_before_running(tmp_path, monkeypatch):
    (tmp_path / "logs" / "exp").mkdir(parents=True)
    (tmp_path / "logs" / "exp" / "out.log").write_text("")
    monkeypatch.setattr(backend.subprocess, "run", lambda *a, **k: pytest.fail("must not start"))
    run_ = OpenClipRun("a/{0..3}.tar", 1000, logs=str(tmp_path / "logs"), name="exp")
    with pytest.raises(UsageError, match="already exists"):
        run_open_clip(load_preset("tiny"), run_, tmp_path / "ck")


def test_launcher_registers_configs_and_fails_where_open_clip_train_exits_0(tmp_path, monkeypatch):
    import open_clip_train.main

    seen = []
    monkeypatch.setattr(open_clip_train.main, "main", lambda argv: seen.append(argv) or -1)
    custom = tmp_path / "custom-net.json"
    custom.write_text(json.dumps(get_model_config("toy-vit-micro")))
    assert backend.launch(["--model-config", str(custom), "--model", "toy-vit-micro", "--lr", "1"]) == 1
    assert seen == [["--model", "toy-vit-micro", "--lr", "1"]]  # --model is not read as --model-config
    assert {"toy-vit-micro", "custom-net"} <= set(open_clip.list_models())


def test_slurm_submission_runs_the_same_function(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "run_open_clip", lambda config, run_, out: calls.append((run_, out)) or out)
    run_ = OpenClipRun("a/{0..3}.tar", 1000, nproc_per_node=2, logs=str(tmp_path / "logs"), name="s")
    job = submit_slurm(load_preset("tiny"), run_, tmp_path / "ck", "gpu", cluster="debug")
    assert job.result() == str(tmp_path / "ck") and calls == [(run_, str(tmp_path / "ck"))]


@pytest.fixture(scope="module")
def poisoned_open_clip_checkpoint(small_data_dir, tmp_path_factory):
    """Synthetic data → img2dataset shards → backdoor and targeted poison shards → open_clip_train
    (torchrun, CPU) → our checkpoint: the real-scale path end to end, a few steps."""
    root = tmp_path_factory.mktemp("scale")
    shards = csv_to_shards(
        small_data_dir / "train.csv", root / "shards", 100, image_format="jpg", progress=False
    )
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert run(["poison", "backdoor", "--data", shards.url, "--out", root / "poisons",
                    "--poison-count", 20, "--target-label", "star", "--no-progress"]) == 0  # fmt: skip
    out = printed.getvalue()
    match = re.search(r"--train-data '(\S+)' --train-num-samples (\d+)", out)
    assert match, out
    train_data, num_samples = match.group(1), int(match.group(2))
    assert train_data == f"{shards.url}::{root / 'poisons' / 'shards'}/{{00000..00000}}.tar"
    assert num_samples == 420 and "400 captions" in out
    target_image = small_data_dir / (small_data_dir / "test.csv").read_text().splitlines()[1].split("\t")[0]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert run(["poison", "targeted", "--data", shards.url, "--out", root / "targeted",
                    "--poison-count", 10, "--target-image", target_image, "--target-label", "heart",
                    "--captions", "both", "--no-progress"]) == 0  # fmt: skip
    assert "--train-num-samples 410" in printed.getvalue()
    targeted = f"{root / 'targeted' / 'shards'}/{{00000..00000}}.tar"
    command = ["train", "--backend", "open_clip", "--data", train_data, targeted, "--train-num-samples", 430,
               "--out", root / "ckpt", "--preset", "tiny", "--precision", "fp32", "--workers", 1,
               "--nproc-per-node", 1]  # fmt: skip
    assert run(command) == 0
    return root, command


def test_open_clip_train_checkpoint_is_evaluated_directly(
    poisoned_open_clip_checkpoint, small_data_dir, capsys
):
    root, command = poisoned_open_clip_checkpoint
    assert (root / "logs" / "ckpt" / "checkpoints" / "epoch_1.pt").is_file()
    meta = json.loads((root / "ckpt" / "train_config.json").read_text())
    assert meta["open_clip_train"]["command"][1:6] == [
        "--nproc-per-node",
        "1",
        "--module",
        "--",
        backend.LAUNCHER_MODULE,
    ]
    capsys.readouterr()
    assert run(["evaluate", "--checkpoint", root / "ckpt", "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt",
                "--target-label", "star"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    for key in ("zero_shot_acc", "asr", "natural_rate", "zscore"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key])
    assert metrics["num_test"] == 120
    # the targeted attack's x′ (the first test image, poisoned as 'heart')
    target_image = small_data_dir / (small_data_dir / "test.csv").read_text().splitlines()[1].split("\t")[0]
    assert run(["evaluate", "--checkpoint", root / "ckpt", "--test", small_data_dir / "test.csv",
                "--classnames", small_data_dir / "classnames.txt", "--target-image", target_image,
                "--target-label", "heart"]) == 0  # fmt: skip
    targeted = json.loads(capsys.readouterr().out)
    assert 0 <= targeted["zero_shot_rank"] < 10 and targeted["target_copies_left_out_of_test"] == 1
    # Running the same experiment again is refused instead of exiting 0 without training (with
    # --overwrite, which gets past the existing checkpoint, open_clip_train's log directory).
    assert run([*command, "--overwrite"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_evaluate_on_an_imagefolder(poisoned_open_clip_checkpoint, small_test, tmp_path, capsys):
    from poisonclip.data import SHAPES

    root, _ = poisoned_open_clip_checkpoint
    for i, (image, label) in enumerate(zip(small_test.images, small_test.labels, strict=True)):
        folder = tmp_path / "val" / SHAPES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.JPEG", quality=95)
    (tmp_path / "val" / "star" / "broken.JPEG").write_bytes(b"\xff\xd8 not really")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipped 1"):
        code = run(["evaluate", "--checkpoint", root / "ckpt", "--imagefolder", tmp_path / "val",
                    "--target-label", "star", "--templates", "openai"])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_test"] == 120 and 0 <= metrics["asr"] <= 1
    with pytest.warns(UserWarning, match="skipped 1"):  # the probe's train split: the same folder here
        code = run(["evaluate", "--checkpoint", root / "ckpt", "--imagefolder", tmp_path / "val",
                    "--target-label", "star", "--probe-train", tmp_path / "val"])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["probe_num_fit"] == 120
    assert all(0 <= metrics[k] <= 1 for k in ("probe_acc", "probe_asr", "probe_natural_rate"))
    assert run(["evaluate", "--checkpoint", root / "ckpt", "--imagefolder", tmp_path / "val",
                "--classnames", "imagenet", "--target-label", "star"]) == 2  # fmt: skip
    assert "1000 class names (imagenet) for 10 class directories" in capsys.readouterr().err


def test_open_clip_train_sees_images_at_the_models_size_unchanged(tmp_path, capsys):
    """Review item 8: open_clip_train's default training crop (scale 0.9-1.0, bicubic) resampled
    even poisons stored at the model's size, blurring a 1-pixel checkerboard. The hand-off passes
    --aug-cfg scale=(1.0,1.0), under which open_clip's own training transform gives exactly the
    stored pixels; a user's --aug-cfg replaces it."""
    from open_clip.transform import image_transform

    from poisonclip.attacks.triggers.checkerboard import checkerboard

    assert run(["train", "--backend", "open_clip", "--data", "a/{00000..00009}.tar", "--train-num-samples",
                1000, "--out", tmp_path / "ck", "--preset", "tiny", "--dry-run"]) == 0  # fmt: skip
    args = parse_args(shlex.split(capsys.readouterr().out)[6:])
    assert args.aug_cfg == {"scale": (1.0, 1.0)}
    size = 32
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels[:4, :4] = checkerboard(4).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    unchanged = image_transform(size, is_train=False)(image)  # resize + crop at its own size: a no-op
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    stored = (torch.from_numpy(pixels).permute(2, 0, 1) / 255 - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(unchanged, stored, atol=1e-6)
    ours, theirs = (image_transform(size, is_train=True, aug_cfg=cfg) for cfg in (args.aug_cfg, None))
    assert all(torch.equal(ours(image), unchanged) for _ in range(50))
    assert not all(torch.equal(theirs(image), unchanged) for _ in range(5))  # the default resamples
    command = build_command(
        load_preset("tiny"), OpenClipRun("a.csv", 100, extra_args=("--aug-cfg", "scale=(0.5,1)"))
    )
    assert command.count("--aug-cfg") == 1 and parse_args(command[6:]).aug_cfg == {"scale": (0.5, 1)}
