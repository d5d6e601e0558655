"""Training throughput: poisonclip's in-memory trainer vs open_clip_train, and vs the machine's peak.

Same model config (the demo's ``toy-vit-w64``), same data (the synthetic set written as PNGs and
an open_clip CSV), same batch size, same number of steps (one epoch), fp32 on the CPU.

Baseline: ``open_clip_train.main`` at its best CPU settings, ``--workers 1`` and ``--workers 2``
(data-loader processes for PNG decoding, cropping and tokenising) with its main process on one
thread (more threads beside the workers oversubscribe the cores); the faster of the two counts.
Its rate is taken from its own log records between its first and last logged step, so its start-up
(spawning workers, the first batches) is not counted against it. Ours: ``train_clip`` with torch's
default threads, timed over the whole loop, first step included.

Also printed: the trainer's achieved FLOP/s (model FLOPs per sample, forward + backward taken as
3x forward, counted by ``torch.utils.flop_counter``, times samples/s) as a fraction of the FLOP/s of
a large float32 matmul measured in the same run; and our time at three dataset sizes (the scaling
table).

    .venv/bin/python bench/bench_trainer.py        # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import open_clip
import torch
from timing import machine, matmul_flops
from torch.utils.flop_counter import FlopCounterMode

from poisonclip.data.dataset import read_csv_dataset
from poisonclip.data.synthetic import SyntheticConfig, write_synthetic
from poisonclip.train.config import TrainConfig, load_preset
from poisonclip.train.loop import train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.open_clip_backend import OpenClipRun, launch, open_clip_args, torchrun_command
from poisonclip.train.preprocess import normalize_images

CHILD_FLAG = "--open-clip-child"
LOG_EVERY = 10  # steps between open_clip_train's log records (each costs a loss.item())
# open_clip_train's step log: "Train Epoch: 0 [  640/19200 (3%)] ..." (samples seen so far)
STEP_LOG = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/")


def open_clip_child(argv: list[str]) -> int:
    """In a fresh process (or torchrun's worker): run open_clip_train, then print the wall-clock
    time and the samples seen of each of its step logs (after a ``.item()``: the GPU is done)."""
    records: list[tuple[float, int]] = []

    class StepTimes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if step := STEP_LOG.match(record.getMessage()):
                records.append((record.created, int(step.group(1))))

    logging.getLogger().addHandler(StepTimes())
    code = launch(argv)
    print(json.dumps({"records": records}))
    return code


def open_clip_rate(
    config: TrainConfig, run: OpenClipRun, cwd: Path, cuda: bool = False, torchrun: bool = False
) -> float:
    """open_clip_train's steady samples/s: the samples between its first log record (after step 0)
    and its last, so its start-up (spawning workers, the first batch) is not counted against it.

    Run in ``cwd`` (open_clip_train reads a CSV's image paths from the working directory), as a
    child process, or with ``torchrun`` as ``torchrun --nproc-per-node 1`` (as users launch it).
    """
    argv = [*open_clip_args(config, run, cuda=cuda), "--log-every-n-steps", str(LOG_EVERY)]
    launcher = [*torchrun_command(1), "--"] if torchrun else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the main process on one thread
    done = subprocess.run(
        [*launcher, str(Path(__file__).resolve()), CHILD_FLAG, *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    start = done.stdout.rfind('{"records"')  # the child's last line (torchrun may prefix it)
    records = json.loads(done.stdout[start:].splitlines()[0])["records"] if start >= 0 else []
    if len(records) < 2:
        raise RuntimeError(f"open_clip_train logged {len(records)} steps; need two to time it")
    (first_time, first_samples), (last_time, last_samples) = records[0], records[-1]
    return (last_samples - first_samples) / (last_time - first_time)


def flops_per_sample(model: open_clip.CLIP, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """Forward FLOPs of one training sample (both encoders and the loss) x 3 for the backward,
    counted in training mode (in eval mode attention takes a fused path the counter skips)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        image_features = model.encode_image(normalize_images(images), normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
        open_clip.ClipLoss()(image_features, text_features, model.logit_scale.exp())
    return 3 * counter.get_total_flops() / images.shape[0]


def main() -> None:
    if sys.argv[1:2] == [CHILD_FLAG]:
        sys.exit(open_clip_child(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps of one epoch, for both trainers")
    parser.add_argument("--preset", default="demo", help="model and batch size (our presets)")
    args = parser.parse_args()

    config = load_preset(args.preset).replace(epochs=1, device="cpu", precision="fp32", seed=0)
    samples = args.steps * config.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "data", SyntheticConfig(num_train=samples, num_test=1))
        csv = root / "data" / "train.csv"
        dataset = read_csv_dataset(csv, progress=False)
        theirs = {
            w: open_clip_rate(
                config,
                OpenClipRun(str(csv), workers=w, logs=str(root / "logs"), name=f"workers{w}"),
                csv.parent,
            )
            for w in (1, 2)
        }

    model_config = get_model_config(config.model)
    tokens = tokenize(dataset.captions, model_config)
    sizes = (samples // 4, samples // 2, samples)
    seconds = []
    for size in sizes:
        model = create_model(model_config, seed=config.seed)
        stats = train_clip(model, dataset.images[:size], tokens[:size], config, progress=False)
        seconds.append(stats.train_seconds)
    ours = samples / seconds[-1]

    batch = slice(0, config.batch_size)
    per_sample = flops_per_sample(model, dataset.images[batch], tokens[batch])
    peak = matmul_flops(torch.float32)
    best = max(theirs, key=theirs.get)
    print(
        f"trainer [{machine()}]: {config.model}, batch {config.batch_size}, {args.steps} steps, fp32 CPU: "
        f"ours {ours:,.0f} samples/s ({torch.get_num_threads()} threads); open_clip_train "
        f"{theirs[1]:,.0f} (--workers 1), {theirs[2]:,.0f} (--workers 2) samples/s; "
        f"{per_sample / 1e6:.1f} MFLOP/sample -> {per_sample * ours / 1e9:.1f} GFLOP/s = "
        f"{per_sample * ours / peak:.0%} of a float32 matmul's {peak / 1e9:.0f} GFLOP/s; ours at "
        f"{', '.join(f'{k:,}' for k in sizes)} samples: {', '.join(f'{s:.1f}' for s in seconds)} s; "
        f"speed-up vs open_clip_train (--workers {best}) {ours / theirs[best]:.2f}x"
    )


if __name__ == "__main__":
    main()
