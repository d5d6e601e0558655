"""CleanCLIP (Bansal et al., ICCV'23): fine-tune a poisoned model on clean pairs with in-modal losses.

Loss per sample: ``clip_weight`` · CLIP loss + ``inmodal_weight`` · ½[CE(image, augmented image) +
CE(caption, augmented caption)] (``poisonclip.train.objectives.CleanClipObjective``). Published
defaults: batch 64, 10 epochs, lr 1e-5, weights 1 and 1, on 100k clean pairs of CC3M.

Toy adaptations, and why:

* **Learning rate.** 1e-5 was tuned for a pretrained RN50; the toy model was trained at 1e-3 and
  1e-5 barely moves it. The defense fine-tunes once per ``lrs`` (1e-5 included) and keeps the model
  with the lowest CLIP loss on a clean validation split — never an attack metric; the whole sweep
  is reported (``record["lr_sweep"]``, the other models in ``alternatives``).
* **Image augmentation.** AutoAugment's ImageNet policy, as theirs, except on images of at most
  32×32 pixels (the toy's), which get its CIFAR-10 policy (learned on 32×32 images).
* **Caption augmentation.** As theirs, one edit per caption drawn once when the data are loaded
  (the image's second view is drawn afresh every step); EDA-style word deletion, swap and
  repetition on token ids (``poisonclip.train.augment``): EDA's synonym replacement needs WordNet,
  which is not shipped.
* **Optimizer.** Theirs: AdamW with β₂ 0.999 and ε 1e-8 (followed; open_clip's are 0.98, 1e-6).
* **Clean set.** The defender's clean pairs come from ``DefenseContext.clean``; in the toy sweeps
  a random subset of the clean training pairs (CleanCLIP also fine-tunes on a clean subset of the
  pretraining distribution).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from poisonclip.defend.registry import DefenseContext, DefenseOutcome, register_defense
from poisonclip.defend.roclip import OFFICIAL_ADAM
from poisonclip.errors import UsageError
from poisonclip.train.augment import CaptionAugment, ImageAugment, autoaugment_policy, check_caption_edits
from poisonclip.train.loop import train_clip
from poisonclip.train.model import get_model_config, tokenize
from poisonclip.train.objectives import CleanClipObjective, clip_validation_loss
from poisonclip.train.optim import make_optimizer


@dataclass(frozen=True)
class CleanClipParams:
    lrs: tuple[float, ...] = (1e-5, 1e-4, 1e-3)  # fine-tuning peak lrs tried; published: 1e-5
    epochs: int = 10  # fine-tuning epochs (published)
    batch_size: int = 64  # (published)
    clip_weight: float = 1.0  # (published)
    inmodal_weight: float = 1.0  # (published)
    validation_fraction: float = 0.2  # of the clean pairs, held out to choose the lr

    def __post_init__(self) -> None:
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise UsageError(f"cleanclip needs at least one learning rate, all > 0, got {self.lrs}")
        if self.epochs < 1 or self.batch_size < 2:
            raise UsageError("cleanclip needs epochs >= 1 and batch_size >= 2")
        if self.clip_weight < 0 or self.inmodal_weight < 0 or self.clip_weight + self.inmodal_weight == 0:
            raise UsageError("cleanclip's loss weights must be >= 0 and not both 0")
        if not 0 < self.validation_fraction < 1:
            raise UsageError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


@register_defense("cleanclip", CleanClipParams, needs=("model", "clean"))
def cleanclip(context: DefenseContext, params: CleanClipParams) -> DefenseOutcome:
    """Fine-tune ``context.model`` on ``context.clean`` at each lr; keep the best on validation."""
    seed = context.train.seed
    order = torch.randperm(len(context.clean), generator=torch.Generator().manual_seed(seed))
    num_validation = round(params.validation_fraction * len(context.clean))
    validation, finetune = (
        context.clean.subset(order[:num_validation]),
        context.clean.subset(order[num_validation:]),
    )
    if min(len(validation), len(finetune)) < params.batch_size:
        raise UsageError(
            f"cleanclip: {len(context.clean)} clean pairs leave fewer than one batch of "
            f"{params.batch_size} for fine-tuning or validation"
        )
    model_config = get_model_config(context.train.model)
    check_caption_edits(model_config)
    tokens = tokenize(finetune.captions, model_config)
    aug_tokens = CaptionAugment(seed)(tokens)  # one edit per caption, fixed at load time (as theirs)
    validation_tokens = tokenize(validation.captions, model_config)

    def validation_loss(model: torch.nn.Module) -> float:
        return clip_validation_loss(model, validation.images, validation_tokens, params.batch_size)

    config = context.train.replace(epochs=params.epochs, batch_size=params.batch_size)
    sweep, models, seconds = [], {}, 0.0
    for lr in params.lrs:
        model = copy.deepcopy(context.model)
        objective = CleanClipObjective(
            ImageAugment(seed, autoaugment_policy(finetune.images.shape[-1])),
            aug_tokens,
            params.clip_weight,
            params.inmodal_weight,
        )
        config_lr = config.replace(lr=lr)
        optimizer = make_optimizer(model.named_parameters(), config_lr, **OFFICIAL_ADAM)
        stats = train_clip(
            model, finetune.images, tokens, config_lr, context.progress, objective, optimizer=optimizer
        )
        seconds += stats.train_seconds
        models[f"lr={lr:g}"] = model
        sweep.append(
            {"lr": lr, "validation_loss": validation_loss(model), "train_seconds": stats.train_seconds}
        )
    best = min(sweep, key=lambda row: row["validation_loss"])
    chosen = f"lr={best['lr']:g}"
    return DefenseOutcome(
        model=models.pop(chosen),
        seconds=seconds,
        record={
            "chosen_lr": best["lr"],
            "validation_loss_before": validation_loss(context.model),
            "lr_sweep": sweep,
            "num_finetune_pairs": len(finetune),
            "num_validation_pairs": len(validation),
        },
        alternatives=models,
    )
