"""Handing a training run to open_clip_train: the run's settings from what a user gives, and the
torchrun command for another machine (``--dry-run``), whose weights files may not be here."""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import open_clip

from poisonclip.data.csv_format import DEFAULT_CSV, CsvFormat
from poisonclip.train.config import TrainConfig
from poisonclip.train.open_clip_backend import (
    OpenClipRun,
    build_command,
    default_workers,
    format_command,
    join_train_data,
)

# Weights files that a command printed for another machine takes as that machine's when not here.
PRETRAINED_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def open_clip_run(
    data: Sequence[str],
    out: str,
    *,
    train_num_samples: int | None = None,
    nproc_per_node: int = 1,
    workers: int | None = None,
    logs: str | None = None,
    name: str | None = None,
    csv: CsvFormat = DEFAULT_CSV,
    extra_args: str | None = None,
) -> OpenClipRun:
    """The open_clip_train run that trains on ``data`` into checkpoint ``out``. Defaults: workers
    from this machine's cores, logs in ``logs/`` beside ``out``, the experiment named as ``out``;
    ``extra_args`` (one shell-quoted string) go to open_clip_train as they are."""
    return OpenClipRun(
        train_data=join_train_data(data),
        train_num_samples=train_num_samples,
        nproc_per_node=nproc_per_node,
        workers=workers if workers is not None else default_workers(nproc_per_node),
        logs=logs or str(Path(out).parent / "logs"),
        name=name or Path(out).name,
        csv_separator=csv.separator,
        csv_image_column=csv.image_column,
        csv_caption_column=csv.caption_column,
        extra_args=tuple(shlex.split(extra_args or "")),
    )


def pretrained_elsewhere(model: str, pretrained: str | None) -> bool:
    """Whether ``pretrained`` names a weights file of another machine: a path that is not here,
    and not an open_clip pretrained tag of ``model``. Such a file is not checked here."""
    if not pretrained or Path(pretrained).exists():
        return False
    looks_like_path = (
        "/" in pretrained or os.sep in pretrained or Path(pretrained).suffix.lower() in (PRETRAINED_SUFFIXES)
    )
    return looks_like_path and not open_clip.get_pretrained_cfg(model, pretrained)


def dry_run_command(config: TrainConfig, run: OpenClipRun) -> str:
    """The torchrun command to run elsewhere, assuming GPUs there (auto precision = bf16) unless
    ``config.device`` is cpu; a ``pretrained`` file of that machine is passed on unchecked."""
    cuda = config.device != "cpu"
    if not pretrained_elsewhere(config.model, config.pretrained):
        return format_command(build_command(config, run, cuda=cuda))
    command = build_command(dataclasses.replace(config, pretrained=None), run, cuda=cuda)
    at = command.index("--precision") + 2
    command[at:at] = ["--pretrained", config.pretrained]
    return format_command(command)
