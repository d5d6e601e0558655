"""RoCLIP (Yang et al., NeurIPS'23): every few epochs, pair each image with its nearest caption in
a FIFO pool of other captions instead of its own, so that a poisoned image rarely meets its
poisoned caption.

Every ``break_epoch``-th epoch (the 2nd, 4th, ... by default) each image is matched to the caption
embedding of a pool of ``pool_size`` recent captions that is most similar to the image embedding;
the CLIP loss then pairs the image with that caption. The pool is queried *before* the batch's own
captions enter it, so an image never retrieves its own caption in that step; from an earlier
step its caption is still in the pool for about a fraction pool_size / N of the images, hence a
pool much smaller than the dataset (one at least as large is refused). Other epochs use the plain
CLIP loss. Images and captions are augmented every epoch (as RoCLIP does),
with the hooks of ``poisonclip.train.augment``.

Toy choices, and why: the pool holds 1,024 captions (5% of the demo's 20k pairs, 10% of the
defense matrix's 10k; RoCLIP's pool is likewise a small fraction of its dataset); pool
embeddings are detached (computed by the text encoder at the time they entered, as in a MoCo
queue), so on matching epochs only the image encoder and the temperature learn from the loss.
Several images may match one pool caption; the copies then act as each other's negatives, as in
RoCLIP's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from poisonclip.defend.registry import DefenseContext, DefenseOutcome, register_defense
from poisonclip.errors import UsageError
from poisonclip.experiments.trial import train_model
from poisonclip.train.augment import CaptionAugment, ImageAugment
from poisonclip.train.loop import clip_loss_per_sample, normalize_images
from poisonclip.train.objectives import ImageAugmenter, TextAugmenter


@dataclass(frozen=True)
class RoClipParams:
    pool_size: int = 1024  # captions in the FIFO pool; must be much smaller than the dataset
    break_epoch: int = 2  # match images to pool captions every break_epoch-th epoch

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.break_epoch < 1:
            raise UsageError("roclip needs pool_size >= 1 and break_epoch >= 1")


class CaptionPool:
    """A FIFO of ``size`` caption embeddings [size, D] (unit norm, detached)."""

    def __init__(self, size: int) -> None:
        self.size, self.count, self.next = size, 0, 0
        self.embeddings: torch.Tensor | None = None

    @property
    def full(self) -> bool:
        return self.count == self.size

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """For each query [B, D], the most similar pool embedding: [B, D]."""
        assert self.embeddings is not None
        return self.embeddings[(queries.detach().float() @ self.embeddings.T).argmax(dim=1)]

    def push(self, embeddings: torch.Tensor) -> None:
        """Enter [B, D], evicting the oldest."""
        if self.embeddings is None:
            self.embeddings = embeddings.new_zeros(self.size, embeddings.shape[1], dtype=torch.float32)
        rows = (self.next + torch.arange(len(embeddings), device=embeddings.device)) % self.size
        self.embeddings[rows] = embeddings.detach().float()
        self.next = (self.next + len(embeddings)) % self.size
        self.count = min(self.size, self.count + len(embeddings))


class RoClipObjective:
    """CLIP loss on augmented pairs; on matching epochs the captions are replaced by pool matches."""

    def __init__(
        self, pool_size: int, break_epoch: int, augment_image: ImageAugmenter, augment_text: TextAugmenter
    ) -> None:
        self.pool, self.break_epoch = CaptionPool(pool_size), break_epoch
        self.augment_image, self.augment_text = augment_image, augment_text

    def matching(self, epoch: int) -> bool:
        return (epoch + 1) % self.break_epoch == 0

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        if self.pool.size >= images.shape[0]:
            raise UsageError(
                f"roclip's pool ({self.pool.size}) must be much smaller than the dataset ({images.shape[0]})"
            )

    def __call__(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        tokens: torch.Tensor,
        ids: torch.Tensor,
        epoch: int,
    ) -> torch.Tensor:
        image_features = model.encode_image(normalize_images(self.augment_image(images)), normalize=True)
        match = self.matching(epoch) and self.pool.full  # the first epoch fills the pool
        with torch.set_grad_enabled(torch.is_grad_enabled() and not match):
            text_features = model.encode_text(self.augment_text(tokens), normalize=True)  # [B, D]
        partners = self.pool.nearest(image_features) if match else text_features  # query first ...
        self.pool.push(text_features)  # ... then the batch's captions enter
        return clip_loss_per_sample(
            image_features, partners.to(image_features.dtype), model.logit_scale.exp()
        )


@register_defense("roclip", RoClipParams, needs=("dataset",))
def roclip(context: DefenseContext, params: RoClipParams) -> DefenseOutcome:
    """Train from scratch with the undefended recipe and the RoCLIP objective."""
    seed = context.train.seed
    objective = RoClipObjective(
        params.pool_size, params.break_epoch, ImageAugment(seed), CaptionAugment(seed)
    )
    model, _, stats = train_model(
        context.dataset, context.train, progress=context.progress, objective=objective
    )
    return DefenseOutcome(model, stats.train_seconds, {"pool_size": params.pool_size})
