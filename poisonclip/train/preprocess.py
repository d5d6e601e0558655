"""How images are standardised for a model: its per-channel mean and std, kept where open_clip
keeps them (the visual tower's ``preprocess_cfg``), and the uint8 -> float conversion."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch

from poisonclip.errors import UsageError

IMAGE_MEAN = open_clip.OPENAI_DATASET_MEAN
IMAGE_STD = open_clip.OPENAI_DATASET_STD

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
