"""S same-architecture CLIPs trained as one computation: weights stacked [S, ...], batched matmuls.

A data point of the paper is many independently initialised models, and the toy models are so
small that training them one at a time leaves a GPU idle (kernel launches, not arithmetic, bound a
step). Here every parameter of S ``open_clip.CLIP`` ViT models gets a leading model axis, each
linear layer becomes one batched matmul over the models, and attention runs on all S·B sequences
at once, so a step launches about as many kernels as one model's. Nothing mixes across the model
axis: the gradient of the summed loss w.r.t. model s's weights is model s's own, and AdamW acts
elementwise, so this equals S separate ``train_clip`` runs up to float rounding (each model keeps
its own seed's data order; tests/test_many.py checks the losses).

Supported (``groupable``): open_clip's plain ViT image tower (learnable positional embedding,
class-token pooling, ``ln_pre``, no patch dropout, layer scale or attentional pooler) and its text
transformer (argmax pooling), GELU, no logit bias: every config in poisonclip/train/model_configs.
``train_many`` trains other models separately.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, ResidualAttentionBlock, VisionTransformer

from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar
from poisonclip.train.config import TrainConfig
from poisonclip.train.loop import TrainStats, autocast_dtype, batch_to, resolve_device
from poisonclip.train.optim import lr_at, make_optimizer
from poisonclip.train.preprocess import image_stats, normalize_images

BLOCK = (  # parameters of one open_clip ResidualAttentionBlock
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)


def groupable(model: torch.nn.Module) -> bool:
    """Whether ``GroupedCLIP`` computes exactly what ``model`` computes (the supported subset;
    images standardised with OpenAI's mean and std, as every model trained from scratch)."""
    if type(model) is not open_clip.CLIP or type(model.visual) is not VisionTransformer:
        return False
    if image_stats(model) != image_stats():  # a pretrained start with its own mean and std
        return False
    visual = model.visual
    blocks = [*visual.transformer.resblocks, *model.transformer.resblocks]
    plain_blocks = all(
        type(b) is ResidualAttentionBlock
        and isinstance(b.ls_1, torch.nn.Identity)
        and isinstance(b.ls_2, torch.nn.Identity)
        and type(b.mlp.gelu) is torch.nn.GELU
        and b.mlp.gelu.approximate == "none"
        and not hasattr(b, "ln_1_kv")
        for b in blocks
    )
    expected = _parameter_names(len(visual.transformer.resblocks), len(model.transformer.resblocks))
    return (
        plain_blocks
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and not visual.final_ln_after_pool
        and isinstance(visual.patch_dropout, torch.nn.Identity)
        and type(visual.ln_pre) is LayerNorm
        and model.text_pool_type == "argmax"
        and model.logit_bias is None
        and {name for name, _ in model.named_parameters()} == expected
    )


def _parameter_names(vision_layers: int, text_layers: int) -> set[str]:
    def blocks(prefix: str, layers: int) -> set[str]:
        return {f"{prefix}.resblocks.{i}.{name}" for i in range(layers) for name in BLOCK}

    vision = {"conv1.weight", "class_embedding", "positional_embedding", "proj"}
    vision |= {f"{ln}.{p}" for ln in ("ln_pre", "ln_post") for p in ("weight", "bias")}
    text = {"token_embedding.weight", "positional_embedding", "text_projection", "logit_scale"}
    text |= {"ln_final.weight", "ln_final.bias"}
    return (
        {f"visual.{name}" for name in vision}
        | blocks("visual.transformer", vision_layers)
        | text
        | blocks("transformer", text_layers)
    )


class GroupedCLIP:
    """The parameters of S models stacked [S, ...] (leaves that require grad) and their forward."""

    def __init__(self, models: Sequence[open_clip.CLIP]):
        first = models[0]
        shapes = {name: p.shape for name, p in first.named_parameters()}
        for model in models:
            if not groupable(model) or {n: p.shape for n, p in model.named_parameters()} != shapes:
                raise ValueError("GroupedCLIP needs plain open_clip ViT CLIPs of one architecture")
        named = [dict(model.named_parameters()) for model in models]
        self.params = {
            name: torch.stack([params[name].detach() for params in named]).requires_grad_() for name in shapes
        }
        self.vision_layers = len(first.visual.transformer.resblocks)
        self.text_layers = len(first.transformer.resblocks)
        self.vision_heads = first.visual.transformer.resblocks[0].attn.num_heads
        self.text_heads = first.transformer.resblocks[0].attn.num_heads
        self.patch_size = first.visual.conv1.kernel_size[0]
        self.eps = first.visual.ln_pre.eps
        self.attn_mask = first.attn_mask  # [L, L] float, -inf above the diagonal (causal)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.params.items())

    def to(self, device: torch.device) -> GroupedCLIP:
        self.params = {n: p.detach().to(device).requires_grad_() for n, p in self.params.items()}
        self.attn_mask = self.attn_mask.to(device)
        return self

    def copy_to(self, models: Sequence[open_clip.CLIP]) -> None:
        """Write model s's trained weights into ``models[s]`` (on its device)."""
        with torch.no_grad():
            for s, model in enumerate(models):
                for name, param in model.named_parameters():
                    param.copy_(self.params[name][s])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm features [S, B, E] of standardised ``images`` float [S, B, 3, H, W]."""
        p, s, b = self.params, images.shape[0], images.shape[1]
        patches = F.unfold(images.flatten(0, 1), self.patch_size, stride=self.patch_size)  # [S·B, 3·P·P, G]
        patches = patches.transpose(1, 2).reshape(s, -1, patches.shape[1])  # [S, B·G, 3·P·P]
        x = torch.bmm(patches, p["visual.conv1.weight"].flatten(2).transpose(1, 2))  # [S, B·G, W]
        x = x.view(s, b, -1, x.shape[-1])  # [S, B, G, W], as open_clip's conv1 + reshape
        cls = p["visual.class_embedding"][:, None, None, :].expand(s, b, 1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=2) + p["visual.positional_embedding"][:, None].to(x.dtype)
        x = self._layer_norm(x, "visual.ln_pre")
        for i in range(self.vision_layers):
            x = self._block(x, f"visual.transformer.resblocks.{i}.", self.vision_heads, None)
        pooled = self._layer_norm(x, "visual.ln_post")[:, :, 0]  # [S, B, W]: the class token
        return F.normalize(torch.bmm(pooled, p["visual.proj"]), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm features [S, B, E] of ``tokens`` int64 [S, B, L]."""
        p, s, b = self.params, tokens.shape[0], tokens.shape[1]
        table = p["token_embedding.weight"]  # [S, V, W]
        offsets = torch.arange(s, device=tokens.device).view(s, 1, 1) * table.shape[1]
        x = F.embedding(tokens + offsets, table.flatten(0, 1))  # [S, B, L, W]: model s's own rows
        x = x + p["positional_embedding"][:, None]
        for i in range(self.text_layers):
            x = self._block(x, f"transformer.resblocks.{i}.", self.text_heads, self.attn_mask)
        x = self._layer_norm(x, "ln_final")
        eot = tokens.argmax(dim=-1)  # [S, B]: the end-of-text token has the largest id
        pooled = x.gather(2, eot[..., None, None].expand(s, b, 1, x.shape[-1])).squeeze(2)  # [S, B, W]
        return F.normalize(torch.bmm(pooled, p["text_projection"]), dim=-1)

    def _layer_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """LayerNorm of x [S, ..., W] with model s's own gain and bias."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        weight, bias = self.params[f"{name}.weight"].view(shape), self.params[f"{name}.bias"].view(shape)
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), weight).to(x.dtype)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x [S, M, in] @ weightᵀ + bias -> [S, M, out], one batched matmul over the models (under
        autocast in its lower precision, as nn.Linear)."""
        weight, bias = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        return torch.baddbmm(bias[:, None], x, weight.transpose(1, 2))

    def _block(self, x: torch.Tensor, prefix: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
        """open_clip's ResidualAttentionBlock on x [S, B, T, W] (nn.MultiheadAttention's math)."""
        s, b, t, w = x.shape
        p = self.params
        h = self._layer_norm(x, f"{prefix}ln_1").view(s, b * t, w)
        qkv = torch.baddbmm(
            p[f"{prefix}attn.in_proj_bias"][:, None], h, p[f"{prefix}attn.in_proj_weight"].transpose(1, 2)
        )  # [S, B·T, 3W]
        q, k, v = qkv.view(s * b, t, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # [S·B, H, T, W/H]
        mask = mask.to(q.dtype) if mask is not None else None
        attention = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [S·B, H, T, W/H]
        attention = attention.transpose(1, 2).reshape(s, b * t, w)
        x = x + self._linear(attention, f"{prefix}attn.out_proj").view(s, b, t, w)
        h = self._layer_norm(x, f"{prefix}ln_2").view(s, b * t, w)
        h = self._linear(F.gelu(self._linear(h, f"{prefix}mlp.c_fc")), f"{prefix}mlp.c_proj")
        return x + h.view(s, b, t, w)


def grouped_clip_losses(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Each model's CLIP loss [S] (``open_clip.ClipLoss``) from features [S, B, E], scales [S]."""
    s, b, _ = image_features.shape
    logits = logit_scale.view(s, 1, 1) * torch.bmm(image_features, text_features.transpose(1, 2))
    labels = torch.arange(b, device=logits.device).repeat(s)  # [S·B]
    per_image = F.cross_entropy(logits.reshape(s * b, b), labels, reduction="none")
    per_text = F.cross_entropy(logits.transpose(1, 2).reshape(s * b, b), labels, reduction="none")
    return 0.5 * (per_image + per_text).view(s, b).mean(dim=1)


def train_grouped(
    models: Sequence[open_clip.CLIP],
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    configs: Sequence[TrainConfig],
    progress: bool = True,
) -> list[TrainStats]:
    """Train ``models[s]`` in place on ``data[s]`` = (images uint8 [N, 3, H, W], tokens [N, L]) with
    ``configs[s]``, all S in one computation: as S ``train_clip`` runs with the CLIP loss.

    The configs may differ only in ``seed`` (each model's data order) and the datasets only in
    content, not size: every model takes the same steps with the same learning rates. With fp16
    the loss scale is shared: an overflow in one model skips the step for all.
    """
    config = configs[0]
    if any(c.replace(seed=config.seed) != config for c in configs):
        raise ValueError("grouped models may differ only in their seeds")
    n = data[0][0].shape[0]
    if any(images.shape[0] != n for images, _ in data):
        raise ValueError("grouped models need datasets of one size")
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size {config.batch_size} is larger than the dataset ({n})")
    total_steps = steps_per_epoch * config.epochs
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(config.precision, device)
    if config.data_on_device:
        data = [(images.to(device), tokens.to(device)) for images, tokens in data]

    group = GroupedCLIP(models).to(device)
    optimizer = make_optimizer(group.named_parameters(), config, model_axes=1)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    forward = torch.compile(_forward) if config.compile else _forward
    orders = [torch.Generator().manual_seed(c.seed) for c in configs]
    bar = progress_bar(total=total_steps, desc=f"train x{len(models)}", unit="step", disable=not progress)
    start, losses = time.perf_counter(), torch.full((len(models),), float("nan"))

    for step in range(total_steps):
        position = step % steps_per_epoch
        if position == 0:
            perms = [torch.randperm(n, generator=order) for order in orders]
        batches = [perm[position * config.batch_size :][: config.batch_size] for perm in perms]
        rows = [batch_to(device, ids, *pair) for ids, pair in zip(batches, data, strict=True)]
        images = torch.stack([image_rows for image_rows, _ in rows])  # [S, B, 3, H, W]
        tokens = torch.stack([token_rows for _, token_rows in rows])  # [S, B, L]
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr_at(step, total_steps, config)

        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            step_losses = forward(group, images, tokens)  # [S]

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(step_losses.sum()).backward()  # the sum: each model gets its own gradient
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # as CLIP: temperature at most 100
            group.params["logit_scale"].clamp_(0, math.log(100))

        if step % 10 == 0 or step == total_steps - 1:
            losses = step_losses.detach().float().cpu()
            rate = (step + 1) * config.batch_size * len(models) / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{losses.mean():.3f}", samples_s=f"{rate:,.0f}")
        bar.update()
    bar.close()

    seconds = time.perf_counter() - start
    group.copy_to(models)
    samples = total_steps * config.batch_size
    return [
        TrainStats(
            steps=total_steps,
            samples_seen=samples,
            train_seconds=seconds,  # the group's wall time, shared by its models
            samples_per_second=samples / seconds,
            final_loss=losses[s].item(),
            final_logit_scale=model.logit_scale.detach().exp().item(),
        )
        for s, model in enumerate(models)
    ]


def _forward(group: GroupedCLIP, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Each model's CLIP loss [S] on its batch: ``images`` uint8 [S, B, 3, H, W], ``tokens`` [S, B, L]."""
    image_features = group.encode_image(normalize_images(images.flatten(0, 1)).view(images.shape))
    text_features = group.encode_text(tokens)
    return grouped_clip_losses(image_features, text_features, group.params["logit_scale"].exp())
