"""Zero-shot classification with prompt-template ensembles (open_clip's classifier builder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import open_clip
import torch

from poisonclip.data.prompts import resolve_templates

if TYPE_CHECKING:
    from poisonclip.train.model import Tokenizer


def zero_shot_classifier(
    model: torch.nn.Module,
    classnames: Sequence[str],
    templates: str | Sequence[str | Callable[[str], str]] = "openai",
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """Class weights float32 [D, C]: the normalised mean of each class's normalised prompt embeddings.

    ``templates``: a set name (``openai``: CLIP's 80 ImageNet prompts) or a file, or the prompts;
    ``tokenizer``: the model's (``poisonclip.train.model.tokenizer_for``), by default CLIP's BPE at
    77 tokens (``open_clip.tokenize``)."""
    if isinstance(templates, str):
        templates = resolve_templates(templates)
    device = next(model.parameters()).device
    with torch.inference_mode():
        weights = open_clip.build_zero_shot_classifier(
            model,
            tokenizer or open_clip.tokenize,
            list(classnames),
            list(templates),
            num_classes_per_batch=None,
            device=device,
        )
    return weights.float().cpu()


def zero_shot_predict(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Predicted class int64 [N] for ``image_features`` [N, D] and ``classifier`` [D, C]."""
    return (image_features @ classifier).argmax(dim=1)
