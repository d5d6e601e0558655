"""The in-memory trainer: pre-decoded uint8 images and pre-tokenised captions, one visible loop.

No data loader: the whole (small) dataset is a uint8 tensor, so a step is an index, a float
conversion and a forward/backward pass. This is what makes many small sweep trials cheap.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import open_clip
import torch
import torch.nn.functional as F

from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar
from poisonclip.train.config import TrainConfig
from poisonclip.train.parallel import single_thread_pool, torch_threads

IMAGE_MEAN = open_clip.OPENAI_DATASET_MEAN
IMAGE_STD = open_clip.OPENAI_DATASET_STD


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


ImageStats = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std) per channel


def _per_channel(value: float | Sequence[float]) -> tuple[float, float, float]:
    values = (value,) * 3 if isinstance(value, int | float) else tuple(value)
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise UsageError(f"image mean and std need 1 or 3 values (one per channel), got {list(values)}")
    return tuple(float(v) for v in values)


def image_stats(model: torch.nn.Module | None = None) -> ImageStats:
    """(mean, std) that ``model``'s images are standardised with: its visual tower's
    ``preprocess_cfg``, as open_clip records it (loaded from a checkpoint's config, or set by
    ``set_image_stats`` for a pretrained start), else OpenAI's (every model trained from scratch)."""
    cfg = getattr(getattr(model, "visual", model), "preprocess_cfg", None) if model is not None else None
    if not isinstance(cfg, dict) or cfg.get("mean") is None or cfg.get("std") is None:
        return _per_channel(IMAGE_MEAN), _per_channel(IMAGE_STD)
    return _per_channel(cfg["mean"]), _per_channel(cfg["std"])


def set_image_stats(model: torch.nn.Module, stats: ImageStats | None) -> None:
    """Record on ``model`` the (mean, std) its images are standardised with (``None``: OpenAI's),
    where open_clip keeps them: training, evaluation and saved checkpoints then use them."""
    if stats is None:
        return
    module = getattr(model, "visual", model)
    cfg = dict(getattr(module, "preprocess_cfg", None) or {})
    cfg.update(mean=_per_channel(stats[0]), std=_per_channel(stats[1]))
    open_clip.set_model_preprocess_cfg(model, cfg)


def pretrained_image_stats(model_name: str, pretrained: str | None) -> ImageStats | None:
    """The (mean, std) that ``pretrained``'s weights were trained with, ``None`` where unknown (or
    no ``pretrained``): an open_clip tag's pretrained config (``open_clip.get_pretrained_cfg``, e.g.
    SigLIP's 0.5/0.5), or for a weights file the ``preprocess_cfg`` of the ``open_clip_config.json``
    beside it (a poisonclip checkpoint's, or an open_clip model directory's). Nothing is
    downloaded."""
    if not pretrained:
        return None
    path = Path(pretrained)
    if path.is_file():
        try:
            cfg = json.loads((path.parent / "open_clip_config.json").read_text(encoding="utf-8"))
            cfg = cfg.get("preprocess_cfg") or {}
        except (OSError, ValueError, AttributeError):  # none there, or not an open_clip config
            return None
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    if not isinstance(cfg, dict) or cfg.get("mean") is None or cfg.get("std") is None:
        return None
    return _per_channel(cfg["mean"]), _per_channel(cfg["std"])


def normalize_images(images: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, H, W], scaled to [0, 1] and standardised with
    ``model``'s mean and std (``image_stats``; without a model, OpenAI's)."""
    mean, std = image_stats(model)
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def clip_loss_per_sample(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE per sample [B]; its mean is ``open_clip.ClipLoss``.

    ``image_features`` and ``text_features`` [B, D], unit norm; sample i's positive is pair i and
    its negatives are the batch's other pairs: ½[CE(image_i → texts) + CE(text_i → images)].
    """
    logits = logit_scale * image_features @ text_features.T  # [B, B]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (
        F.cross_entropy(logits, labels, reduction="none")
        + F.cross_entropy(logits.T, labels, reduction="none")
    )


class Objective(Protocol):
    """What the loop minimises: per-sample losses [B] of a batch (defenses plug in their own)."""

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        """Called before each epoch with the whole training set (e.g. to re-split it)."""

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        epoch: int,
    ) -> torch.Tensor:
        """Losses [B] for ``images`` uint8 [B, 3, H, W], ``tokens`` [B, L], sample ids [B]."""


class ClipObjective:
    """The plain CLIP loss on each batch: the default objective."""

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        pass

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        epoch: int,
    ) -> torch.Tensor:
        image_features = model.encode_image(normalize_images(images, model), normalize=True)
        text_features = model.encode_text(tokens, normalize=True)  # [B, D] each
        return clip_loss_per_sample(image_features, text_features, model.logit_scale.exp())


class ShardedClipObjective(ClipObjective):
    """The CLIP loss with each batch split over single-thread worker threads: ``train_clip``'s
    default on a CPU where torch has several threads (``cpu_shards``).

    On an idle 2-core CPU this trains as fast as torch's two threads inside each op (1.5x one
    thread), but on a busy one every op split over threads waits for the scheduler (steps 5-15x
    slower at load 5-6) while whole shards keep going. Each worker encodes its slice and later
    backpropagates through it (torch releases the GIL inside ops); the loss needs every pair of
    the batch and runs on the gathered features. Gradients are summed over shards in shard order,
    so runs repeat exactly; they equal the unsharded gradient up to float rounding.
    """

    def __init__(self, shards: int):
        self.shards = shards
        self.pool = single_thread_pool(shards)

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        epoch: int,
    ) -> torch.Tensor:
        pieces = list(zip(images.tensor_split(self.shards), tokens.tensor_split(self.shards), strict=True))
        image_features, text_features = _ShardedEncode.apply(model.logit_scale, model, pieces, self.pool)
        return clip_loss_per_sample(image_features, text_features, model.logit_scale.exp())


class _ShardedEncode(torch.autograd.Function):
    """Unit-norm features [B, D] (image, text) of a batch encoded shard by shard in ``pool``; the
    backward pass backpropagates each shard in the pool too and sets the parameters' ``.grad``.

    ``anchor`` (any parameter) only puts this function into the autograd graph.
    """

    @staticmethod
    def forward(ctx, anchor, model, pieces, pool):
        amp = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")  # thread-local state

        def encode(piece: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            images, tokens = piece
            with torch.enable_grad(), torch.autocast("cpu", enabled=amp[0], dtype=amp[1]):
                return (
                    model.encode_image(normalize_images(images, model), normalize=True),
                    model.encode_text(tokens, normalize=True),
                )

        ctx.outputs = list(pool.map(encode, pieces))
        ctx.model, ctx.pool = model, pool
        return tuple(torch.cat([out[i] for out in ctx.outputs]).detach() for i in range(2))

    @staticmethod
    def backward(ctx, grad_image, grad_text):
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        sizes = [out[0].shape[0] for out in ctx.outputs]

        def backprop(outputs, grad_image, grad_text):
            return torch.autograd.grad(outputs, params, (grad_image, grad_text), allow_unused=True)

        shard_grads = ctx.pool.map(backprop, ctx.outputs, grad_image.split(sizes), grad_text.split(sizes))
        for param, grads in zip(params, zip(*shard_grads, strict=True), strict=True):
            present = [g for g in grads if g is not None]
            if present:
                total = sum(present[1:], present[0])
                param.grad = total if param.grad is None else param.grad + total
        return None, None, None, None


def cpu_shards(device: torch.device, config: TrainConfig) -> int:
    """How many single-thread workers share each batch of the default CLIP loss: on a CPU, one per
    torch thread (1: no sharding; not under ``compile``, which traces the plain objective)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or config.compile or config.batch_size < 2 * threads:
        return 1
    return threads


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


def make_optimizer(
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    config: TrainConfig,
    model_axes: int = 0,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
) -> torch.optim.Optimizer:
    """The configured optimizer over ``model.named_parameters()``; ``model_axes`` leading axes of
    each parameter index models (1 for ``GroupedCLIP``'s stacked weights), not weights. ``betas``
    and ``eps`` (AdamW only): open_clip's defaults; the defenses' official code uses (0.9, 0.999)
    and 1e-8."""

    # As open_clip: no weight decay on gains, biases and the temperature.
    def no_decay(name: str, p: torch.Tensor) -> bool:
        return (
            p.ndim - model_axes < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        )

    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        {
            "params": [p for n, p in named if not no_decay(n, p)],
            "weight_decay": config.weight_decay,
        },
    ]
    # fused: one kernel over all parameters; 9x faster steps on the CPU for the demo model, whose
    # 3.2M-parameter token embedding otherwise dominates small-batch steps.
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, fused=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=eps, fused=True)


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    warmup = int(config.warmup_fraction * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


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
        batch = ids.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule(step, total_steps)

        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = compute_losses(model, *batch_to(device, ids, images, tokens), batch, epoch)  # [B]
            loss = losses.mean()

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # as CLIP: temperature at most 100
            model.logit_scale.clamp_(0, math.log(100))
        if on_batch is not None:
            on_batch(epoch, batch, losses.detach())
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
