"""poisonclip: poisoning and backdooring CLIP-style contrastive models (Carlini & Terzis, ICLR 2022).

Data flows one way: dataset → poison set → training → embeddings → metrics → results → figures.

The names below load on first use (PEP 562): ``import poisonclip`` imports neither torch, open_clip
nor scikit-learn, and no subpackage needs the package root (the layers: README's Layout).
"""

from __future__ import annotations

from poisonclip._version import __version__ as __version__
from poisonclip.lazy import lazy_exports

# each module (a subpackage: itself) -> the names of __all__ it defines
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.attacks": ("attacks", "make_backdoor"),
        "poisonclip.data": ("data", "make_synthetic", "read_csv_dataset", "write_synthetic"),
        "poisonclip.errors": ("UsageError",),
        "poisonclip.evaluate": ("evaluate",),
        "poisonclip.experiments": ("experiments",),
        "poisonclip.train": ("TrainConfig", "load_checkpoint", "train", "train_clip"),
    },
)
