"""Objectives beyond the plain CLIP loss: augmented views and in-modal (self-supervised) losses.

Each objective gives per-sample losses [B] for a batch and plugs into ``train_clip`` unchanged
(``poisonclip.train.loop.Objective``); the defenses (``poisonclip.defend``) are built from these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from poisonclip.train.loop import clip_loss_per_sample, normalize_images

ImageAugmenter = Callable[[torch.Tensor], torch.Tensor]  # uint8 [B, 3, H, W] -> same shape


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
    labels = torch.arange(views.image.shape[0], device=views.image.device)
    image_logits = logit_scale * views.image @ views.aug_image.T  # [B, B]
    text_logits = logit_scale * views.text @ views.aug_text.T
    return 0.5 * (
        F.cross_entropy(image_logits, labels, reduction="none")
        + F.cross_entropy(text_logits, labels, reduction="none")
    )


class CleanClipObjective:
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

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        epoch: int,
    ) -> torch.Tensor:
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
            image = model.encode_image(
                normalize_images(images[start : start + batch_size].to(device), model), normalize=True
            )
            text = model.encode_text(tokens[start : start + batch_size].to(device), normalize=True)
            total += clip_loss_per_sample(image.float(), text.float(), model.logit_scale.exp()).sum().item()
            count += batch_size
    model.train(was_training)
    if count == 0:
        raise ValueError(
            f"validation set ({images.shape[0]} pairs) is smaller than one batch of {batch_size}"
        )
    return total / count
