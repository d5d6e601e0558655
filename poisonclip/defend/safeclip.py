"""SafeCLIP (Yang et al., ICML'24): learn only from pairs that look safe; the rest in-modal only.

Phases, all ``train_clip`` with another objective (the epoch budget equals undefended training):

1. ``warmup_epochs`` of in-modal warm-up: image vs augmented image, caption vs augmented caption
   (CleanCLIP's in-modal loss), no cross-modal term, so poisoned pairs teach nothing yet;
2. one cross-modal epoch (CLIP loss on all pairs) at ``low_lr_factor`` × the recipe's lr;
3. the remaining epochs, each starting with a split on the image–caption cosine similarity of
   every pair under the current model. The first split fits a 2-component Gaussian mixture to the
   similarities and takes as safe the pairs whose probability of the high-similarity component
   exceeds ``first_threshold``; each later epoch the safe fraction grows by ``fraction_step``, up
   to ``max_fraction``. Safe pairs get the CLIP loss (among the batch's safe pairs), risky pairs
   only the in-modal loss (among the batch's risky pairs).

Toy adaptations, and why: one warm-up epoch (the toy trains 10 epochs in all, so the budget stays
that of undefended training); each phase restarts the lr schedule and AdamW's moments (phases are
separate ``train_clip`` calls rather than a copy of the loop); the mixture is scikit-learn's
``GaussianMixture`` on the 1-D similarities; every split takes the most similar pairs (that
posterior is monotone in the similarity where it matters, and ranking posteriors that all round to
1 would order pairs by floating-point noise). Each split costs one extra forward pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from poisonclip.defend.registry import DefenseContext, DefenseOutcome, register_defense
from poisonclip.errors import UsageError
from poisonclip.evaluate.embeddings import encode_images, encode_texts
from poisonclip.train.augment import CaptionAugment, ImageAugment
from poisonclip.train.loop import clip_loss_per_sample, train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.objectives import (
    CleanClipObjective,
    ImageAugmenter,
    TextAugmenter,
    Views,
    encode_views,
    inmodal_loss_per_sample,
)


@dataclass(frozen=True)
class SafeClipParams:
    warmup_epochs: int = 1  # in-modal only
    low_lr_factor: float = 0.1  # the one cross-modal epoch runs at this times the recipe's lr
    first_threshold: float = 0.9  # first split: safe = P(high-similarity component) above this
    fraction_step: float = 0.01  # the safe fraction grows by this each epoch ...
    max_fraction: float = 0.85  # ... up to this

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0 or not 0 < self.low_lr_factor <= 1:
            raise UsageError("safeclip needs warmup_epochs >= 0 and low_lr_factor in (0, 1]")
        if not 0 < self.first_threshold < 1 or self.fraction_step < 0 or not 0 < self.max_fraction <= 1:
            raise UsageError("safeclip needs first_threshold and max_fraction in (0, 1], fraction_step >= 0")


def high_similarity_probability(similarities: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """float64 [N]: posterior of the higher-mean component of a 2-Gaussian mixture fitted to
    ``similarities`` [N] (image–caption cosines)."""
    from sklearn.mixture import GaussianMixture

    x = similarities.double().numpy().reshape(-1, 1)
    mixture = GaussianMixture(n_components=2, random_state=seed).fit(x)
    high = int(np.argmax(mixture.means_.ravel()))
    return torch.from_numpy(mixture.predict_proba(x)[:, high])


def safe_split(similarities: torch.Tensor, fraction: float) -> torch.Tensor:
    """bool [N]: the round(fraction · N) pairs of highest image–caption similarity [N]."""
    order = torch.sort(-similarities.double(), stable=True).indices
    safe = torch.zeros(len(similarities), dtype=torch.bool)
    safe[order[: round(fraction * len(similarities))]] = True
    return safe


class SafeClipObjective:
    """Per epoch: re-split into safe / risky; safe pairs CLIP loss, risky pairs in-modal loss."""

    def __init__(
        self, params: SafeClipParams, augment_image: ImageAugmenter, augment_text: TextAugmenter
    ) -> None:
        self.params = params
        self.augment_image, self.augment_text = augment_image, augment_text
        self.first_fraction: float | None = None
        self.fractions: list[float] = []  # the safe fraction of each epoch
        self.safe: torch.Tensor | None = None  # bool [N], on the training device

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        model.eval()
        similarities = (encode_images(model, images) * encode_texts(model, tokens)).sum(dim=1)  # [N]
        model.train()
        if self.first_fraction is None:
            probability = high_similarity_probability(similarities)
            self.first_fraction = (probability > self.params.first_threshold).double().mean().item()
        fraction = min(self.first_fraction + self.params.fraction_step * epoch, self.params.max_fraction)
        self.fractions.append(fraction)
        self.safe = safe_split(similarities, fraction).to(images.device)

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        epoch: int,
    ) -> torch.Tensor:
        assert self.safe is not None, "start_epoch splits the data first"
        views = encode_views(model, images, tokens, self.augment_image, self.augment_text)
        scale = model.logit_scale.exp()
        safe = self.safe[ids]  # [B]
        losses = torch.zeros(len(ids), device=images.device)  # float32, also under bf16 autocast
        losses[safe] = clip_loss_per_sample(views.image[safe], views.text[safe], scale).float()
        risky = Views(*(getattr(views, f)[~safe] for f in ("image", "text", "aug_image", "aug_text")))
        losses[~safe] = inmodal_loss_per_sample(risky, scale).float()
        return losses


@register_defense("safeclip", SafeClipParams, needs=("dataset",))
def safeclip(context: DefenseContext, params: SafeClipParams) -> DefenseOutcome:
    """Train from scratch: in-modal warm-up, one low-lr CLIP epoch, then safe/risky epochs."""
    recipe, seed = context.train, context.train.seed
    main_epochs = recipe.epochs - params.warmup_epochs - 1
    if main_epochs < 1:
        raise UsageError(
            f"safeclip needs more than warmup_epochs + 1 = {params.warmup_epochs + 1} epochs, "
            f"the recipe has {recipe.epochs}"
        )
    augment_image, augment_text = ImageAugment(seed), CaptionAugment(seed)
    model_config = get_model_config(recipe.model)
    model = create_model(model_config, seed=seed)
    tokens = tokenize(context.dataset.captions, model_config)
    split = SafeClipObjective(params, augment_image, augment_text)
    phases = [
        (
            recipe.replace(epochs=params.warmup_epochs),
            CleanClipObjective(augment_image, augment_text, 0.0, 1.0),
        ),
        (recipe.replace(epochs=1, lr=recipe.lr * params.low_lr_factor), None),  # plain CLIP loss
        (recipe.replace(epochs=main_epochs), split),
    ]
    seconds = 0.0
    for config, objective in phases[0 if params.warmup_epochs else 1 :]:
        stats = train_clip(model, context.dataset.images, tokens, config, context.progress, objective)
        seconds += stats.train_seconds
    assert split.safe is not None
    flagged = ~split.safe.cpu()
    record = {"first_safe_fraction": split.fractions[0], "last_safe_fraction": split.fractions[-1]}
    return DefenseOutcome(model, seconds, record, flagged=flagged)
