"""The CLIP loss with each batch encoded shard by shard in single-thread workers: the trainer's
default on a multi-thread CPU (``cpu_shards``)."""

from __future__ import annotations

import torch

from poisonclip.train.config import TrainConfig
from poisonclip.train.objectives import Batch, ClipObjective, clip_loss_per_sample, encode_batch
from poisonclip.train.parallel import single_thread_pool


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

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        pieces = list(
            zip(batch.images.tensor_split(self.shards), batch.tokens.tensor_split(self.shards), strict=True)
        )
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
                return encode_batch(model, images, tokens)

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
