"""The backdoor attack (paper §3.3): a trigger on many different images, captioned as the target.

P = {(x_i ⊕ bd, c_i)}: ``poison_count`` different training images of any class, each carrying the
trigger (the paper's checkerboard patch by default; any of ``attacks/triggers``), each paired with
a training caption that contains the target label (found by substring search — no knowledge of the
zero-shot templates).

The attack itself (``backdoor_from_pool``) needs only the sample keys, the matching captions and a
way to decode the chosen images, so the same code poisons an in-memory dataset
(``make_backdoor``) and a shard set that is never decoded as a whole (``make_backdoor_from_shards``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from poisonclip.attacks.poison_set import PoisonSet
from poisonclip.attacks.registry import register_attack
from poisonclip.attacks.triggers import Checkerboard, FitContext, Trigger
from poisonclip.data.captions import search_captions
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError


@register_attack("backdoor")
def make_backdoor(
    dataset: ImageTextDataset,
    target_label: str,
    poison_count: int,
    trigger: Trigger | None = None,
    seed: int = 0,
    word_boundary: bool = True,
    surrogate: Callable[[], tuple[torch.nn.Module, dict]] | None = None,
) -> PoisonSet:
    """Build ``poison_count`` backdoor poisons from ``dataset`` (which is left unchanged).

    Images are drawn without replacement (every poison is a different image); captions are drawn
    from the captions containing ``target_label``, without replacement while enough exist.
    ``trigger`` defaults to a 4x4 checkerboard at the upper-left corner (the toy's, on 32 px; the
    paper's best on 224 px is 16x16); ``surrogate``
    builds a model for a trigger fitted against one that names none (``FitContext``).
    """
    pool = search_captions(dataset.captions, target_label, word_boundary=word_boundary)
    return backdoor_from_pool(
        dataset.keys,
        pool,
        [dataset.captions[i] for i in pool],
        dataset.subset,
        target_label,
        poison_count,
        trigger,
        seed,
        surrogate,
    )


def fit_trigger(
    trigger: Trigger,
    dataset: ImageTextDataset,
    target_label: str,
    surrogate: Callable[[], tuple[torch.nn.Module, dict]] | None = None,
    word_boundary: bool = True,
) -> Trigger:
    """``trigger`` fitted on ``dataset`` as ``make_backdoor`` fits it, without making poisons (to
    evaluate a clean model with the trigger an attacker would have used)."""
    pool = search_captions(dataset.captions, target_label, word_boundary=word_boundary)
    captions = [dataset.captions[i] for i in pool]
    return trigger.fit(
        FitContext(target_label, captions, len(dataset), _images_of(dataset.subset), surrogate)
    )


def _images_of(load_sources: Callable[[list[int]], ImageTextDataset]) -> Callable[[list[int]], torch.Tensor]:
    return lambda indices: load_sources(indices).images


def make_backdoor_from_shards(
    urls: str | Sequence[str],
    target_label: str,
    poison_count: int,
    trigger: Trigger | None = None,
    seed: int = 0,
    word_boundary: bool = True,
    image_size: int | None = None,
    progress: bool = True,
):
    """``make_backdoor`` on webdataset shards: captions are scanned, only the chosen images decoded.

    Returns ``(poisons, scan)``; ``scan`` (a ``CaptionScan``) holds the sample count, the caption
    throughput and the faults met while scanning. Source images are resized and centre-cropped to
    ``image_size`` when given (else they must share one size).
    """
    from functools import partial

    from poisonclip.data.wds import read_scanned_samples, scan_captions

    scan = scan_captions(urls, target_label, word_boundary=word_boundary, progress=progress)
    poisons = backdoor_from_pool(
        scan.keys,
        scan.matches,
        scan.matched_captions,
        partial(read_scanned_samples, scan, image_size=image_size),
        target_label,
        poison_count,
        trigger,
        seed,
    )
    return poisons, scan


def backdoor_from_pool(
    keys: Sequence[str],
    caption_pool: Sequence[int],
    pool_captions: Sequence[str],
    load_sources: Callable[[list[int]], ImageTextDataset],
    target_label: str,
    poison_count: int,
    trigger: Trigger | None = None,
    seed: int = 0,
    surrogate: Callable[[], tuple[torch.nn.Module, dict]] | None = None,
) -> PoisonSet:
    """The backdoor attack on ``keys`` [N] (all candidate samples).

    ``caption_pool`` are the indices of the samples whose caption contains ``target_label`` and
    ``pool_captions`` those captions. ``load_sources(indices)`` decodes the images of the given
    samples, in that order, leaving out (and listing in ``skipped``) those it cannot read; such
    an image is replaced by the next one of the seeded random order, so faults never reduce the
    poison count while enough images remain. The trigger is fitted first where it needs fitting
    (``Trigger.fit``), then applied with the poison generator (random positions, seeded).
    """
    n = len(keys)
    trigger = trigger or Checkerboard()
    if poison_count < 1:
        raise UsageError(f"poison_count must be at least 1, got {poison_count}")
    if poison_count > n:
        raise UsageError(f"poison_count {poison_count} exceeds the {n} images available")
    if not caption_pool:
        raise UsageError(f"target label {target_label!r} appears in no training caption")

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    pool = torch.tensor(caption_pool)
    if len(pool) >= poison_count:
        chosen = torch.randperm(len(pool), generator=generator)[:poison_count]
    else:
        chosen = torch.randint(len(pool), (poison_count,), generator=generator)
    sources, source_idx = load_in_order(order, poison_count, load_sources, keys)
    trigger.check_image_size(sources.images.shape[-1])
    trigger = trigger.fit(FitContext(target_label, pool_captions, n, _images_of(load_sources), surrogate))
    triggered = trigger.apply(sources.images, generator)

    poison_keys = [f"poison/{i:06d}.png" for i in range(poison_count)]
    captions = [pool_captions[j] for j in chosen.tolist()]
    manifest = [
        {
            "poison_key": poison_keys[i],
            "attack": "backdoor",
            "source_key": keys[src],
            "source_label": int(sources.labels[i]),
            "caption": captions[i],
            "caption_source_key": keys[caption_pool[j]],
            "target_label": target_label,
            "trigger": trigger.name,
            "trigger_params": trigger.values(),
            **record,  # where this image carries the trigger, e.g. its patch position
            "seed": seed,
        }
        for i, (src, j, record) in enumerate(zip(source_idx, chosen.tolist(), triggered.records, strict=True))
    ]
    samples = ImageTextDataset(
        poison_keys, triggered.images, captions, torch.full((poison_count,), -1), skipped=sources.skipped
    )
    return PoisonSet(samples, manifest, trigger)


def load_in_order(
    order: list[int],
    count: int,
    load_sources: Callable[[list[int]], ImageTextDataset],
    keys: Sequence[str],
) -> tuple[ImageTextDataset, list[int]]:
    """The first ``count`` samples of ``order`` that load, and their indices."""
    parts, indices, skipped, taken = [], [], [], 0
    while len(indices) < count and taken < len(order):
        batch = order[taken : taken + count - len(indices)]
        taken += len(batch)
        part = load_sources(batch)
        index_of = {keys[i]: i for i in batch}
        indices += [index_of[key] for key in part.keys]
        skipped += part.skipped
        if len(part):
            parts.append(part)
    if len(indices) < count:
        raise UsageError(f"only {len(indices)} of the {len(order)} images could be read; need {count}")
    sources = ImageTextDataset.concat(parts)
    sources.skipped = skipped
    return sources, indices
