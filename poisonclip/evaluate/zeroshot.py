"""Zero-shot classification with prompt-template ensembles (open_clip's classifier builder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import open_clip
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from poisonclip.errors import UsageError

# Prompts for the synthetic shapes. Unlike the training captions they never name a colour, as
# CLIP's ImageNet prompts never describe the photo's content beyond the class.
SYNTHETIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "a {} shape.",
    "an image of a {}.",
    "a picture of the {}.",
    "a small {}.",
    "a large {}.",
    "a {} icon.",
    "clip art of a {}.",
    "a {} on a dark background.",
)

TEMPLATE_SETS: dict[str, Sequence[str | Callable[[str], str]]] = {
    "synthetic": SYNTHETIC_TEMPLATES,
    "openai": OPENAI_IMAGENET_TEMPLATES,  # CLIP's 80 ImageNet prompts
}

__all__ = ["IMAGENET_CLASSNAMES", "TEMPLATE_SETS", "zero_shot_classifier", "zero_shot_predict"]


def zero_shot_classifier(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: str | Sequence[str | Callable[[str], str]] = "synthetic",
    context_length: int = 77,
) -> torch.Tensor:
    """Class weights float32 [D, C]: the normalised mean of each class's normalised prompt embeddings."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise UsageError(f"unknown template set {templates!r}; have {sorted(TEMPLATE_SETS)}")
        templates = TEMPLATE_SETS[templates]
    device = next(model.parameters()).device
    tokenizer = partial(open_clip.tokenize, context_length=context_length)
    with torch.inference_mode():
        weights = open_clip.build_zero_shot_classifier(
            model,
            tokenizer,
            list(classnames),
            list(templates),
            num_classes_per_batch=None,
            device=device,
        )
    return weights.float().cpu()


def zero_shot_predict(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Predicted class int64 [N] for ``image_features`` [N, D] and ``classifier`` [D, C]."""
    return (image_features @ classifier).argmax(dim=1)
