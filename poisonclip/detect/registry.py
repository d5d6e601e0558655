"""Detectors of poisoned training pairs: a registry (timm-style), and what every detector sees.

A detector is one decorated function ``fn(inputs, **params) -> scores`` float64 [N], higher = more
suspicious, computed from a trained model's view of the training set only: it never sees which
pairs are poisons (the manifest is used only to score it, in ``poisonclip.detect.scoring``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from poisonclip.errors import UsageError
from poisonclip.registry import Registry

if TYPE_CHECKING:  # not at run time: listing the detectors loads no torch
    import torch

    from poisonclip.data.dataset import ImageTextDataset

# The built-in detectors and the module registering each, imported on a first lookup; listed as
# they are (tests/test_detect.py checks that the modules register exactly these).
BUILTIN_DETECTORS = {
    "clip-score": "poisonclip.detect.simple",
    "isolation-forest": "poisonclip.detect.simple",
    "loss-tracking": "poisonclip.detect.simple",
    "k-distance": "poisonclip.detect.knn",
    "slof": "poisonclip.detect.knn",
    "dao": "poisonclip.detect.knn",
    "lid": "poisonclip.detect.knn",
}
_DETECTORS: Registry[Callable[..., torch.Tensor]] = Registry("detector", BUILTIN_DETECTORS)


@dataclass(frozen=True)
class DetectorInputs:
    """A trained model's view of the N training pairs (images with their triggers, as trained on).

    Embeddings are raw (the encoders' outputs, not normalised), as Huang et al.'s detectors read
    them; a detector that wants unit norm normalises them itself."""

    image: torch.Tensor  # float32 [N, D], image embeddings
    text: torch.Tensor  # float32 [N, D], caption embeddings
    early_loss: torch.Tensor | None = None  # float64 [N]: per-sample loss over the first epochs

    def __post_init__(self) -> None:
        n = self.image.shape[0]
        if self.text.shape != self.image.shape or (
            self.early_loss is not None and self.early_loss.shape != (n,)
        ):
            raise ValueError("image and text embeddings [N, D] and early_loss [N] must agree")

    def __len__(self) -> int:
        return self.image.shape[0]


def embed_training_set(
    model: torch.nn.Module,
    dataset: ImageTextDataset,
    model_config: dict,
    early_loss: torch.Tensor | None = None,
) -> DetectorInputs:
    """Embed every training pair of ``dataset`` with ``model`` (no augmentation; raw features)."""
    from poisonclip.evaluate.embeddings import encode_images, encode_texts
    from poisonclip.train.model import tokenize

    model.eval()
    image = encode_images(model, dataset.images, normalize=False)
    text = encode_texts(model, tokenize(dataset.captions, model_config), normalize=False)
    return DetectorInputs(image, text, early_loss)


register_detector = _DETECTORS.register
list_detectors = _DETECTORS.names
get_detector = _DETECTORS.get


def detector_params(name: str) -> dict[str, object]:
    """The keyword parameters of detector ``name`` with their defaults."""
    signature = inspect.signature(get_detector(name))
    return {p.name: p.default for p in list(signature.parameters.values())[1:]}


def run_detector(name: str, inputs: DetectorInputs, **params: object) -> torch.Tensor:
    """Scores float64 [N] of detector ``name``; ``params`` it does not take are refused."""
    if unknown := sorted(set(params) - set(detector_params(name))):
        raise UsageError(
            f"detector {name!r} takes no parameter {unknown}; it takes {sorted(detector_params(name))}"
        )
    scores = get_detector(name)(inputs, **params).double()
    if scores.shape != (len(inputs),):
        raise AssertionError(f"detector {name!r} returned shape {tuple(scores.shape)}, not ({len(inputs)},)")
    return scores
