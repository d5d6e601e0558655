"""Batched embedding extraction under ``torch.inference_mode``.

Batches of 128: on the CPU the toy models' activations then stay in cache (2,000 images on 2
cores: 8,994 images/s at 128, 8,615 at 64, 8,052 at 256, 5,571 at 1,000), and on a multi-core CPU
each batch goes to its own single-thread worker (``map_slices``): a little faster than torch's
threads on an idle machine, and unlike them not slowed down several times on a busy one
(bench/bench_eval.py).
"""

from __future__ import annotations

import torch

from poisonclip.train.parallel import map_slices
from poisonclip.train.preprocess import normalize_images


def encode_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Image embeddings float32 [N, D] (on the CPU) of ``images`` uint8 [N, 3, H, W]; unit norm
    unless ``normalize`` is False (raw features, as Huang et al.'s detectors use them)."""
    device = torch.device(device or next(model.parameters()).device)

    def encode(start: int) -> torch.Tensor:
        with torch.inference_mode():
            batch = normalize_images(images[start : start + batch_size].to(device), model)
            return model.encode_image(batch, normalize=normalize).float().cpu()

    return torch.cat(map_slices(encode, range(0, images.shape[0], batch_size), device.type == "cpu"))


def encode_texts(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    batch_size: int = 256,
    normalize: bool = True,
) -> torch.Tensor:
    """Text embeddings float32 [N, D] (on the CPU) of ``tokens`` int64 [N, L]; unit norm unless
    ``normalize`` is False."""
    device = next(model.parameters()).device

    def encode(start: int) -> torch.Tensor:
        with torch.inference_mode():
            batch = tokens[start : start + batch_size].to(device)
            return model.encode_text(batch, normalize=normalize).float().cpu()

    return torch.cat(map_slices(encode, range(0, tokens.shape[0], batch_size), device.type == "cpu"))
