"""SafeCLIP (Yang et al., ICML'24): learn cross-modally only from pairs that look safe; the rest
in-modally only.

As the official code (BigML-CS-UCLA/SafeCLIP, ``src/main.py``, ``src/train.py``, defaults of
``src/parser.py``), one model and one AdamW (β₂ 0.999, ε 1e-8) through three phases:

1. ``inmodal_warmup_epochs`` of in-modal warm-up on all pairs, NNCLR-style: each second view
   (image, caption) is contrasted with the nearest neighbour of its first view in a memory bank
   of ``memory_bank_size`` earlier first views (one bank per modality, updated every step,
   starting as random unit vectors); no cross-modal term, so poisoned pairs teach nothing yet.
   lr: the recipe's warm-up and cosine over the two warm-up phases;
2. ``crossmodal_warmup_epochs`` of the CLIP loss on all pairs at a *constant*
   ``warmup_lr_factor`` × the recipe's lr (theirs: filter_lr 5e-6 = 0.01 × 5e-4);
3. each remaining epoch: a split on every pair's image–caption cosine under the current model;
   then one full pass over the *risky* pairs with the in-modal loss (with the memory bank), then
   one full pass over the *safe* pairs with the CLIP loss, each in batches of the recipe's size
   drawn from that set alone. The first split takes as safe the pairs whose probability of the
   high-similarity component of a 2-Gaussian mixture is at least ``first_threshold``; each later
   epoch the safe fraction grows and the most similar pairs are safe, capped at ``max_fraction``
   (the first split is not capped, as theirs). lr: one cosine over the main phase from the
   recipe's lr.

Views, as their data loader: every image has two SimCLR-style views drawn afresh at every step;
every caption two EDA edits fixed at load time; the unedited caption is never trained on. The
cross-modal loss pairs image view 1 with caption view 2 and caption view 1 with image view 2 (their
``cross_aug``); the split compares image view 1 with caption view 1.

Deviations, each forced or chosen, and why:

* **Epoch budget.** Theirs: 32 epochs = 5 in-modal + 1 cross-modal warm-up + 26 main, the safe
  fraction growing +0.01 an epoch (0.25 over the run). The toy trains 8–10 epochs in all (the
  undefended budget): 1 in-modal warm-up (≈ 5/32 of 8), 1 cross-modal warm-up and 6–8 main
  epochs; the safe fraction grows by ``fraction_growth`` / (main epochs) an epoch, so it grows by
  the same 0.26 over the main phase (0.01 an epoch at 26 main epochs, as theirs).
* **Full batches.** Theirs drop each pass's last partial batch; here it is filled up with the
  first pairs of the same shuffled set, so every safe pair enters the CLIP loss and every risky
  pair the in-modal loss in every main epoch (at the toy's scale a dropped batch is ~5% of a set).
* **Schedule.** Theirs steps two cosine schedulers with indices that mix epochs and loader
  lengths (``step = num_batches · epoch + index``); here one cosine runs over the main phase's
  steps, risky and safe passes alike.
* **Ranking.** Later splits rank pairs by similarity; theirs rank by the mixture's posterior, which
  is monotone in the similarity where it matters and rounds to 1 for most pairs.
* Caption edits are EDA without synonyms (no WordNet); the mixture is scikit-learn's
  ``GaussianMixture`` (theirs too, ``random_state=0``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from poisonclip.defend.memory import NearestNeighbourBank
from poisonclip.defend.registry import DefenseContext, DefenseOutcome, register_defense
from poisonclip.defend.roclip import OFFICIAL_ADAM
from poisonclip.errors import UsageError
from poisonclip.evaluate.embeddings import encode_texts
from poisonclip.train.augment import CaptionAugment, ImageAugment, check_caption_edits
from poisonclip.train.config import TrainConfig
from poisonclip.train.loop import train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.objectives import (
    Batch,
    ImageAugmenter,
    Objective,
    Views,
    encode_views,
    symmetric_cross_entropy,
)
from poisonclip.train.optim import lr_at, make_optimizer


@dataclass(frozen=True)
class SafeClipParams:
    inmodal_warmup_epochs: int = 1  # in-modal only (theirs: 5 of 32)
    crossmodal_warmup_epochs: int = 1  # CLIP loss on all pairs at a constant low lr (theirs: 1)
    warmup_lr_factor: float = 0.01  # that lr, times the recipe's (theirs: 5e-6 / 5e-4)
    first_threshold: float = 0.9  # first split: safe = P(high-similarity component) >= this
    fraction_growth: float = 0.26  # the safe fraction grows by this over the main phase (0.01 × 26)
    max_fraction: float = 0.85  # ... up to this
    memory_bank_size: int = 256  # the in-modal loss's nearest-neighbour bank, per modality

    def __post_init__(self) -> None:
        if self.inmodal_warmup_epochs < 0 or self.crossmodal_warmup_epochs < 0:
            raise UsageError("safeclip's warm-up epochs must be >= 0")
        if not 0 < self.warmup_lr_factor <= 1 or not 0 < self.first_threshold < 1:
            raise UsageError("safeclip needs warmup_lr_factor in (0, 1] and first_threshold in (0, 1)")
        if self.fraction_growth < 0 or not 0 < self.max_fraction <= 1 or self.memory_bank_size < 1:
            raise UsageError(
                "safeclip needs fraction_growth >= 0, max_fraction in (0, 1], memory_bank_size >= 1"
            )


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


def full_batches(ids: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``ids`` [M] shuffled and filled up to a multiple of ``batch_size`` with its own first
    entries: [⌈M / batch_size⌉ · batch_size]. Every id is kept; none is dropped."""
    ids = ids[torch.randperm(len(ids), generator=generator)]
    count = math.ceil(len(ids) / batch_size) * batch_size
    return ids[torch.arange(count) % len(ids)]


class _TwoViews(Objective):
    """Encodes a batch's two views: images augmented twice afresh, captions as their first and
    second fixed edits (``second`` [M, L], rows = the rows trained on)."""

    def __init__(self, augment_image: ImageAugmenter) -> None:
        self.augment_image = augment_image
        self.second: torch.Tensor | None = None

    def start_epoch(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        assert self.second is not None, "the pass sets the second caption views first"
        self.second = self.second.to(tokens.device)

    def views(self, model: torch.nn.Module, batch: Batch) -> Views:
        images, tokens, ids = batch
        aug = self.augment_image  # second views: rows picked where they are, used on the batch's device
        second = self.second[ids.to(self.second.device)].to(tokens.device)
        return encode_views(model, aug(images), tokens, aug(images), second)


class InmodalObjective(_TwoViews):
    """NNCLR-style in-modal loss per sample [B]: ½[CE(image view 2 → NN(image view 1)) + CE(caption
    view 2 → NN(caption view 1))], the NN from each modality's bank before this batch enters it."""

    def __init__(
        self, banks: tuple[NearestNeighbourBank, NearestNeighbourBank], augment_image: ImageAugmenter
    ):
        super().__init__(augment_image)
        self.banks = banks

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        views = self.views(model, batch)
        image_bank, text_bank = self.banks
        image_nn, _ = image_bank.nearest(views.image)
        text_nn, _ = text_bank.nearest(views.text)
        image_bank.push(views.image, batch.ids)
        text_bank.push(views.text, batch.ids)
        scale = model.logit_scale.exp()
        image_logits = scale * views.aug_image @ image_nn.to(views.image.dtype).T  # [B, B]
        text_logits = scale * views.aug_text @ text_nn.to(views.text.dtype).T
        return symmetric_cross_entropy(image_logits, text_logits)


class CrossmodalObjective(_TwoViews):
    """The CLIP loss across views per sample [B]: image view 1 against caption views 2, caption
    view 1 against image views 2 (their ``cross_aug``)."""

    def __call__(self, model: torch.nn.Module, batch: Batch, epoch: int) -> torch.Tensor:
        views = self.views(model, batch)
        scale = model.logit_scale.exp()
        return symmetric_cross_entropy(
            scale * views.image @ views.aug_text.T, scale * views.text @ views.aug_image.T
        )


# on_pass(loss, dataset ids [B]) for every batch: "inmodal" or "clip" (for tests and diagnostics)
PassCallback = Callable[[str, torch.Tensor], None]


def run_safeclip(
    model: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    recipe: TrainConfig,
    params: SafeClipParams,
    progress: bool = False,
    on_pass: PassCallback | None = None,
) -> dict:
    """Train ``model`` in place with SafeCLIP on ``images`` uint8 [N, 3, H, W] and ``tokens`` [N, L]
    (unedited: the two caption views are edited here, once). Returns the record: the safe
    fraction of every main epoch, the last split's safe mask [N] and the training seconds."""
    n, batch = images.shape[0], recipe.batch_size
    main_epochs = recipe.epochs - params.inmodal_warmup_epochs - params.crossmodal_warmup_epochs
    if main_epochs < 1:
        raise UsageError(
            f"safeclip needs more than its {recipe.epochs - main_epochs} warm-up epochs; "
            f"the recipe has {recipe.epochs}"
        )
    first, second = CaptionAugment(recipe.seed)(tokens), CaptionAugment(recipe.seed + 1)(tokens)
    augment_image = ImageAugment(recipe.seed, "simclr")
    banks = (
        NearestNeighbourBank(params.memory_bank_size, recipe.seed),
        NearestNeighbourBank(params.memory_bank_size, recipe.seed + 1),
    )
    inmodal, crossmodal = InmodalObjective(banks, augment_image), CrossmodalObjective(augment_image)
    optimizer = make_optimizer(model.named_parameters(), recipe, **OFFICIAL_ADAM)
    generator = torch.Generator().manual_seed(recipe.seed)
    seconds, step = 0.0, 0

    def train_pass(ids: torch.Tensor, objective: _TwoViews, schedule: Callable[[int], float], at: int) -> int:
        """One epoch over the rows ``ids`` in full batches, its lr ``schedule(at + step)``; returns
        its steps."""
        nonlocal seconds
        rows = full_batches(ids, batch, generator)
        objective.second = second[rows]
        name = "clip" if isinstance(objective, CrossmodalObjective) else "inmodal"
        config = recipe.replace(epochs=1, seed=int(torch.randint(2**31, (1,), generator=generator)))
        record = None if on_pass is None else lambda epoch, b, losses: on_pass(name, rows[b.cpu()])
        stats = train_clip(
            model, images[rows], first[rows], config, progress, objective, record,
            optimizer=optimizer, lr_schedule=lambda step, total: schedule(at + step),
        )  # fmt: skip
        seconds += stats.train_seconds
        return stats.steps

    everyone, steps_per_epoch = torch.arange(n), math.ceil(n / batch)
    warmup_steps = steps_per_epoch * (params.inmodal_warmup_epochs + params.crossmodal_warmup_epochs)
    main_steps = main_epochs * (steps_per_epoch + 1)  # ≥ the risky and safe passes' steps together

    def warmup(step: int) -> float:  # the recipe's warm-up and cosine over both warm-up phases
        return lr_at(step, warmup_steps, recipe)

    def constant(step: int) -> float:
        return recipe.lr * params.warmup_lr_factor

    def main(step: int) -> float:  # one cosine over the main phase, from the recipe's lr
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * min(1.0, step / main_steps)))

    step = 0
    for _ in range(params.inmodal_warmup_epochs):
        step += train_pass(everyone, inmodal, warmup, step)
    for _ in range(params.crossmodal_warmup_epochs):
        step += train_pass(everyone, crossmodal, constant, step)

    step, fractions = 0, []
    for epoch in range(main_epochs):
        start = time.perf_counter()
        similarities = _similarities(model, images, first, augment_image)
        if epoch == 0:
            probability = high_similarity_probability(similarities)
            fraction = (probability >= params.first_threshold).double().mean().item()
        else:
            fraction = min(fractions[0] + params.fraction_growth / main_epochs * epoch, params.max_fraction)
        fractions.append(fraction)
        safe = safe_split(similarities, fraction)
        seconds += time.perf_counter() - start
        for ids, objective in ((everyone[~safe], inmodal), (everyone[safe], crossmodal)):
            if len(ids):
                step += train_pass(ids, objective, main, step)
    return {"safe_fractions": fractions, "safe": safe, "seconds": seconds}


def _similarities(
    model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, augment_image: ImageAugmenter
) -> torch.Tensor:
    """float32 [N]: cosine of each image's (augmented) view with its caption's first view, eval mode."""
    from poisonclip.evaluate.embeddings import encode_images

    model.eval()
    image = encode_images(model, augment_image(images))
    similarity = (image * encode_texts(model, tokens)).sum(dim=1)
    model.train()
    return similarity


@register_defense("safeclip", SafeClipParams, needs=("dataset",))
def safeclip(context: DefenseContext, params: SafeClipParams) -> DefenseOutcome:
    """Train from scratch with SafeCLIP (``run_safeclip``) under the undefended recipe."""
    recipe = context.train
    model_config = get_model_config(recipe.model)
    check_caption_edits(model_config)
    model = create_model(model_config, seed=recipe.seed)
    tokens = tokenize(context.dataset.captions, model_config)
    record = run_safeclip(model, context.dataset.images, tokens, recipe, params, context.progress)
    model.eval()
    fractions = record["safe_fractions"]
    return DefenseOutcome(
        model,
        record["seconds"],
        {
            "first_safe_fraction": fractions[0],
            "last_safe_fraction": fractions[-1],
            "safe_fractions": fractions,
        },
        flagged=~record["safe"],
    )
