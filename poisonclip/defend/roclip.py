"""RoCLIP (Yang et al., NeurIPS'23): every few epochs, pair each image with its nearest caption in
a pool of other captions instead of its own, so that a poisoned image rarely meets its poisoned
caption.

As the official code (BigML-CS-UCLA/RoCLIP, ``src/train.py``, ``src/data.py``):

* epochs are counted from 1 and every ``break_epoch``-th (2nd, 4th, ...) is a matching epoch: each
  image is paired with the pool caption most similar to it (cosine), queried *before* the batch's
  own captions enter the pool; the loss is the symmetric CLIP loss between the images and those
  pool captions. The pool is detached (lightly's memory bank), so on matching epochs only the
  image encoder and the temperature learn (their ``0 * loss`` term adds the text encoder to the
  graph with zero gradient). Other epochs: the plain CLIP loss on the batch's own pairs.
* The pool (``NearestNeighbourBank``) starts as random unit vectors and is filled *only on
  matching epochs*; so the first matching epoch's first batches match images to noise.
* Captions: one EDA edit per caption, drawn once when the data are loaded; the model never sees
  the unedited caption (their ``cross_aug``). Images: SimCLR-style augmentation, drawn afresh at
  every step (``poisonclip.train.augment.simclr_transform``).
* AdamW with β₂ 0.999 and ε 1e-8 (their defaults; open_clip's and the toy recipe's are 0.98, 1e-6).

Deviations, and why: the pool holds 1,024 captions (their parser's default, 21,845, exceeds the
matrix's whole 10k set; 1,024 is 5% of the demo's 20k pairs, 10% of the matrix's 10k, and 16
batches, so it leaves its random start within the first matching epoch); the recipe's lr, batch
and epochs are the undefended model's (theirs: lr 5e-5, batch 512, 24 epochs), so the defense
costs what the training it replaces costs; caption edits are EDA without synonyms (no WordNet;
``CaptionAugment``).

Diagnostic (``record["matching"]``, given ``DefenseContext.classnames``): for each matching epoch,
the share of images matched to a pool caption that names the image's own class (over the images
whose class the dataset's labels give: a label >= 0; left out when there are none), the share
matched to the random start, and (given a ``DefenseContext.monitor``) the clean zero-shot accuracy
after every epoch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from poisonclip.data.dataset import ImageTextDataset
from poisonclip.defend.memory import NearestNeighbourBank
from poisonclip.defend.registry import DefenseContext, DefenseOutcome, register_defense
from poisonclip.errors import UsageError
from poisonclip.train.augment import CaptionAugment, ImageAugment, check_caption_edits
from poisonclip.train.loop import train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.objectives import Batch, ImageAugmenter, Objective, clip_loss_per_sample
from poisonclip.train.optim import make_optimizer
from poisonclip.train.preprocess import normalize_images

OFFICIAL_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8}  # RoCLIP's, SafeCLIP's and CleanCLIP's AdamW


@dataclass(frozen=True)
class RoClipParams:
    pool_size: int = 1024  # captions in the FIFO pool; must be much smaller than the dataset
    break_epoch: int = 2  # every break_epoch-th epoch (counted from 1) matches images to the pool

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.break_epoch < 1:
            raise UsageError("roclip needs pool_size >= 1 and break_epoch >= 1")


def named_classes(captions: Sequence[str], classnames: Sequence[str]) -> torch.Tensor:
    """int64 [N]: the index of the first class name that occurs as a word in each caption, -1 if none."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(c) for c in classnames) + r")\b", re.IGNORECASE)
    index = {c.lower(): i for i, c in enumerate(classnames)}
    return torch.tensor(
        [index[m.group(1).lower()] if (m := pattern.search(c)) else -1 for c in captions], dtype=torch.long
    )


def image_classes(dataset: ImageTextDataset, classnames: Sequence[str]) -> torch.Tensor:
    """int64 [N]: each image's true class as an index into ``classnames``, -1 where unknown (no
    label, as for poisons; or a class the names lack)."""
    if dataset.classnames is None or list(dataset.classnames) == list(classnames):
        return dataset.labels
    position = {c: i for i, c in enumerate(classnames)}
    remap = torch.tensor([position.get(c, -1) for c in dataset.classnames] + [-1], dtype=torch.long)
    return remap[dataset.labels]  # label -1 picks the trailing -1


class RoClipObjective(Objective):
    """CLIP loss on augmented images and (fixed-edit) captions; on matching epochs each image is
    paired with its nearest pool caption instead.

    ``image_classes`` [N] (the true class of each training image, -1 where unknown) and
    ``caption_classes`` [N] (the class each caption names, -1 if none), when given, feed the
    matching diagnostic; images of unknown class are left out of its own-class share.
    """

    def __init__(
        self,
        pool_size: int,
        break_epoch: int,
        augment_image: ImageAugmenter,
        seed: int = 0,
        image_classes: torch.Tensor | None = None,
        caption_classes: torch.Tensor | None = None,
    ) -> None:
        self.pool, self.break_epoch = NearestNeighbourBank(pool_size, seed), break_epoch
        self.augment_image = augment_image
        self.image_classes, self.caption_classes = image_classes, caption_classes
        self.matches: dict[int, list[int]] = {}  # epoch -> [matched, own class, random start]

    def matching(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is a matching epoch (theirs count from 1)."""
        return (epoch + 1) % self.break_epoch == 0

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        if self.pool.size >= images.shape[0]:
            raise UsageError(
                f"roclip's pool ({self.pool.size}) must be much smaller than the dataset ({images.shape[0]})"
            )

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        images, tokens, ids = batch
        image_features = model.encode_image(
            normalize_images(self.augment_image(images), model), normalize=True
        )
        match = self.matching(epoch)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not match):  # zero gradient there
            text_features = model.encode_text(tokens, normalize=True)  # [B, D]
        if not match:
            return clip_loss_per_sample(image_features, text_features, model.logit_scale.exp())
        partners, partner_ids = self.pool.nearest(image_features)  # query first ...
        self.pool.push(text_features, ids)  # ... then the batch's captions enter
        self._count(epoch, ids, partner_ids)
        return clip_loss_per_sample(
            image_features, partners.to(image_features.dtype), model.logit_scale.exp()
        )

    def _count(self, epoch: int, ids: torch.Tensor, partner_ids: torch.Tensor) -> None:
        if self.image_classes is None or self.caption_classes is None:
            return
        ids, partner_ids = ids.cpu(), partner_ids.cpu()
        filled = partner_ids >= 0
        image_classes = self.image_classes[ids]
        known = image_classes >= 0  # an image of unknown class (-1: a poison, unlabelled data) never counts
        own = known & filled & (self.caption_classes[partner_ids.clamp_min(0)] == image_classes)
        counts = self.matches.setdefault(epoch, [0, 0, 0, 0])
        counts[0] += len(ids)
        counts[1] += int(known.sum())
        counts[2] += int(own.sum())
        counts[3] += int((~filled).sum())

    def matching_record(self) -> list[dict[str, float]]:
        """Per matching epoch (1-based, as theirs): the share of images of known class matched to
        a caption naming that class (left out when no image's class is known: missing, not 0), and
        the share of all images matched to the pool's random start."""
        return [
            {
                "epoch": epoch + 1,
                **({"own_class_share": own / known} if known else {}),
                "random_share": random / total,
            }
            for epoch, (total, known, own, random) in sorted(self.matches.items())
        ]


@register_defense("roclip", RoClipParams, needs=("dataset",))
def roclip(context: DefenseContext, params: RoClipParams) -> DefenseOutcome:
    """Train from scratch with the undefended recipe and the RoCLIP objective."""
    recipe, dataset = context.train, context.dataset
    model_config = get_model_config(recipe.model)
    check_caption_edits(model_config)
    model = create_model(model_config, seed=recipe.seed)
    tokens = CaptionAugment(recipe.seed)(tokenize(dataset.captions, model_config))  # edited once
    classes = named_classes(dataset.captions, context.classnames) if context.classnames else None
    objective = RoClipObjective(
        params.pool_size, params.break_epoch, ImageAugment(recipe.seed, "simclr"), recipe.seed,
        image_classes(dataset, context.classnames) if classes is not None else None, classes,
    )  # fmt: skip
    accuracy: list[float] = []
    monitor_seconds = 0.0

    def after_epoch(model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor) -> None:
        nonlocal monitor_seconds
        if context.monitor is not None:
            start = time.perf_counter()
            accuracy.append(context.monitor(model))
            monitor_seconds += time.perf_counter() - start

    optimizer = make_optimizer(model.named_parameters(), recipe, **OFFICIAL_ADAM)
    stats = train_clip(
        model, dataset.images, tokens, recipe, context.progress, objective,
        on_epoch_end=after_epoch, optimizer=optimizer,
    )  # fmt: skip
    record = {"pool_size": params.pool_size, "matching": objective.matching_record()}
    if accuracy:
        record["zero_shot_acc_per_epoch"] = accuracy
    return DefenseOutcome(model, stats.train_seconds - monitor_seconds, record)  # the diagnostic is free
