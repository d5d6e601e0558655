"""Hand-off to open_clip_train: the same TrainConfig, trained by torchrun on one or many GPUs.

``build_command`` turns a ``TrainConfig`` plus an ``OpenClipRun`` (data, processes, logs) into the
exact ``torchrun`` command; ``run_open_clip`` runs it and converts the final checkpoint into our
checkpoint directory, so ``poisonclip evaluate --checkpoint`` reads it directly; ``submit_slurm``
runs the same on a SLURM node through submitit. Run as a module (``python -m``, which torchrun
does in every process), this file registers our JSON model configs with open_clip and calls
``open_clip_train.main.main``: open_clip_train accepts no JSON path for ``--model``.

open_clip_train's traps, handled here:
* ``torchrun … script --logs X`` is read as torchrun's ``--logs-specs``: the script follows ``--``.
* "Experiment already exists" (``LOGS/NAME/out.log``) prints an error and exits 0: we refuse
  before starting, and the launcher exits non-zero should it happen anyway.
* ``--batch-size`` is per process, ours is global; ``--warmup`` is in steps, ours a fraction.
* timm optimizers (momentum SGD is ``--opt timm/momentum``) have no default ``--lr``: always passed.
* Checkpoints ``epoch_K.pt`` hold ``state_dict`` with a ``module.`` prefix under DDP.
* Its training transform crops at scale 0.9–1.0 and resamples every image, which blurs a
  pixel-sized trigger: ``--aug-cfg scale=(1.0,1.0)`` is passed unless the user gives an
  ``--aug-cfg`` of their own (``EXACT_RESIZE_AUG_CFG``).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from poisonclip.data.shard_urls import is_shard_url
from poisonclip.errors import UsageError
from poisonclip.train.checkpoint import save_checkpoint
from poisonclip.train.config import TrainConfig
from poisonclip.train.loop import resolve_device
from poisonclip.train.model import check_pretrained, create_model, get_model_config, list_model_configs
from poisonclip.train.preprocess import image_stats, pretrained_image_stats, set_image_stats

LAUNCHER_MODULE = "poisonclip.train.open_clip_backend"
# open_clip_train's training transform is RandomResizedCrop(scale=(0.9, 1.0), bicubic): even an
# image at the model's size is cropped and resampled, and a 1-pixel checkerboard trigger blurs.
# With scale (1, 1) no crop is ever drawn for a square image (torchvision falls back to the whole
# image) and an image at the model's size passes through unchanged; others are resized to it, as
# our in-memory trainer does (the trigger-resolution rule). A user's own --aug-cfg replaces this.
EXACT_RESIZE_AUG_CFG = "scale=(1.0,1.0)"


@dataclass(frozen=True)
class OpenClipRun:
    """What an open_clip_train run needs beyond the TrainConfig.

    ``train_data`` is one CSV or webdataset URLs joined with ``::`` (e.g. ``original::poisons``);
    ``train_num_samples`` is required for webdataset (img2dataset writes no ``sizes.json``);
    ``workers`` are data-loader processes per GPU; checkpoints land in ``logs/name/checkpoints``.
    """

    train_data: str
    train_num_samples: int | None = None
    nproc_per_node: int = 1
    workers: int = 4
    logs: str = "logs"
    name: str = "poisonclip"
    csv_separator: str = "\t"
    csv_image_column: str = "filepath"
    csv_caption_column: str = "title"
    extra_args: tuple[str, ...] = ()  # passed to open_clip_train as they are

    @property
    def is_csv(self) -> bool:
        return not is_shard_url(self.train_data)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.logs) / self.name


MAX_DEFAULT_WORKERS = 8  # decoding keeps up with a GPU's steps well before this


def default_workers(nproc_per_node: int) -> int:
    """Data-loader workers per process from the cores this process may use, shared by the
    processes: more workers than cores only oversubscribe them (DataLoader warns) and change the
    samples per epoch of webdataset (rounded to a multiple of the workers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores // max(1, nproc_per_node)))


def join_train_data(sources: Sequence[str]) -> str:
    """``--train-data`` for open_clip_train: webdataset URLs joined with ``::``, or a single CSV."""
    if all(is_shard_url(s) for s in sources):
        return "::".join(sources)
    if len(sources) == 1:
        return sources[0]
    raise UsageError(
        "open_clip_train reads webdataset URLs joined with '::' or a single CSV; for CSVs write one "
        "merged file (poisonclip poison backdoor --merged-csv PATH)"
    )


def steps_per_epoch(num_samples: int, batch_size: int, nproc: int, workers: int, csv: bool) -> int:
    """Optimizer steps per epoch as open_clip_train counts them (``batch_size`` global).

    Webdataset: batches rounded up, then up to a multiple of the workers (samples repeat);
    CSV: a DistributedSampler's share per process, last partial batch dropped.
    """
    per_process = batch_size // nproc
    if csv:
        return math.ceil(num_samples / nproc) // per_process
    workers = max(1, workers)
    return math.ceil(math.ceil(num_samples / batch_size) / workers) * workers


def open_clip_precision(precision: str, cuda: bool) -> str:
    """Our precision names in open_clip_train's: ``auto`` is bf16 autocast on CUDA, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if cuda else "fp32"
    return {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}[precision]


def open_clip_args(config: TrainConfig, run: OpenClipRun, cuda: bool | None = None) -> list[str]:
    """The ``open_clip_train.main`` argument list (plus ``--model-config`` for our launcher).

    ``cuda``: whether the run will have GPUs, for ``precision="auto"``; by default whether
    ``config.device`` resolves to CUDA here (pass True for a command meant for a GPU cluster).
    """
    if cuda is None:
        cuda = resolve_device(config.device).type == "cuda"
    get_model_config(config.model)  # unknown names fail here, not on the cluster
    if config.pretrained:  # and so do unknown tags and unloadable files; open_clip_train loads them
        check_pretrained(config.model, config.pretrained)
    if run.nproc_per_node < 1 or run.workers < 0:
        raise UsageError("need nproc_per_node >= 1 and workers >= 0")
    if config.batch_size % run.nproc_per_node:
        raise UsageError(
            f"batch size {config.batch_size} (global) does not divide over {run.nproc_per_node} processes"
        )
    num_samples = run.train_num_samples
    if num_samples is None and run.is_csv:
        num_samples = _count_csv_rows(Path(run.train_data))
    if num_samples is None:
        raise UsageError("webdataset training needs --train-num-samples (the total over all '::' sources)")
    steps = steps_per_epoch(num_samples, config.batch_size, run.nproc_per_node, run.workers, run.is_csv)
    if steps < 1:
        raise UsageError(f"{num_samples} samples make no batch of {config.batch_size}")
    model_args = ["--model", config.model]
    if config.model.endswith(".json") and config.model not in list_model_configs():
        model_args = ["--model-config", config.model, "--model", Path(config.model).stem]
    if config.optimizer == "sgd":
        optimizer = ["--opt", "timm/momentum", "--momentum", str(config.momentum)]
    else:  # our in-memory trainer's AdamW, whatever open_clip_train would pick for the model name
        optimizer = ["--opt", "adamw", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-06"]
    if run.is_csv:
        data = ["--dataset-type", "csv", "--csv-separator", run.csv_separator]
        data += ["--csv-img-key", run.csv_image_column, "--csv-caption-key", run.csv_caption_column]
    else:
        data = ["--dataset-type", "webdataset", "--train-num-samples", str(num_samples)]
    return [
        *model_args,
        "--train-data", run.train_data,
        *data,
        "--batch-size", str(config.batch_size // run.nproc_per_node),
        "--epochs", str(config.epochs),
        "--lr", repr(config.lr),
        "--wd", repr(config.weight_decay),
        *optimizer,
        "--warmup", str(round(config.warmup_fraction * steps * config.epochs)),
        "--precision", open_clip_precision(config.precision, cuda),
        *(["--pretrained", config.pretrained] if config.pretrained else []),
        *_image_stats_args(config),
        *(["--torchcompile"] if config.compile else []),
        *(["--device", config.device] if config.device != "auto" else []),
        "--workers", str(run.workers),
        "--seed", str(config.seed),
        "--logs", run.logs,
        "--name", run.name,
        *([] if _gives_aug_cfg(run.extra_args) else ["--aug-cfg", EXACT_RESIZE_AUG_CFG]),
        *run.extra_args,
    ]  # fmt: skip


def _image_stats_args(config: TrainConfig) -> list[str]:
    """``--image-mean``/``--image-std`` where a pretrained start has its own, other than OpenAI's
    (open_clip_train finds a tag's in its pretrained config itself, but for a weights file it
    would use OpenAI's)."""
    stats = pretrained_image_stats(config.model, config.pretrained)
    if stats is None or stats == image_stats():
        return []
    return ["--image-mean", *map(repr, stats[0]), "--image-std", *map(repr, stats[1])]


def _gives_aug_cfg(extra_args: Sequence[str]) -> bool:
    """Whether the user's own open_clip_train options set ``--aug-cfg`` (then theirs is used)."""
    return any(arg == "--aug-cfg" or arg.startswith("--aug-cfg=") for arg in extra_args)


def torchrun_command(nproc_per_node: int) -> list[str]:
    """``torchrun --nproc-per-node N``, with the torchrun beside this Python (its venv's) if any."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun) if torchrun.is_file() else "torchrun", "--nproc-per-node", str(nproc_per_node)]


def build_command(config: TrainConfig, run: OpenClipRun, cuda: bool | None = None) -> list[str]:
    """The exact ``torchrun`` command line (a list of arguments, not a shell string); ``cuda`` as
    in ``open_clip_args``."""
    return [
        *torchrun_command(run.nproc_per_node),
        "--module",
        "--",  # without it torchrun reads the script's --logs as its own --logs-specs
        LAUNCHER_MODULE,
        *open_clip_args(config, run, cuda),
    ]  # fmt: skip


def format_command(command: Sequence[str]) -> str:
    return shlex.join(command)


def final_checkpoint(run: OpenClipRun, epochs: int) -> Path:
    return run.experiment_dir / "checkpoints" / f"epoch_{epochs}.pt"


def run_open_clip(config: TrainConfig, run: OpenClipRun, out_dir: str | Path) -> Path:
    """Train with open_clip_train under torchrun, then convert its final checkpoint into ``out_dir``.

    Refuses (``UsageError``) an experiment name that already has logs: open_clip_train would
    print an error and exit 0 without training. ``OMP_NUM_THREADS`` defaults to the cores left
    per process after the data workers (oversubscribed threads made steps ~40x slower).
    """
    command = build_command(config, run)
    if (run.experiment_dir / "out.log").exists():
        raise UsageError(
            f"open_clip_train experiment {run.experiment_dir} already exists (it would exit without "
            "training); choose another --name or remove that directory"
        )
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        cores = os.cpu_count() or 1
        threads = (cores - run.workers * run.nproc_per_node) // run.nproc_per_node
        env["OMP_NUM_THREADS"] = str(max(1, threads))
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"open_clip_train failed (exit {result.returncode}); see {run.experiment_dir / 'out.log'}"
        )
    checkpoint = final_checkpoint(run, config.epochs)
    if not checkpoint.is_file():
        raise RuntimeError(f"open_clip_train finished but wrote no {checkpoint}")
    meta = {"open_clip_train": {"command": command, "checkpoint": str(checkpoint)}}
    return convert_checkpoint(checkpoint, out_dir, get_model_config(config.model), config, meta)


def convert_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    model_config: dict,
    train_config: TrainConfig | None = None,
    meta: dict | None = None,
) -> Path:
    """An open_clip_train ``epoch_K.pt`` as our checkpoint directory (safetensors + open_clip JSON).

    Loaded with ``weights_only=True`` (no pickled code runs); a DDP ``module.`` prefix is removed.
    """
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:  # torch raises both on missing or damaged files
        raise UsageError(f"{checkpoint}: cannot read the checkpoint: {err}") from err
    state = saved.get("state_dict", saved)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = create_model(model_config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UsageError(f"{checkpoint}: weights do not match the model config: {err}") from err
    if train_config is not None:  # the mean and std open_clip_train standardised the images with
        set_image_stats(model, pretrained_image_stats(train_config.model, train_config.pretrained))
    return save_checkpoint(out_dir, model, model_config, train_config, meta=meta)


def submit_slurm(
    config: TrainConfig,
    run: OpenClipRun,
    out_dir: str | Path,
    partition: str,
    timeout_min: int = 24 * 60,
    cpus_per_task: int | None = None,
    folder: str | Path | None = None,
    cluster: str | None = None,
):
    """Submit ``run_open_clip`` as a one-node SLURM job with ``run.nproc_per_node`` GPUs (submitit).

    Returns the submitit job (``job.job_id``; ``job.result()`` waits and gives the checkpoint
    directory). ``cluster`` is submitit's override ("debug" runs in this process, for tests).
    """
    import submitit  # optional heavy import: only for SLURM users

    open_clip_args(config, run, cuda=True)  # validate before anything is queued
    executor = submitit.AutoExecutor(
        folder=str(folder or run.experiment_dir.with_name(f"{run.name}-slurm")), cluster=cluster
    )
    executor.update_parameters(
        slurm_partition=partition,
        nodes=1,
        tasks_per_node=1,  # torchrun starts the per-GPU processes itself
        gpus_per_node=run.nproc_per_node,
        cpus_per_task=cpus_per_task or max(1, run.workers + 1) * run.nproc_per_node,
        timeout_min=timeout_min,
        name=run.name,
    )
    return executor.submit(run_open_clip, config, run, str(out_dir))


def _count_csv_rows(path: Path) -> int:
    if not path.is_file():
        raise UsageError(f"dataset file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return max(0, sum(1 for line in f if line.strip()) - 1)  # minus the header


def _model_config_dir() -> Path:
    return Path(str(resources.files("poisonclip.train") / "model_configs"))


def launch(argv: Sequence[str]) -> int:
    """Entry point in every torchrun process: register model configs, run open_clip_train."""
    import open_clip
    from open_clip_train.main import main as open_clip_train_main

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --model ≠ --model-config
    parser.add_argument("--model-config", action="append", default=[])
    ours, rest = parser.parse_known_args(argv)
    open_clip.add_model_config(_model_config_dir())
    for path in ours.model_config:
        open_clip.add_model_config(path)
    # open_clip_train returns -1 after printing an error ("Experiment already exists", a failed
    # remote sync) and its own script then exits 0; make such a run fail visibly.
    return 1 if open_clip_train_main(rest) == -1 else 0


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
