"""What the training loop minimises: per-sample losses [B] of a batch. The plain CLIP loss, and the
objectives the defenses (``poisonclip.defend``) are built from: augmented views, in-modal losses.

Each objective plugs into ``train_clip`` unchanged (``Objective``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from poisonclip.train.preprocess import normalize_images

ImageAugmenter = Callable[[torch.Tensor], torch.Tensor]  # uint8 [B, 3, H, W] -> same shape


class Batch(NamedTuple):
    """One training batch: ``images`` uint8 [B, 3, H, W], ``tokens`` [B, L] and the samples' ``ids``
    [B] (their rows in the training set), on the model's device."""

    images: torch.Tensor
    tokens: torch.Tensor
    ids: torch.Tensor


def symmetric_cross_entropy(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """½[CE(first) + CE(second)] per row [B] of two [B, B] logit matrices whose positives are diagonal."""
    labels = torch.arange(first.shape[0], device=first.device)
    return 0.5 * (
        F.cross_entropy(first, labels, reduction="none") + F.cross_entropy(second, labels, reduction="none")
    )


def clip_loss_per_sample(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE per sample [B]; its mean is ``open_clip.ClipLoss``.

    ``image_features`` and ``text_features`` [B, D], unit norm; sample i's positive is pair i and
    its negatives are the batch's other pairs: ½[CE(image_i → texts) + CE(text_i → images)].
    """
    logits = logit_scale * image_features @ text_features.T  # [B, B]
    return symmetric_cross_entropy(logits, logits.T)


def encode_batch(
    model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm embeddings [B, D] of ``images`` uint8 [B, 3, H, W] and of ``tokens`` [B, L]."""
    image_features = model.encode_image(normalize_images(images, model), normalize=True)
    return image_features, model.encode_text(tokens, normalize=True)


class Objective(Protocol):
    """What the loop minimises: per-sample losses [B] of a batch (defenses plug in their own)."""

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        """Called before each epoch with the whole training set (e.g. to re-split it); by default
        nothing."""

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        """Losses [B] of ``batch``."""


class ClipObjective(Objective):
    """The plain CLIP loss on each batch: the default objective."""

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        image_features, text_features = encode_batch(model, batch.images, batch.tokens)
        return clip_loss_per_sample(image_features, text_features, model.logit_scale.exp())


@dataclass(frozen=True)
class Views:
    """Unit-norm embeddings [B, D] of a batch and of its augmented copy."""

    image: torch.Tensor
    text: torch.Tensor
    aug_image: torch.Tensor
    aug_text: torch.Tensor


def encode_views(
    model: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    aug_images: torch.Tensor,
    aug_tokens: torch.Tensor,
) -> Views:
    """Embed ``images`` uint8 [B, 3, H, W] and ``tokens`` [B, L] with their second views
    ``aug_images`` and ``aug_tokens`` (same shapes).

    Each encoder runs once on the batch and its second view stacked, [2B, ...].
    """
    b = images.shape[0]
    image_features = model.encode_image(
        normalize_images(torch.cat([images, aug_images]), model), normalize=True
    )
    text_features = model.encode_text(torch.cat([tokens, aug_tokens]), normalize=True)  # [2B, D]
    return Views(image_features[:b], text_features[:b], image_features[b:], text_features[b:])


def inmodal_loss_per_sample(views: Views, logit_scale: torch.Tensor) -> torch.Tensor:
    """CleanCLIP's in-modal term per sample [B]: ½[CE(image_i → augmented images) + CE(caption_i →
    augmented captions)]; sample i's negatives are the other samples' augmented views."""
    image_logits = logit_scale * views.image @ views.aug_image.T  # [B, B]
    text_logits = logit_scale * views.text @ views.aug_text.T
    return symmetric_cross_entropy(image_logits, text_logits)


class CleanClipObjective(Objective):
    """``clip_weight`` · CLIP loss + ``inmodal_weight`` · in-modal loss, per sample (CleanCLIP, ICCV'23).

    As CleanCLIP's data loader: the second view of an image is drawn afresh every step, the second
    view of a caption is one edit fixed at load time (``aug_tokens`` [N, L], row = sample id). The
    CLIP term pairs the unaugmented views.
    """

    def __init__(
        self,
        augment_image: ImageAugmenter,
        aug_tokens: torch.Tensor,
        clip_weight: float = 1.0,
        inmodal_weight: float = 1.0,
    ) -> None:
        self.augment_image, self.aug_tokens = augment_image, aug_tokens
        self.clip_weight, self.inmodal_weight = clip_weight, inmodal_weight

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        self.aug_tokens = self.aug_tokens.to(tokens.device)

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        images, tokens, ids = batch
        # The fixed edits stay where the training set is (CPU memory with --no-data-on-device): rows
        # picked there with the ids, then moved to the batch's (the model's) device.
        aug_tokens = self.aug_tokens[ids.to(self.aug_tokens.device)].to(tokens.device)
        views = encode_views(model, images, tokens, self.augment_image(images), aug_tokens)
        scale = model.logit_scale.exp()
        return self.clip_weight * clip_loss_per_sample(
            views.image, views.text, scale
        ) + self.inmodal_weight * inmodal_loss_per_sample(views, scale)


def clip_validation_loss(
    model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, batch_size: int
) -> float:
    """Mean CLIP loss over consecutive batches of ``batch_size`` of a held-out set (last partial
    batch dropped, as in training): how well the model fits clean pairs, for choosing a learning
    rate without looking at any attack metric. ``images`` uint8 [N, 3, H, W], ``tokens`` [N, L]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, images.shape[0] - batch_size + 1, batch_size):
            rows = slice(start, start + batch_size)
            image, text = encode_batch(model, images[rows].to(device), tokens[rows].to(device))
            total += clip_loss_per_sample(image.float(), text.float(), model.logit_scale.exp()).sum().item()
            count += batch_size
    model.train(was_training)
    if count == 0:
        raise ValueError(
            f"validation set ({images.shape[0]} pairs) is smaller than one batch of {batch_size}"
        )
    return total / count
