"""Model configs (open_clip's JSON schema) shipped in the package, and model construction."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import open_clip
import torch

from poisonclip.errors import UsageError


def list_model_configs() -> list[str]:
    folder = resources.files("poisonclip.train") / "model_configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def get_model_config(name: str) -> dict:
    """Resolve ``name``: one of ours, a JSON file path, or an open_clip built-in (``RN50``...)."""
    if name in list_model_configs():
        path = resources.files("poisonclip.train") / "model_configs" / f"{name}.json"
        return json.loads(path.read_text())
    if name.endswith(".json") and Path(name).is_file():
        config = json.loads(Path(name).read_text())
        return config.get("model_cfg", config)
    config = open_clip.get_model_config(name)
    if config is None:
        raise UsageError(
            f"unknown model config {name!r}; ours: {', '.join(list_model_configs())}, "
            "or any open_clip model name, or a path to a JSON config"
        )
    return config


def create_model(model_config: dict, seed: int = 0) -> open_clip.CLIP:
    """Build an ``open_clip.CLIP`` (or CustomTextCLIP) from a config dict, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = dict(model_config)
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**config)


def image_size_of(model_config: dict) -> int:
    size = model_config["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def context_length_of(model_config: dict) -> int:
    return model_config["text_cfg"].get("context_length", 77)


def tokenize(captions: list[str], model_config: dict) -> torch.Tensor:
    """int64 [N, context_length] token ids with open_clip's (offline, packaged) BPE tokenizer."""
    return open_clip.tokenize(captions, context_length=context_length_of(model_config))
