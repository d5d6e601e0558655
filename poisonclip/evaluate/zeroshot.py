"""Zero-shot classification with prompt-template ensembles (open_clip's classifier builder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import open_clip
import torch

from poisonclip.data.prompts import resolve_templates


def zero_shot_classifier(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: str | Sequence[str | Callable[[str], str]] = "synthetic",
    context_length: int = 77,
) -> torch.Tensor:
    """Class weights float32 [D, C]: the normalised mean of each class's normalised prompt embeddings."""
    if isinstance(templates, str):
        templates = resolve_templates(templates)
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
