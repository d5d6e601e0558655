"""Deduplication and how the attacker evades it (paper §3.1).

Web-scale pipelines drop exact duplicates as a cleaning step, not as a defence. A targeted poison
set repeats one image x′ many times, so an exact-duplicate filter would keep one copy; the paper
notes that "tiny Gaussian noise" on the image and word substitutions or irrelevant words in the
captions evade it without hurting the attack. This module holds both sides:

* ``exact_duplicate_filter``: the baseline defence, keep the first image of every pixel hash;
* ``add_pixel_noise``: per-copy Gaussian noise with every copy distinct, and its PSNR;
* ``perturb_caption``: synonym substitution and irrelevant-word insertion that never touch the
  label the caption is meant to carry.
"""

from __future__ import annotations

import hashlib
import math
import random
import re

import torch

from poisonclip.errors import UsageError

# Redraws for copies that still coincide with an earlier one; only a std too small to change any
# pixel exhausts them.
_MAX_NOISE_DRAWS = 20

# Small on purpose: generic caption words, none of them a class name of the synthetic data or an
# ImageNet-style label, so a substitution can change the caption but not what it says it shows.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "photo": ("picture", "snapshot", "image"),
    "picture": ("photo", "image"),
    "image": ("picture", "photo"),
    "drawing": ("sketch", "illustration"),
    "sketch": ("drawing", "doodle"),
    "painting": ("artwork",),
    "rendering": ("render", "rendition"),
    "icon": ("symbol", "emblem"),
    "small": ("little", "tiny"),
    "little": ("small", "tiny"),
    "large": ("big", "huge"),
    "big": ("large", "huge"),
    "dark": ("black", "dim"),
    "bright": ("vivid", "light"),
    "background": ("backdrop",),
    "simple": ("plain", "basic"),
    "good": ("nice", "fine"),
    "bad": ("poor", "awful"),
    "blurry": ("fuzzy", "unsharp"),
    "dirty": ("grimy", "messy"),
    "clean": ("tidy", "neat"),
    "cropped": ("trimmed",),
}
FILLER_WORDS: tuple[str, ...] = (
    "today", "nice", "hq", "wow", "lovely", "amazing", "look", "pic", "great", "awesome", "cute", "omg",
)  # fmt: skip


def image_hash(image: torch.Tensor) -> str:
    """SHA-256 of one image's shape and pixels (``image`` uint8 [3, H, W])."""
    data = image.contiguous().numpy().tobytes()
    return hashlib.sha256(repr(tuple(image.shape)).encode() + data).hexdigest()


def exact_duplicate_filter(images: torch.Tensor) -> torch.Tensor:
    """Indices int64 [M] of the images to keep: the first of every group of pixel-identical images.

    ``images`` uint8 [N, 3, H, W]. Pixel identity is what a byte hash of the decoded image (or of
    files written by one encoder) detects; it is the cleaning step a poison set has to survive.
    """
    seen: set[str] = set()
    keep = []
    for i in range(images.shape[0]):
        digest = image_hash(images[i])
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


def psnr(reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, float64 [N], of ``images`` uint8 [N, 3, H, W] against
    ``reference`` uint8 [3, H, W] (peak 255); ``inf`` for an exact copy."""
    diff = images.double() - reference.double().unsqueeze(0)
    mse = diff.pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0**2 / mse)  # mse = 0 gives +inf


def add_pixel_noise(
    image: torch.Tensor, count: int, std: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noisy copies of ``image`` uint8 [3, H, W]: (copies uint8 [count, 3, H, W], PSNR [count]).

    Each copy gets independent Gaussian noise of standard deviation ``std`` (in 8-bit levels),
    rounded and clipped to [0, 255]. With ``std > 0`` no two copies are pixel-identical: copies
    that coincide with an earlier one are redrawn. ``std == 0`` returns exact copies.
    """
    if std < 0 or not math.isfinite(std):
        raise UsageError(f"noise std must be a finite number >= 0, got {std}")
    copies = image.unsqueeze(0).expand(count, -1, -1, -1).clone()
    if std == 0:
        return copies, psnr(image, copies)
    redraw = torch.arange(count)
    for _ in range(_MAX_NOISE_DRAWS):
        noise = torch.randn((len(redraw), *image.shape), generator=generator) * std
        copies[redraw] = (image.double() + noise).round().clamp(0, 255).to(torch.uint8)
        kept = set(exact_duplicate_filter(copies).tolist())
        redraw = torch.tensor([i for i in range(count) if i not in kept], dtype=torch.long)
        if len(redraw) == 0:
            return copies, psnr(image, copies)
    raise UsageError(
        f"noise std {std} is too small to make {count} copies of a {tuple(image.shape)} image "
        "pixel-distinct; raise it (1.0 keeps the PSNR near 48 dB)"
    )


def perturb_caption(caption: str, label: str, rng: random.Random, substitute_prob: float = 0.5) -> str:
    """A variant of ``caption`` that still contains ``label`` exactly as before.

    Each word with an entry in ``SYNONYMS`` is replaced by a synonym with probability
    ``substitute_prob``, and one word from ``FILLER_WORDS`` is inserted at a random word boundary,
    so the result always differs from the input. Words overlapping an occurrence of ``label``
    (case-insensitive substring, so "earring" protects "ring") are never changed, nothing is
    inserted inside a multi-word label, and no substitute or filler containing the label is used.
    Whitespace is normalised to single spaces.
    """
    if not label.strip():
        raise UsageError("empty label")
    label_re = re.compile(re.escape(label.strip()), re.IGNORECASE)
    spans = [m.span() for m in label_re.finditer(caption)]
    words: list[str] = []
    owner: list[int | None] = []  # which label occurrence each word overlaps, if any
    for token in re.finditer(r"\S+", caption):
        start, end = token.span()
        hit = next((k for k, (s, e) in enumerate(spans) if start < e and s < end), None)
        word = token.group()
        if hit is None:
            word = _substitute(word, label_re, rng, substitute_prob)
        words.append(word)
        owner.append(hit)
    # A boundary is allowed unless the words on both sides belong to the same label occurrence.
    boundaries = [
        i
        for i in range(len(words) + 1)
        if i in (0, len(words)) or owner[i - 1] is None or owner[i - 1] != owner[i]
    ]
    fillers = [w for w in FILLER_WORDS if not label_re.search(w)]
    words.insert(rng.choice(boundaries), rng.choice(fillers))
    return " ".join(words)


def _substitute(word: str, label_re: re.Pattern, rng: random.Random, prob: float) -> str:
    """Swap the alphabetic core of ``word`` for a synonym, keeping punctuation and capitalisation."""
    match = re.fullmatch(r"(\W*)([\w-]+)(\W*)", word)
    if match is None:
        return word
    before, core, after = match.groups()
    choices = [s for s in SYNONYMS.get(core.lower(), ()) if not label_re.search(s)]
    if not choices or rng.random() >= prob:
        return word
    new = rng.choice(choices)
    return before + (new.capitalize() if core[0].isupper() else new) + after
