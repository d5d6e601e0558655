"""A BadCLIP-style optimised patch (after Liang et al., CVPR 2024): a patch whose pixels are
optimised against a surrogate CLIP model so that patched images embed near the target label's text.

As in BadCLIP's ``src/embeding_optimize_patch.py``: the patch starts as N(0.5, 0.25) noise clipped to
[0, 1], is pasted in the middle of the image (``center``), and Adam updates it through the frozen
surrogate on natural training captions that name the target ("nature" text). Fitting draws its
images, captions, batches and random positions from ``pattern_seed``; the fitted 8-bit patch is the
trigger's state, stored with the poison set (``trigger.json``) and pasted exactly as stored at
evaluation (``poisonclip evaluate --trigger-from POISON_DIR``).

Simplified ("BadCLIP-style", not BadCLIP): the loss is only the mean cosine similarity between the
patched images' embeddings and the mean embedding of the target captions; BadCLIP's contrastive
loss over its patch-training pairs, its triplet term (toward embeddings of real target-class
images, away from each image's clean embedding), its text (EDA) and image augmentation and its
epochs over a separate patch-training set are left out; a fixed number of steps on ``fit_images``
training images instead. The surrogate is ``surrogate``: a poisonclip checkpoint directory
(``train.checkpoint.load_checkpoint``: safetensors, no pickle) or, as BadCLIP attacks with a
pretrained CLIP, ``MODEL:PRETRAINED`` (an open_clip model and a pretrained tag, downloaded and
cached by open_clip, or a weights file; loaded as ``train --pretrained`` loads it); in a sweep,
where none is given, a clean model trained on the sweep's own clean data with another seed
(``experiments/backdoor_trial``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from poisonclip.attacks.triggers.badnets import PATTERN_SEED_HELP
from poisonclip.attacks.triggers.base import STATE, FitContext, register_trigger, trigger_generator
from poisonclip.attacks.triggers.patch import PLACEMENT_HELP, PLACEMENTS, PatchTrigger
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    import torch

MAX_CAPTIONS = 1000  # target captions embedded for the text target (a seeded sample of the pool)


@register_trigger("badclip")
@dataclass(frozen=True)
class BadClip(PatchTrigger):
    placement: str = field(default="center", metadata={"help": PLACEMENT_HELP, "choices": PLACEMENTS})
    surrogate: str = field(
        default="",
        metadata={
            "help": "the attacker's surrogate model: a checkpoint directory (poisonclip train's output) "
            "or MODEL:PRETRAINED, an open_clip model with a pretrained tag or weights file (e.g. "
            "ViT-B-32:laion2b_s34b_b79k, downloaded by open_clip); empty in a sweep: a clean model "
            "trained on the sweep's data"
        },
    )
    fit_steps: int = field(default=300, metadata={"help": "Adam steps that optimise the patch"})
    fit_lr: float = field(
        default=0.01, metadata={"help": "Adam learning rate of the patch (pixels in [0, 1])"}
    )
    fit_batch_size: int = field(default=64, metadata={"help": "images per optimisation step"})
    fit_images: int = field(default=1000, metadata={"help": "training images the patch is optimised on"})
    pattern_seed: int = field(default=0, metadata={"help": PATTERN_SEED_HELP})
    # The fitted patch, uint8 [3, patch_size, patch_size]; None until ``fit`` or ``with_state``.
    patch: Any = field(default=None, repr=False, compare=False, metadata={STATE: True})

    def check(self) -> None:
        # The surrogate is read when fitting only: a fitted patch is re-applied without it.
        super().check()
        if self.fit_steps < 0 or self.fit_lr <= 0 or min(self.fit_batch_size, self.fit_images) < 1:
            raise UsageError("badclip needs fit_steps >= 0, fit_lr > 0, fit_batch_size and fit_images >= 1")

    def pattern(self) -> torch.Tensor:
        if self.patch is None:
            raise UsageError(
                "badclip's patch is not fitted: it is fitted when poisoning; to evaluate, re-apply the "
                "poison set's own trigger (evaluate --trigger-from POISON_DIR)"
            )
        return self.patch

    def state(self) -> dict:
        return {} if self.patch is None else {"patch": self.patch.tolist()}

    def with_state(self, state: dict) -> BadClip:
        import torch

        try:
            patch = torch.tensor(state["patch"], dtype=torch.uint8)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UsageError(f"badclip state needs a patch of 8-bit pixel values: {err}") from err
        if patch.shape != (3, self.patch_size, self.patch_size):
            raise UsageError(
                f"badclip patch has shape {tuple(patch.shape)}, not 3x{self.patch_size}x{self.patch_size}"
            )
        return dataclasses.replace(self, patch=patch)

    def fit(self, context: FitContext) -> BadClip:
        import torch

        from poisonclip.train.model import image_size_of, tokenize
        from poisonclip.train.preprocess import normalize_images

        model, model_config = self._surrogate(context)
        model = model.eval().requires_grad_(False)
        device = next(model.parameters()).device
        generator = trigger_generator(self.pattern_seed)
        order = torch.randperm(context.num_images, generator=generator)[: self.fit_images].tolist()
        images = context.load_images(order)
        if (size := image_size_of(model_config)) != images.shape[-1]:
            raise UsageError(f"the surrogate takes {size}px images, the data is {images.shape[-1]}px")
        if not context.captions:
            raise UsageError(f"no training caption names {context.target_label!r}: nothing to fit toward")
        picked = torch.randperm(len(context.captions), generator=generator)[:MAX_CAPTIONS].tolist()
        with torch.no_grad():
            tokens = tokenize([context.captions[i] for i in picked], model_config).to(device)
            target = model.encode_text(tokens, normalize=True).mean(0)
            target = target / target.norm()
        patch = (0.5 + 0.25 * torch.randn(3, self.patch_size, self.patch_size, generator=generator)).clamp(
            0, 1
        )
        patch.requires_grad_()
        optimizer = torch.optim.Adam([patch], lr=self.fit_lr)
        for _ in range(self.fit_steps):
            chosen = torch.randint(len(images), (self.fit_batch_size,), generator=generator)
            batch = images[chosen].float()
            corners = self.positions(len(batch), batch.shape[-1], generator)
            pasted = batch.clone()
            for i, (y, x) in enumerate(corners.tolist()):
                pasted[i, :, y : y + self.patch_size, x : x + self.patch_size] = patch.clamp(0, 1) * 255
            embedded = model.encode_image(normalize_images(pasted.to(device), model), normalize=True)
            loss = -(embedded @ target).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        fitted = (patch.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        return dataclasses.replace(self, patch=fitted)

    def _surrogate(self, context: FitContext) -> tuple[torch.nn.Module, dict]:
        from pathlib import Path

        if self.surrogate and (Path(self.surrogate).is_dir() or ":" not in self.surrogate):
            from poisonclip.train.checkpoint import load_checkpoint

            return load_checkpoint(self.surrogate)
        if self.surrogate:  # MODEL:PRETRAINED
            from poisonclip.train.config import TrainConfig
            from poisonclip.train.model import get_model_config, initial_model

            name, pretrained = self.surrogate.split(":", 1)
            try:
                model_config = get_model_config(name)
                return initial_model(
                    TrainConfig(model=name, pretrained=pretrained), model_config
                ), model_config
            except UsageError as err:
                raise UsageError(
                    f"surrogate {self.surrogate!r} is not a checkpoint directory, and as "
                    f"MODEL:PRETRAINED: {err}"
                ) from err
        if context.surrogate is None:
            raise UsageError(
                "badclip needs a surrogate model: --surrogate CHECKPOINT_DIR or MODEL:PRETRAINED"
            )
        return context.surrogate()
