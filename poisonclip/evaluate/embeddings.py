"""Batched embedding extraction under ``torch.inference_mode``."""

from __future__ import annotations

import torch

from poisonclip.train.loop import normalize_images


def encode_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Unit-norm image embeddings float32 [N, D] (on the CPU) of ``images`` uint8 [N, 3, H, W]."""
    device = device or next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = normalize_images(images[start : start + batch_size].to(device))
            out.append(model.encode_image(batch, normalize=True).float().cpu())
    return torch.cat(out)


def encode_texts(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Unit-norm text embeddings float32 [N, D] (on the CPU) of ``tokens`` int64 [N, L]."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            out.append(model.encode_text(batch, normalize=True).float().cpu())
    return torch.cat(out)
