"""The targeted poisoning attack (paper §3.1, §4.2): make one image x′ be classified as label y′.

P = {(x′, c) : c ∈ caption set}, added to the training set (X′ = P ∪ X); the caption set is built
from the label string y′ alone (:mod:`poisonclip.attacks.caption_set`). Optional dedup evasion
(:mod:`poisonclip.attacks.dedup`): per-copy pixel noise and caption perturbation.

The options of the poisons (caption set, dedup evasion, caption search) are declared once, in
``TargetedOptions`` (:mod:`poisonclip.attacks.targeted_spec`).

``make_targeted_many`` puts K independent targets into one poison set (one model measures K
attacks, as in the paper); ``choose_targets`` draws them from a labelled held-out split.
``make_text_targeted`` is the variant aimed at the text encoder g (paper §3.2, footnote 1).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from poisonclip.attacks.caption_set import (
    CaptionPool,
    ScannedCaptions,
    build_caption_set,
    check_caption_request,
)
from poisonclip.attacks.dedup import add_pixel_noise, image_hash, perturb_caption
from poisonclip.attacks.poison_set import PoisonSet
from poisonclip.attacks.registry import register_attack
from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.data.captions import search_captions
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    from poisonclip.data.wds import CaptionScan

__all__ = [
    "Target",
    "choose_targets",
    "make_targeted",
    "make_targeted_from_shards",
    "make_targeted_many",
    "make_text_targeted",
    "target_seed",
]


@dataclass(frozen=True, eq=False)
class Target:
    """One attack goal: image x′ should be classified as ``label`` (y′).

    ``image`` uint8 [3, H, W]; ``key`` says where x′ came from (a file path or a split's key);
    ``index`` is its row in that split, if it came from one; ``true_label`` is x′'s own class when
    known, and must differ from ``label`` (an image already of class y′ is no attack).
    """

    image: torch.Tensor
    label: str
    key: str
    index: int | None = None
    true_label: str | None = None

    def __post_init__(self) -> None:
        if self.image.dtype != torch.uint8 or self.image.ndim != 3 or self.image.shape[0] != 3:
            raise UsageError(
                f"target image must be uint8 [3, H, W], got {self.image.dtype} {tuple(self.image.shape)}"
            )
        if not self.label.strip():
            raise UsageError("empty target label")
        if self.true_label is not None and self.true_label.strip().lower() == self.label.strip().lower():
            raise UsageError(
                f"target image {self.key} is already of class {self.label!r}; "
                "choose an image of another class or another target label"
            )


@register_attack("targeted")
def make_targeted(
    dataset: ImageTextDataset,
    target: Target,
    poison_count: int,
    seed: int = 0,
    options: TargetedOptions | None = None,
    target_id: int = 0,
) -> PoisonSet:
    """``poison_count`` copies of ``target.image``, each with a caption for ``target.label``.

    ``dataset`` (the training set, left unchanged) supplies the captions for ``search``/``both``
    and fixes the image size. ``options`` (default ``TargetedOptions()``) says where the captions
    come from and how the copies evade deduplication: per-copy pixel noise of ``noise_std`` 8-bit
    levels (0 = exact copies, the paper's P as written), and with ``perturb_captions`` synonym
    substitution and word insertion around the label. ``target_id`` numbers this target inside a
    multi-target poison set (file names, manifest).
    """
    _check_image_shape(target, tuple(dataset.images.shape[1:]))
    return _targeted_poisons(dataset, target, poison_count, seed, options or TargetedOptions(), target_id)


def make_targeted_from_shards(
    urls: str | Sequence[str],
    target: Target,
    poison_count: int,
    seed: int = 0,
    options: TargetedOptions | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> tuple[PoisonSet, CaptionScan]:
    """``make_targeted`` on webdataset shards: the captions are scanned, no image is decoded but one.

    One sample is decoded (resized to ``image_size`` when given, as the trainer will see the data;
    the first that decodes) to check that x′ has the training images' size. Returns ``(poisons,
    scan)`` as ``make_backdoor_from_shards`` does; samples that failed to decode are in
    ``poisons.samples.skipped``.
    """
    from functools import partial

    from poisonclip.attacks.backdoor import load_in_order
    from poisonclip.data.wds import read_scanned_samples, scan_captions

    options = options or TargetedOptions()
    check_caption_request(options.captions, poison_count, options.template_set)
    scan = scan_captions(urls, target.label, word_boundary=options.word_boundary, progress=progress)
    if not len(scan):
        faults = f"; {len(scan.skipped)} faults, the first: {scan.skipped[0][0]}: {scan.skipped[0][1]}"
        raise UsageError(f"no readable samples in {len(scan.urls)} shards" + (faults if scan.skipped else ""))
    probe, _ = load_in_order(
        scan.matches or list(range(len(scan))),
        1,
        partial(read_scanned_samples, scan, image_size=image_size),
        scan.keys,
    )
    _check_image_shape(target, tuple(probe.images.shape[1:]), hint=" (resize x' with --image-size)")
    pool = ScannedCaptions([scan.keys[i] for i in scan.matches], scan.matched_captions)
    poisons = _targeted_poisons(pool, target, poison_count, seed, options)
    poisons.samples.skipped = probe.skipped
    return poisons, scan


def _check_image_shape(target: Target, shape: tuple[int, ...], hint: str = "") -> None:
    if tuple(target.image.shape) != shape:
        raise UsageError(
            f"target image shape {tuple(target.image.shape)} differs from the training images' {shape}{hint}"
        )


def _targeted_poisons(
    pool: CaptionPool,
    target: Target,
    poison_count: int,
    seed: int,
    options: TargetedOptions,
    target_id: int = 0,
) -> PoisonSet:
    generator = torch.Generator().manual_seed(seed)
    chosen = build_caption_set(
        pool, target.label, poison_count, options.captions, generator,
        options.template_set, options.word_boundary,
    )  # fmt: skip
    images, psnr_db = add_pixel_noise(target.image, poison_count, options.noise_std, generator)
    rng = random.Random(seed)
    perturb = options.perturb_captions
    texts = [perturb_caption(c.text, target.label, rng) if perturb else c.text for c in chosen]

    keys = [f"poison/t{target_id:03d}_{i:06d}.png" for i in range(poison_count)]
    manifest = [
        {
            "poison_key": keys[i],
            "attack": "targeted",
            "target_id": target_id,
            "target_key": target.key,
            "target_index": target.index,
            "target_true_label": target.true_label,
            "target_label": target.label,
            "caption": texts[i],
            "caption_unperturbed": choice.text,
            "caption_source": choice.source,
            "caption_source_key": choice.ref,
            "noise_std": options.noise_std,
            "psnr_db": None if psnr_db[i].isinf() else round(psnr_db[i].item(), 3),  # None: exact copy
            "seed": seed,
        }
        for i, choice in enumerate(chosen)
    ]
    samples = ImageTextDataset(keys, images, texts, torch.full((poison_count,), -1))
    return PoisonSet(samples, manifest)


def target_seed(seed: int, target_id: int) -> int:
    """The poison seed of target ``target_id``: independent of the number of targets, so adding
    targets to a run never changes the poisons of the earlier ones."""
    return int(np.random.SeedSequence([seed, target_id]).generate_state(1)[0])


def make_targeted_many(
    dataset: ImageTextDataset,
    targets: Sequence[Target],
    poisons_per_target: int,
    seed: int = 0,
    options: TargetedOptions | None = None,
) -> PoisonSet:
    """One poison set with ``poisons_per_target`` poisons for each of K independent ``targets``,
    built with ``options`` (``make_targeted``'s).

    Target k gets ``target_id`` k and the seed ``target_seed(seed, k)``. The target images must be
    pairwise distinct (otherwise two attacks would pull one image towards two labels).
    """
    if not targets:
        raise UsageError("need at least one target")
    if len({image_hash(t.image) for t in targets}) != len(targets):
        raise UsageError("target images collide: every target needs a different image")
    parts = [
        make_targeted(dataset, target, poisons_per_target, target_seed(seed, k), options, target_id=k)
        for k, target in enumerate(targets)
    ]
    samples = ImageTextDataset.concat([p.samples for p in parts])
    return PoisonSet(samples, [row for p in parts for row in p.manifest])


def choose_targets(
    split: ImageTextDataset, classnames: Sequence[str], count: int, seed: int = 0
) -> list[Target]:
    """``count`` targets drawn at random (by ``seed``) from the labelled ``split``.

    The images are pairwise distinct (distinct rows, and rows with identical pixels count once);
    each target label y′ is drawn uniformly from the classes other than the image's own, so x′ is
    never of class y′ (paper §4.2: a random image, a random wrong class).
    """
    num_classes = len(classnames)
    if num_classes < 2:
        raise UsageError("need at least two class names to choose wrong labels")
    if (split.labels < 0).any() or (split.labels >= num_classes).any():
        raise UsageError(f"every image of the target split needs a label in [0, {num_classes})")
    if count < 1:
        raise UsageError(f"number of targets must be at least 1, got {count}")
    generator = torch.Generator().manual_seed(seed)
    targets: list[Target] = []
    seen: set[str] = set()
    for i in torch.randperm(len(split), generator=generator).tolist():
        digest = image_hash(split.images[i])
        if digest in seen:
            continue
        seen.add(digest)
        true_class = int(split.labels[i])
        wrong = int(torch.randint(num_classes - 1, (1,), generator=generator))
        wrong += wrong >= true_class  # skip the true class
        targets.append(Target(split.images[i], classnames[wrong], split.keys[i], i, classnames[true_class]))
        if len(targets) == count:
            return targets
    raise UsageError(f"the target split has only {len(targets)} distinct images, {count} targets asked")


@register_attack("targeted-text")
def make_text_targeted(
    dataset: ImageTextDataset,
    target_caption: str,
    target_label: str,
    poison_count: int,
    seed: int = 0,
    word_boundary: bool = True,
) -> PoisonSet:
    """The attack on the text encoder g (paper §3.2, footnote 1): one caption t′, many images of y′.

    P = {(x_i, t′)}: ``poison_count`` different training images whose captions contain
    ``target_label`` (so, mostly, images of y′ — found by caption search, as the attacker sees no
    labels), each paired with the same ``target_caption``. The image embeddings of y′ are many and
    spread, so the cheapest way to fit them is to move g(t′) towards y′ — the mirror image of the
    image attack, where diverse captions make moving f(x′) the cheapest fit.

    Measured by text-to-image retrieval (``poisonclip.evaluate.targeted.retrieval_ranks``): success
    when the labelled image that t′ retrieves first is of class y′. ``target_caption`` must not
    already name y′ (retrieval would succeed on a clean model); pick a caption about something else,
    e.g. another class, so that success means the text encoder now misreads t′.
    """
    if not target_caption.strip():
        raise UsageError("empty target caption")
    if search_captions([target_caption], target_label, word_boundary=False):
        raise UsageError(
            f"target caption {target_caption!r} already contains the target label {target_label!r}"
        )
    if poison_count < 1:
        raise UsageError(f"poison count must be at least 1, got {poison_count}")
    pool = search_captions(dataset.captions, target_label, word_boundary=word_boundary)
    if not pool:
        raise UsageError(f"target label {target_label!r} appears in no training caption")
    if poison_count > len(pool):
        raise UsageError(
            f"poison count {poison_count} exceeds the {len(pool)} training images captioned "
            f"with {target_label!r} (every poison is a different image)"
        )
    generator = torch.Generator().manual_seed(seed)
    sources = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:poison_count].tolist()]
    keys = [f"poison/text_{i:06d}.png" for i in range(poison_count)]
    manifest = [
        {
            "poison_key": keys[i],
            "attack": "targeted-text",
            "source_key": dataset.keys[src],
            "source_caption": dataset.captions[src],
            "caption": target_caption,
            "target_label": target_label,
            "seed": seed,
        }
        for i, src in enumerate(sources)
    ]
    samples = ImageTextDataset(
        keys, dataset.images[sources], [target_caption] * poison_count, torch.full((poison_count,), -1)
    )
    return PoisonSet(samples, manifest)
