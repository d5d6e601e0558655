"""Training configuration: a frozen dataclass, filled from a named JSON preset and CLI overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from poisonclip.errors import UsageError
from poisonclip.keys import ADDED_LATER

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model. Defaults equal the ``demo`` preset."""

    model: str = "toy-vit-w64"  # a config in poisonclip/train/model_configs, open_clip name, or JSON path
    epochs: int = 10
    batch_size: int = 64  # global batch; the last partial batch of an epoch is dropped
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum SGD, the paper's choice)
    lr: float = 1e-3  # peak learning rate after warm-up
    weight_decay: float = 0.1  # not applied to gains, biases and logit_scale (as open_clip)
    momentum: float = 0.9  # SGD only
    warmup_fraction: float = 0.1  # linear warm-up over this fraction of steps, then cosine to 0
    seed: int = 0  # model initialisation and data order
    device: str = "auto"  # "auto" = cuda if available, else cpu
    precision: str = "auto"  # "auto" = bf16 autocast on CUDA, fp32 on CPU; fp16 adds loss scaling
    compile: bool = False  # torch.compile the loss computation (first steps pay for compiling)
    data_on_device: bool = True  # False: data stays in CPU memory, batches copied (pinned on CUDA)
    # Start from these weights instead of a fresh model: an open_clip pretrained tag of ``model``
    # (open_clip downloads it), or a weights file (open_clip's epoch_N.pt, a state dict, safetensors).
    pretrained: str | None = field(default=None, metadata={ADDED_LATER: True})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise UsageError("epochs must be >= 1 and batch_size >= 2")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise UsageError("need lr > 0, weight_decay >= 0 and warmup_fraction in [0, 1)")

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with ``changes`` applied; ``None`` values are ignored (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _shipped(folder: str) -> list[str]:
    """The names of the JSON files shipped in ``poisonclip/train/<folder>``."""
    files = (resources.files("poisonclip.train") / folder).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".json"))


def list_presets() -> list[str]:
    return _shipped("presets")


def list_model_configs() -> list[str]:
    """Our model configs (``model_configs/*.json``), listed without importing open_clip."""
    return _shipped("model_configs")


def load_preset(name_or_path: str) -> TrainConfig:
    """A TrainConfig from a preset name (``demo``, ``paper``, ``tiny``) or a JSON file path.

    Unknown keys are rejected; keys starting with ``_`` are comments.
    """
    path = Path(name_or_path)
    if name_or_path in list_presets():
        text = (resources.files("poisonclip.train") / "presets" / f"{name_or_path}.json").read_text()
    elif path.suffix == ".json" and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"preset {name_or_path}: cannot read it ({err})") from err
    else:
        raise UsageError(f"unknown preset {name_or_path!r}; available: {', '.join(list_presets())}")
    try:
        loaded = json.loads(text)
    except ValueError as err:
        raise UsageError(f"preset {name_or_path}: not JSON ({err})") from err
    if not isinstance(loaded, dict):
        raise UsageError(f"preset {name_or_path}: must be a JSON object, not {type(loaded).__name__}")
    values = {k: v for k, v in loaded.items() if not k.startswith("_")}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(values) - set(fields)):
        raise UsageError(f"preset {name_or_path!r}: unknown keys {unknown}")
    for name, value in values.items():
        if not _is_type_of(value, fields[name].default):
            raise UsageError(
                f"preset {name_or_path}: {name} must be like {fields[name].default!r}, got {value!r}"
            )
    return TrainConfig(**values)


def _is_type_of(value: object, default: object) -> bool:
    """Whether a JSON ``value`` fits a field whose default is ``default`` (``None``: a string)."""
    if default is None:
        return value is None or isinstance(value, str)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))
