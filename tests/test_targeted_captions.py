"""The targeted attack's caption sets (templates, searched captions, both) and its dedup evasion."""

import random
import re
from collections import Counter

import pytest
import torch

from poisonclip.attacks import make_targeted
from poisonclip.attacks.caption_set import build_caption_set, subset_or_repeat
from poisonclip.attacks.dedup import (
    FILLER_WORDS,
    SYNONYMS,
    add_pixel_noise,
    exact_duplicate_filter,
    perturb_caption,
    psnr,
)
from poisonclip.attacks.targeted_spec import DEFAULT_NOISE_STD, TargetedOptions
from poisonclip.data import SHAPES, ImageTextDataset
from poisonclip.data.prompts import TEMPLATE_SETS
from poisonclip.errors import UsageError
from tests.targeted_helpers import make_target, other_label, text_dataset

# --- caption sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("pool", "count"), [(80, 10), (80, 80), (80, 200), (3, 7), (1, 4)])
def test_subset_or_repeat_uses_every_entry_evenly(pool, count):
    idx = subset_or_repeat(pool, count, torch.Generator().manual_seed(0))
    assert idx.shape == (count,)
    uses = Counter(idx.tolist())
    if count <= pool:
        assert len(uses) == count  # a subset: no repeats
    else:
        assert set(uses) == set(range(pool))
        assert set(uses.values()) <= {count // pool, -(-count // pool)}


def test_template_caption_set_subset_and_repeat():
    data = text_dataset(["a red star", "a blue circle"])
    prompts = {t("heart") for t in TEMPLATE_SETS["openai"]}
    g = torch.Generator().manual_seed(0)
    few = build_caption_set(data, "heart", 10, "templates", g)
    assert len(few) == 10 and len({c.text for c in few}) == 10 and {c.text for c in few} <= prompts
    many = build_caption_set(data, "heart", 200, "templates", g)
    counts = Counter(c.text for c in many)
    assert len(many) == 200 and set(counts) == prompts and set(counts.values()) == {2, 3}
    assert all(c.source == "template" and c.ref.startswith("openai#") for c in many)
    synthetic = build_caption_set(data, "heart", 5, "templates", g, template_set="synthetic")
    assert {c.text for c in synthetic} <= {t.format("heart") for t in TEMPLATE_SETS["synthetic"]}


def test_search_caption_set_is_case_insensitive_and_honours_word_boundaries():
    data = text_dataset(["a red ring", "a blue circle", "an earring", "Ring on a mat", "RING"])
    g = torch.Generator().manual_seed(1)
    whole = build_caption_set(data, "ring", 3, "search", g)
    assert sorted(c.ref for c in whole) == ["img/0.png", "img/3.png", "img/4.png"]
    substring = build_caption_set(data, "ring", 4, "search", g, word_boundary=False)
    assert sorted(c.ref for c in substring) == ["img/0.png", "img/2.png", "img/3.png", "img/4.png"]
    repeated = build_caption_set(data, "ring", 7, "search", g)
    assert len(repeated) == 7 and set(Counter(c.ref for c in repeated).values()) == {2, 3}
    assert all(c.text == data.captions[data.keys.index(c.ref)] for c in repeated)


@pytest.mark.parametrize(("count", "templates"), [(1, 1), (7, 4), (10, 5)])
def test_both_caption_sources_split_the_count(count, templates):
    data = text_dataset(["a red ring", "a ring on a mat"])
    chosen = build_caption_set(data, "ring", count, "both", torch.Generator().manual_seed(0))
    sources = Counter(c.source for c in chosen)
    assert sources["template"] == templates and sources["search"] == count - templates


def test_caption_set_bad_inputs():
    data = text_dataset(["a red ring"])
    g = torch.Generator()
    for source in ("search", "both"):
        with pytest.raises(UsageError, match="appears in no training caption"):
            build_caption_set(data, "zebra", 3, source, g)
    assert len(build_caption_set(data, "zebra", 3, "templates", g)) == 3  # templates need no hits
    with pytest.raises(UsageError, match="caption source"):
        build_caption_set(data, "ring", 3, "web", g)
    with pytest.raises(UsageError, match="unknown template set"):
        build_caption_set(data, "ring", 3, "templates", g, template_set="nope")
    with pytest.raises(UsageError, match="at least 1"):
        build_caption_set(data, "ring", 0, "search", g)


# --- dedup evasion --------------------------------------------------------------------------------


def test_noise_makes_copies_distinct_with_psnr_above_40_db(small_test):
    image = small_test.images[0]
    copies, db = add_pixel_noise(image, 64, DEFAULT_NOISE_STD, torch.Generator().manual_seed(0))
    assert copies.shape == (64, *image.shape) and copies.dtype == torch.uint8
    assert len(exact_duplicate_filter(copies)) == 64
    assert (db > 40).all() and torch.allclose(db, psnr(image, copies))
    # configurable: more noise, lower PSNR (std 3 is below 40 dB); none: exact copies
    loud, loud_db = add_pixel_noise(image, 8, 3.0, torch.Generator().manual_seed(0))
    assert len(exact_duplicate_filter(loud)) == 8 and loud_db.max() < db.min()
    exact, exact_db = add_pixel_noise(image, 8, 0.0, torch.Generator())
    assert len(exact_duplicate_filter(exact)) == 1 and exact_db.isinf().all()
    with pytest.raises(UsageError, match="too small"):
        add_pixel_noise(image, 8, 1e-4, torch.Generator())
    with pytest.raises(UsageError, match=">= 0"):
        add_pixel_noise(image, 8, -1.0, torch.Generator())


@pytest.mark.parametrize(
    ("caption", "label"),
    [
        ("a small photo of a star on a dark background", "star"),
        ("Star: a large bright drawing", "star"),
        ("a blurry picture of a basketball hoop, small", "basketball hoop"),
        ("an earring photo", "ring"),
        ("photo", "photo"),
        ("a picture of a picture frame", "picture"),
    ],
)
def test_caption_perturbation_keeps_the_label(caption, label):
    pattern = re.compile(re.escape(label), re.IGNORECASE)
    rng = random.Random(0)
    variants = {perturb_caption(caption, label, rng) for _ in range(50)}
    for variant in variants:
        assert variant != caption
        assert [m.group() for m in pattern.finditer(variant)] == [
            m.group() for m in pattern.finditer(caption)
        ]
    assert len(variants) > 5


def test_perturbation_words_name_no_class():
    words = set(FILLER_WORDS) | set(SYNONYMS) | {s for v in SYNONYMS.values() for s in v}
    assert not words & set(SHAPES)


def test_exact_duplicate_filter_removes_repeated_poisons_unless_evaded(small_train, small_test):
    target = make_target(small_test, 0, other_label(small_test, 0))
    results = {}
    for noise in (0.0, DEFAULT_NOISE_STD):
        poisons = make_targeted(small_train, target, 20, seed=3, options=TargetedOptions(noise_std=noise))
        poisoned = ImageTextDataset.concat([small_train, poisons.samples])
        kept = exact_duplicate_filter(poisoned.images)
        results[noise] = int((kept >= len(small_train)).sum())  # poisons that survive
        assert (kept < len(small_train)).sum() == len(small_train)  # the clean data has no duplicates
    assert results == {0.0: 1, DEFAULT_NOISE_STD: 20}
