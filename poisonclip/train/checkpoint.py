"""Checkpoints as open_clip reads them: ``open_clip.create_model("local-dir:DIR")`` loads ours.

DIR/open_clip_model.safetensors   weights (safetensors: no pickle, safe to load)
DIR/open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...} (open_clip's schema;
                                  its mean and std standardise the images, in training and evaluation)
DIR/train_config.json             the resolved TrainConfig and training stats
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import save

from poisonclip.data.io import atomic_path
from poisonclip.errors import UsageError
from poisonclip.train.config import TrainConfig
from poisonclip.train.loop import TrainStats
from poisonclip.train.model import get_model_config, image_size_of
from poisonclip.train.preprocess import image_stats

WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"


def save_checkpoint(
    out_dir: str | Path,
    model: torch.nn.Module,
    model_config: dict,
    train_config: TrainConfig | None = None,
    stats: TrainStats | None = None,
    meta: dict | None = None,
) -> Path:
    """Write ``model`` as a checkpoint directory (atomically); ``meta`` joins ``train_config.json``.

    ``preprocess_cfg`` holds the mean and std the model's images are standardised with
    (``image_stats``: a pretrained start's own, else OpenAI's); loading and evaluating use them.
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    mean, std = image_stats(model)
    preprocess = {"size": image_size_of(model_config), "mean": mean, "std": std}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        # save() + a plain write: save_file creates the file 0600, unlike every other output
        (tmp / WEIGHTS_NAME).write_bytes(save(state))
        config = {"model_cfg": model_config, "preprocess_cfg": preprocess}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        record = {
            "train_config": dataclasses.asdict(train_config) if train_config else None,
            "stats": dataclasses.asdict(stats) if stats else None,
            **(meta or {}),
        }
        (tmp / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint directory written by ``save_checkpoint``. Returns (model, model_config)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise UsageError(f"{path}: not a poisonclip checkpoint (needs {CONFIG_NAME}, {WEIGHTS_NAME})")
    try:
        model_config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"]
    except (ValueError, KeyError, TypeError) as err:  # not JSON (or not UTF-8), or no model_cfg
        raise UsageError(f"{path / CONFIG_NAME}: not an open_clip config with a model_cfg ({err!r})") from err
    if not isinstance(model_config, dict):
        raise UsageError(f"{path / CONFIG_NAME}: model_cfg is not a JSON object")
    logging.getLogger().setLevel(logging.WARNING)  # open_clip logs every lookup at INFO
    try:
        model = open_clip.create_model(f"local-dir:{path}", device=device)
    except SafetensorError as err:  # truncated, empty or not a safetensors file
        raise UsageError(f"{path / WEIGHTS_NAME}: unreadable weights ({err})") from err
    except (RuntimeError, ValueError, TypeError, KeyError) as err:  # a config open_clip cannot build
        raise UsageError(f"{path}: weights do not match the model config: {err}") from err
    return model.eval(), model_config


def checkpoint_model(path: str | Path) -> str | None:
    """The ``TrainConfig.model`` that rebuilds a checkpoint's architecture: the name it was trained
    with (its ``train_config.json``) where that name still gives its config, else the absolute path
    of its config file; ``None`` if ``path`` is not a checkpoint (loading it says why)."""
    path = Path(path)
    try:
        found = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"]
        name = json.loads((path / "train_config.json").read_text(encoding="utf-8"))["train_config"]["model"]
    except (OSError, ValueError, KeyError, TypeError):  # no record of the name: the config file
        return str((path / CONFIG_NAME).resolve()) if (path / CONFIG_NAME).is_file() else None
    try:
        if get_model_config(name) == found:
            return name
    except UsageError:  # a config file that moved, or a name this version does not know
        pass
    return str((path / CONFIG_NAME).resolve())


def load_checkpoint_as(path: str | Path, model_config: dict) -> torch.nn.Module:
    """Load a checkpoint that must have the architecture ``model_config`` (to fine-tune or compare)."""
    model, found = load_checkpoint(path)
    if found != model_config:
        differences = sorted(_differences(found, model_config))
        raise UsageError(
            f"{path}: the checkpoint's architecture differs from the configured model "
            f"({'; '.join(differences[:3])}): the model option must name the checkpoint's architecture"
        )
    return model


def _differences(found: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: found vs wanted`` for every leaf where two (nested) configs disagree."""
    out = []
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} vs {b!r}")
    return out
