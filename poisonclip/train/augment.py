"""Training-time augmentation hooks for the defenses' in-modal losses (CleanCLIP, RoCLIP, SafeCLIP).

Both work on what the in-memory trainer holds: uint8 image tensors and token ids, so no image is
re-decoded and no caption re-tokenised inside the loop. Each augmenter draws from its own seeded
stream, so training stays deterministic for a seed and the default (unaugmented) path is untouched.
"""

from __future__ import annotations

import numpy as np
import torch

from poisonclip.errors import UsageError

CAPTION_EDITS = ("delete", "swap", "repeat")


IMAGE_POLICIES = ("cifar10", "imagenet", "simclr")


def simclr_transform(image_size: int):
    """RoCLIP's and SafeCLIP's image augmentation (their ``utils/augment_image.py``, SimCLR-style):
    horizontal flip, ``RandomResizedCrop`` to the image size (scale 0.08–1), colour jitter
    (0.5, 0.5, 0.5, 0.1) with p 0.8, grayscale with p 0.2, Gaussian blur. Their blur kernel is 21
    pixels at 224×224; scaled to the image (3 at 32×32), odd and at least 3."""
    from torchvision.transforms import v2

    kernel = max(3, round(21 * image_size / 224) // 2 * 2 + 1)
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.GaussianBlur(kernel),
        ]
    )


def autoaugment_policy(image_size: int) -> str:
    """AutoAugment's policy for images of ``image_size`` pixels: CIFAR-10's (learned on 32×32
    images) up to 32, ImageNet's above."""
    return "cifar10" if image_size <= 32 else "imagenet"


class ImageAugment:
    """An image augmentation drawn independently for every image of a batch.

    ``policy``: ``"cifar10"`` or ``"imagenet"``, torchvision's AutoAugment (CleanCLIP used the
    ImageNet policy on 224×224 images; ``autoaugment_policy`` picks by image size), or
    ``"simclr"`` (``simclr_transform``: RoCLIP, SafeCLIP). A geometric op may move or cut the
    trigger, as it would at full scale.
    """

    def __init__(self, seed: int, policy: str) -> None:
        from torchvision.transforms import v2  # heavy import, needed only by the defenses

        if policy not in IMAGE_POLICIES:
            raise ValueError(f"policy must be one of {IMAGE_POLICIES}, got {policy!r}")
        self._policy = policy
        self._transform = None if policy == "simclr" else v2.AutoAugment(v2.AutoAugmentPolicy(policy))
        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> uint8 [B, 3, H, W] (on the input's device)."""
        seed = int(torch.randint(2**62, (1,), generator=self._generator))
        # One thread: ops on a single 32×32 image are far too small to share, and on a busy CPU
        # two threads made a batch 70× slower (1.1 s instead of 15 ms, measured here).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        # torchvision draws from the global RNG: fork it so augmentation neither depends on nor
        # disturbs whatever else uses it (model initialisation).
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if self._transform is None:  # SimCLR's crop size is the images' own
                    self._transform = simclr_transform(images.shape[-1])
                out = torch.stack([self._transform(image) for image in images.cpu()])
        finally:
            torch.set_num_threads(threads)
        return out.to(images.device)


def check_caption_edits(model_config: dict) -> None:
    """``CaptionAugment`` edits CLIP's BPE ids (start token first, end token the highest id); a
    model with a Hugging Face tokenizer (SigLIP's: no start token, end id 1) would have its
    captions scrambled without an error, so it is refused."""
    if name := model_config["text_cfg"].get("hf_tokenizer_name"):
        raise UsageError(
            f"this defense edits captions as CLIP's BPE token ids; the model's tokenizer is {name!r} "
            "(Hugging Face), which these edits do not support"
        )


class CaptionAugment:
    """One random word edit per caption, on token ids: delete a word, swap two, or repeat one.

    EDA's edits without its synonym step (which needs a downloaded WordNet). A "word" is a BPE
    token between the start and end tokens; for the toy's vocabulary that is almost always a whole
    word. The end token (the highest id, where open_clip pools the text) stays last. CLIP's BPE
    only (``check_caption_edits``).
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 [B, L] -> int64 [B, L] (on the input's device)."""
        rows = tokens.cpu().numpy().copy()
        for row in rows:
            end = int(row.argmax())  # the end-of-text token
            end_token, words = row[end], row[1:end].copy()
            if len(words) < 2:
                continue
            edit = CAPTION_EDITS[self._rng.integers(len(CAPTION_EDITS))]
            if edit == "repeat" and end == len(row) - 1:  # no room to grow: swap instead
                edit = "swap"
            if edit == "delete":
                words = np.delete(words, self._rng.integers(len(words)))
            elif edit == "swap":
                i, j = self._rng.choice(len(words), size=2, replace=False)
                words[[i, j]] = words[[j, i]]
            else:
                i = self._rng.integers(len(words))
                words = np.insert(words, i, words[i])
            row[1:] = 0
            row[1 : 1 + len(words)] = words
            row[1 + len(words)] = end_token
        return torch.from_numpy(rows).to(tokens.device)
