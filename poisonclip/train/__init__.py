"""Training: the in-memory trainer, one model from a config (``train_model``), model configs,
presets and checkpoints."""

from poisonclip.train.checkpoint import load_checkpoint, save_checkpoint
from poisonclip.train.config import TrainConfig, list_presets, load_preset
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats, normalize_images, resolve_device, train_clip
from poisonclip.train.many import train_many
from poisonclip.train.model import (
    create_model,
    get_model_config,
    image_size_of,
    list_model_configs,
    tokenize,
)

__all__ = [
    "TrainConfig",
    "TrainStats",
    "create_model",
    "get_model_config",
    "image_size_of",
    "list_model_configs",
    "list_presets",
    "load_checkpoint",
    "load_preset",
    "normalize_images",
    "resolve_device",
    "save_checkpoint",
    "tokenize",
    "train_clip",
    "train_many",
    "train_model",
]
