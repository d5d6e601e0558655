"""The backdoor attack (paper §3.3): a patch on many different images, captioned as the target.

P = {(x_i ⊕ bd, c_i)}: ``poison_count`` different training images of any class, each with the
checkerboard pasted on, each paired with a training caption that contains the target label
(found by substring search — no knowledge of the zero-shot templates).
"""

from __future__ import annotations

import torch

from poisonclip.attacks.patch import apply_patch, check_patch, patch_positions
from poisonclip.attacks.poison_set import PoisonSet
from poisonclip.attacks.registry import register_attack
from poisonclip.data.captions import search_captions
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError


@register_attack("backdoor")
def make_backdoor(
    dataset: ImageTextDataset,
    target_label: str,
    poison_count: int,
    patch_size: int = 4,
    placement: str = "consistent",
    seed: int = 0,
    word_boundary: bool = True,
) -> PoisonSet:
    """Build ``poison_count`` backdoor poisons from ``dataset`` (which is left unchanged).

    Images are drawn without replacement (every poison is a different image); captions are drawn
    from the captions containing ``target_label``, without replacement while enough exist.
    """
    n, image_size = len(dataset), dataset.images.shape[-1]
    check_patch(image_size, patch_size, placement)
    if poison_count < 1:
        raise UsageError(f"poison_count must be at least 1, got {poison_count}")
    if poison_count > n:
        raise UsageError(f"poison_count {poison_count} exceeds the {n} images available")
    caption_pool = search_captions(dataset.captions, target_label, word_boundary=word_boundary)
    if not caption_pool:
        raise UsageError(f"target label {target_label!r} appears in no training caption")

    generator = torch.Generator().manual_seed(seed)
    image_idx = torch.randperm(n, generator=generator)[:poison_count]
    pool = torch.tensor(caption_pool)
    if len(pool) >= poison_count:
        caption_idx = pool[torch.randperm(len(pool), generator=generator)[:poison_count]]
    else:
        caption_idx = pool[torch.randint(len(pool), (poison_count,), generator=generator)]
    positions = patch_positions(poison_count, image_size, patch_size, placement, generator)
    images = apply_patch(dataset.images[image_idx], positions, patch_size)

    keys = [f"poison/{i:06d}.png" for i in range(poison_count)]
    captions = [dataset.captions[i] for i in caption_idx.tolist()]
    manifest = [
        {
            "poison_key": keys[i],
            "attack": "backdoor",
            "source_key": dataset.keys[src],
            "source_label": int(dataset.labels[src]),
            "caption": captions[i],
            "caption_source_key": dataset.keys[cap],
            "target_label": target_label,
            "patch": {"y": int(y), "x": int(x), "size": patch_size},
            "placement": placement,
            "seed": seed,
        }
        for i, (src, cap, (y, x)) in enumerate(
            zip(image_idx.tolist(), caption_idx.tolist(), positions.tolist(), strict=True)
        )
    ]
    samples = ImageTextDataset(keys, images, captions, torch.full((poison_count,), -1))
    return PoisonSet(samples, manifest)
