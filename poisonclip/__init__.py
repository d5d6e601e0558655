"""poisonclip: poisoning and backdooring CLIP-style contrastive models (Carlini & Terzis, ICLR 2022).

Data flows one way: dataset → poison set → training → embeddings → metrics → results → figures.

The names below load on first use (PEP 562): ``import poisonclip`` imports neither torch, open_clip
nor scikit-learn, and no subpackage needs the package root (the layers: README's Layout).
"""

from __future__ import annotations

import importlib

from poisonclip._version import __version__ as __version__

# each name in __all__ -> the module that defines it (a subpackage: itself)
_SOURCES = {
    "TrainConfig": "poisonclip.train",
    "UsageError": "poisonclip.errors",
    "attacks": "poisonclip.attacks",
    "data": "poisonclip.data",
    "evaluate": "poisonclip.evaluate",
    "experiments": "poisonclip.experiments",
    "load_checkpoint": "poisonclip.train",
    "make_backdoor": "poisonclip.attacks",
    "make_synthetic": "poisonclip.data",
    "read_csv_dataset": "poisonclip.data",
    "train": "poisonclip.train",
    "train_clip": "poisonclip.train",
    "write_synthetic": "poisonclip.data",
}

__all__ = [
    "TrainConfig",
    "UsageError",
    "attacks",
    "data",
    "evaluate",
    "experiments",
    "load_checkpoint",
    "make_backdoor",
    "make_synthetic",
    "read_csv_dataset",
    "train",
    "train_clip",
    "write_synthetic",
]


def __getattr__(name: str) -> object:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_SOURCES[name])
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
