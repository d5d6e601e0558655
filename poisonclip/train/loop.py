"""The in-memory trainer: pre-decoded uint8 images and pre-tokenised captions, one visible loop.

No data loader: the whole (small) dataset is a uint8 tensor, so a step is an index, a float
conversion and a forward/backward pass. This is what makes many small sweep trials cheap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch

from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar
from poisonclip.train.config import TrainConfig
from poisonclip.train.objectives import Batch, ClipObjective, Objective
from poisonclip.train.optim import lr_at, make_optimizer
from poisonclip.train.parallel import torch_threads
from poisonclip.train.sharded import ShardedClipObjective, cpu_shards


@dataclass(frozen=True)
class TrainStats:
    steps: int
    samples_seen: int
    train_seconds: float
    samples_per_second: float
    final_loss: float
    final_logit_scale: float


def resolve_device(device: str) -> torch.device:
    """``auto``: cuda if available, else cpu; else the named device (an unknown name: UsageError).
    The device need not exist here (a command may be meant for a GPU host: ``check_device``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from err


def check_device(device: str) -> torch.device:
    """``resolve_device``, refusing a device this host does not have: call it before any work that
    will train or evaluate here, so that nothing fails after minutes (or a whole sweep) of it."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise UsageError(f"device {device!r}: this host has {count} CUDA device(s); use --device cpu")
    elif resolved.type != "cpu":
        raise UsageError(f"device {device!r}: poisonclip trains on cpu or cuda devices")
    return resolved


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto`` means bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# on_batch(epoch, sample ids [B], detached per-sample losses [B]): per-sample logging
BatchCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
# on_epoch_end(model, epoch, images, tokens): after each epoch's last step, with the training set
# (eval-mode passes over it, per-epoch metrics)
EpochCallback = Callable[[torch.nn.Module, int, torch.Tensor, torch.Tensor], None]


def batch_to(device: torch.device, ids: torch.Tensor, *data: torch.Tensor) -> list[torch.Tensor]:
    """Rows ``ids`` [B] (on the CPU) of each tensor in ``data`` [N, ...], on ``device``.

    Data kept in CPU memory for a GPU (``data_on_device=False``) is gathered into pinned memory,
    so the copy is asynchronous and overlaps the kernels still running from the previous step
    (torch's pinned allocator keeps a buffer until its copy has finished).
    """
    if all(x.device == device for x in data):
        return [x[ids.to(device)] for x in data]
    out = []
    for x in data:
        rows = torch.empty((len(ids), *x.shape[1:]), dtype=x.dtype, pin_memory=device.type == "cuda")
        out.append(torch.index_select(x, 0, ids, out=rows).to(device, non_blocking=True))
    return out


def train_clip(
    model: open_clip.CLIP,
    images: torch.Tensor,
    tokens: torch.Tensor,
    config: TrainConfig,
    progress: bool = True,
    objective: Objective | None = None,
    on_batch: BatchCallback | None = None,
    on_epoch_end: EpochCallback | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr_schedule: Callable[[int, int], float] | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``images`` uint8 [N, 3, H, W], ``tokens`` [N, L].

    ``objective`` (default: the CLIP loss) gives per-sample losses [B]; a step minimises their mean.
    ``on_batch`` sees each batch's sample ids (rows of ``images``) and its per-sample losses;
    ``on_epoch_end`` the model and the training set after each epoch (it may switch the model to
    eval mode; training resumes in train mode).
    ``optimizer`` (default: a fresh ``make_optimizer``) lets a caller keep one optimizer's state
    across several calls, and ``lr_schedule(step, total_steps)`` (default ``lr_at``) its own lr
    curve across them: defenses built of several passes (SafeCLIP) train as one run.
    Deterministic on the CPU for a given ``config.seed`` (data order) and model initialisation.
    """
    device = resolve_device(config.device)
    shards = cpu_shards(device, config) if objective is None else 1
    if shards > 1:  # this thread only waits on the workers: on one torch thread too (a second one
        # beside the workers made steps 15x slower on a busy 2-core CPU)
        with torch_threads(1):
            return train_clip(
                model, images, tokens, config, progress, ShardedClipObjective(shards),
                on_batch, on_epoch_end, optimizer, lr_schedule,
            )  # fmt: skip
    objective = objective or ClipObjective()
    compute_losses = torch.compile(objective.__call__) if config.compile else objective
    amp_dtype = autocast_dtype(config.precision, device)
    n = images.shape[0]
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size {config.batch_size} is larger than the dataset ({n})")
    total_steps = steps_per_epoch * config.epochs

    model.to(device).train()
    if config.data_on_device:  # small enough to live on the device
        images, tokens = images.to(device), tokens.to(device)
    optimizer = optimizer or make_optimizer(model.named_parameters(), config)
    lr_schedule = lr_schedule or (lambda step, total: lr_at(step, total, config))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    order = torch.Generator().manual_seed(config.seed)
    bar = progress_bar(total=total_steps, desc="train", unit="step", disable=not progress)
    start, loss_value = time.perf_counter(), float("nan")

    for step in range(total_steps):
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0:
            perm = torch.randperm(n, generator=order)
            objective.start_epoch(model, epoch, images, tokens)
        ids = perm[position * config.batch_size :][: config.batch_size]  # sample ids [B], on the CPU
        batch = Batch(*batch_to(device, ids, images, tokens), ids.to(device))
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule(step, total_steps)

        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = compute_losses(model, batch, epoch)  # [B]
            loss = losses.mean()

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # as CLIP: temperature at most 100
            model.logit_scale.clamp_(0, math.log(100))
        if on_batch is not None:
            on_batch(epoch, batch.ids, losses.detach())
        if on_epoch_end is not None and position == steps_per_epoch - 1:
            on_epoch_end(model, epoch, images, tokens)
            model.train()

        if step % 10 == 0 or step == total_steps - 1:
            loss_value = loss.item()
            rate = (step + 1) * config.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_value:.3f}", samples_s=f"{rate:,.0f}")
        bar.update()
    bar.close()

    seconds = time.perf_counter() - start
    model.eval()
    return TrainStats(
        steps=total_steps,
        samples_seen=total_steps * config.batch_size,
        train_seconds=seconds,
        samples_per_second=total_steps * config.batch_size / seconds,
        final_loss=loss_value,
        final_logit_scale=model.logit_scale.detach().exp().item(),
    )
