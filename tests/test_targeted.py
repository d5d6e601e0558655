import json
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from poisonclip.attacks import (
    Target,
    choose_targets,
    get_attack,
    list_attacks,
    make_targeted,
    make_targeted_many,
    make_text_targeted,
    read_poison_set,
)
from poisonclip.attacks.caption_set import build_caption_set, subset_or_repeat
from poisonclip.attacks.dedup import (
    FILLER_WORDS,
    SYNONYMS,
    add_pixel_noise,
    exact_duplicate_filter,
    perturb_caption,
    psnr,
)
from poisonclip.attacks.targeted import target_seed
from poisonclip.attacks.targeted_spec import DEFAULT_NOISE_STD, TargetedOptions
from poisonclip.cli import build_parser, main
from poisonclip.data import SHAPES, ImageTextDataset
from poisonclip.data.prompts import TEMPLATE_SETS
from poisonclip.errors import UsageError
from poisonclip.evaluate import (
    evaluate_text_targets,
    fit_linear_probe,
    probe_scores,
    probe_split,
    retrieval_ranks,
    success_rate,
    target_ranks,
)
from poisonclip.experiments import train_and_evaluate_targeted
from poisonclip.experiments.targeted_trial import evaluate_trained_targeted, poison_targets
from poisonclip.train import load_preset, train_model

from .conftest import SMALL

CLASSNAMES = list(SHAPES[: SMALL.num_shapes])
TEMPLATES = TargetedOptions(captions="templates")


def text_dataset(captions, image_size=8):
    n = len(captions)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, image_size, image_size)
    return ImageTextDataset(
        [f"img/{i}.png" for i in range(n)], images.clone(), list(captions), torch.full((n,), -1)
    )


def make_target(split, index, label, classnames=CLASSNAMES):
    return Target(split.images[index], label, split.keys[index], index, classnames[int(split.labels[index])])


def other_label(split, index):
    return next(c for c in CLASSNAMES if c != CLASSNAMES[int(split.labels[index])])


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


# --- the attack -----------------------------------------------------------------------------------


def test_targeted_poisons_and_manifest(small_train, small_test):
    label = other_label(small_test, 5)
    target = make_target(small_test, 5, label)
    both = TargetedOptions(captions="both", perturb_captions=True)
    poisons = make_targeted(small_train, target, 30, seed=4, options=both)
    assert len(poisons) == 30 and len(poisons.manifest) == 30
    assert len(exact_duplicate_filter(poisons.samples.images)) == 30
    assert (psnr(target.image, poisons.samples.images) > 40).all()
    assert Counter(r["caption_source"] for r in poisons.manifest) == {"template": 15, "search": 15}
    for i, row in enumerate(poisons.manifest):
        assert row["poison_key"] == poisons.samples.keys[i] and row["caption"] == poisons.samples.captions[i]
        assert label in row["caption_unperturbed"].lower() and label in row["caption"].lower()
        assert row["caption"] != row["caption_unperturbed"]
        assert (row["target_key"], row["target_index"], row["target_label"]) == (target.key, 5, label)
        assert row["target_true_label"] == CLASSNAMES[int(small_test.labels[5])]
        assert row["psnr_db"] > 40 and row["noise_std"] == DEFAULT_NOISE_STD and row["seed"] == 4
        if row["caption_source"] == "search":
            assert (
                small_train.captions[small_train.keys.index(row["caption_source_key"])]
                == row["caption_unperturbed"]
            )
    again = make_targeted(small_train, target, 30, seed=4, options=both)
    other = make_targeted(small_train, target, 30, seed=5, options=both)
    assert again.manifest == poisons.manifest and torch.equal(again.samples.images, poisons.samples.images)
    assert other.manifest != poisons.manifest


def test_registry_has_the_targeted_attacks():
    assert {"targeted", "targeted-text"} <= set(list_attacks())
    assert get_attack("targeted") is make_targeted and get_attack("targeted-text") is make_text_targeted


def test_targeted_bad_inputs(small_train, small_test):
    own = CLASSNAMES[int(small_test.labels[0])]
    with pytest.raises(UsageError, match="already of class"):
        Target(small_test.images[0], own.upper(), "x", 0, own)
    target = make_target(small_test, 0, other_label(small_test, 0))
    with pytest.raises(UsageError, match="appears in no training caption"):
        make_targeted(small_train, Target(target.image, "zebra", "x"), 5)
    assert len(make_targeted(small_train, Target(target.image, "zebra", "x"), 5, options=TEMPLATES)) == 5
    with pytest.raises(UsageError, match="differs from the training images"):
        make_targeted(small_train, Target(target.image[:, :16, :16].contiguous(), "star", "x"), 5)
    with pytest.raises(UsageError, match="uint8"):
        Target(target.image.float(), "star", "x")


def test_k_targets_never_collide_and_never_of_the_target_class(small_test):
    targets = choose_targets(small_test, CLASSNAMES, 60, seed=2)
    assert len({t.index for t in targets}) == 60 and len({t.key for t in targets}) == 60
    assert len(exact_duplicate_filter(torch.stack([t.image for t in targets]))) == 60
    for t in targets:
        assert t.true_label == CLASSNAMES[int(small_test.labels[t.index])] != t.label
        assert torch.equal(t.image, small_test.images[t.index])
    assert len({t.label for t in targets}) > 5  # labels drawn at random
    # a split with repeated images: repeats count once
    dup = small_test.subset([0, 0, 1, 1, 2])
    assert len(choose_targets(dup, CLASSNAMES, 3, seed=0)) == 3
    with pytest.raises(UsageError, match="only 3 distinct images"):
        choose_targets(dup, CLASSNAMES, 4, seed=0)
    with pytest.raises(UsageError, match="needs a label"):
        choose_targets(text_dataset(["a", "b"]), CLASSNAMES, 1)


def test_many_targets_in_one_poison_set(small_train, small_test, tmp_path):
    targets = choose_targets(small_test, CLASSNAMES, 3, seed=0)
    poisons = make_targeted_many(small_train, targets, 4, seed=7, options=TEMPLATES)
    assert len(poisons) == 12 and len(set(poisons.samples.keys)) == 12
    assert [r["target_id"] for r in poisons.manifest] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r["seed"] for r in poisons.manifest[::4]] == [target_seed(7, k) for k in range(3)]
    # adding targets never changes the poisons of the earlier ones
    first = make_targeted_many(small_train, targets[:1], 4, seed=7, options=TEMPLATES)
    assert first.manifest == poisons.manifest[:4]
    # written files keep one image per poison (distinct names across targets)
    from poisonclip.attacks import write_poison_set

    back = read_poison_set(write_poison_set(tmp_path / "p", poisons))
    assert torch.equal(back.samples.images, poisons.samples.images)
    with pytest.raises(UsageError, match="collide"):
        make_targeted_many(small_train, [targets[0], targets[0]], 2)


def test_text_targeted_pairs_one_caption_with_images_of_the_label(small_train):
    poisons = make_text_targeted(small_train, "a photo of a circle", "star", 10, seed=1)
    sources = [r["source_key"] for r in poisons.manifest]
    assert len(set(sources)) == 10 and set(poisons.samples.captions) == {"a photo of a circle"}
    for i, key in enumerate(sources):
        j = small_train.keys.index(key)
        assert "star" in small_train.captions[j].lower()
        assert torch.equal(poisons.samples.images[i], small_train.images[j])
    with pytest.raises(UsageError, match="already contains"):
        make_text_targeted(small_train, "a STAR", "star", 3)
    with pytest.raises(UsageError, match="exceeds"):
        make_text_targeted(small_train, "a circle", "star", 10_000)


# --- evaluation -----------------------------------------------------------------------------------


def test_target_ranks_and_success_rate():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4], [0.3, 0.3, 0.1]])
    assert target_ranks(scores, torch.tensor([1, 1, 1])).tolist() == [0, 2, 0]  # a tie counts as a win
    assert target_ranks(scores, torch.tensor([2, 0, 2])).tolist() == [1, 0, 2]
    result = success_rate(torch.tensor([[True, False], [True, True], [False, False]]))
    assert result["success_rate"] == pytest.approx(0.5)
    assert result["success_rate_std"] == pytest.approx(np.std([0.5, 1.0, 0.0], ddof=1))
    assert np.isnan(success_rate(torch.tensor([[True, False]]))["success_rate_std"])


def test_retrieval_ranks():
    images = torch.eye(4)  # image i points along axis i
    labels = torch.tensor([0, 1, 1, 2])
    texts = torch.nn.functional.normalize(torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0.5], [0, 0, 0, 1]]), dim=1)
    assert retrieval_ranks(texts, images, labels, torch.tensor([1, 2, 1])).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="no image"):
        retrieval_ranks(texts, images, labels, torch.tensor([3, 0, 0]))


def test_linear_probe_on_separable_embeddings():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    labels = torch.arange(4).repeat(50)
    features = torch.nn.functional.normalize(centres[labels] + 0.3 * torch.randn(200, 16, generator=g), dim=1)
    fit, held = probe_split(labels)
    assert len(fit) == len(held) == 100 and not set(fit.tolist()) & set(held.tolist())
    assert Counter(labels[fit].tolist()) == Counter(labels[held].tolist())  # class-balanced
    probe = fit_linear_probe(features[fit], labels[fit])
    scores = probe_scores(probe, features[held], 5)  # class 4 has no examples
    assert scores.shape == (100, 5) and scores[:, 4].isinf().all()
    assert (scores.argmax(dim=1) == labels[held]).all()
    two = fit_linear_probe(features[labels < 2], labels[labels < 2])
    assert (probe_scores(two, features[labels < 2], 4).argmax(dim=1) == labels[labels < 2]).all()
    with pytest.raises(UsageError, match="two classes"):
        fit_linear_probe(features[:3], torch.zeros(3, dtype=torch.long))


def test_targeted_trial_runs_end_to_end(small_train, small_test):
    tiny = load_preset("tiny")
    poisoning = poison_targets(
        small_train, small_test, CLASSNAMES, num_targets=3, poisons_per_target=2, seed=1
    )
    metrics, evaluation = train_and_evaluate_targeted(poisoning, small_test, CLASSNAMES, tiny, progress=False)
    assert metrics["poison_count"] == 6 and metrics["poison_rate"] == pytest.approx(6 / 406)
    for key in (
        "zero_shot_success_rate",
        "probe_success_rate",
        "zero_shot_acc",
        "probe_acc",
        "train_seconds",
    ):
        assert isinstance(metrics[key], float) and metrics[key] >= 0
    assert (metrics["num_targets"], metrics["num_eval"], metrics["num_probe_fit"]) == (3, 60 - 3, 60)
    assert metrics["min_psnr_db"] > 40
    fit, _ = probe_split(small_test.labels)
    for row in evaluation.per_target:
        assert row["target_key"] not in {small_test.keys[i] for i in fit}
        assert row["true_label"] != row["target_label"]
        assert 0 <= row["zero_shot_rank"] < len(CLASSNAMES)
        assert row["zero_shot_success"] == (row["zero_shot_rank"] == 0)
    json.dumps(metrics), json.dumps(evaluation.per_target)  # plain values for the results store

    # 0 poisons: the same targets on a clean model (the chance level), evaluated step by step
    clean = poison_targets(small_train, small_test, CLASSNAMES, 3, 0, seed=1)
    assert clean.dataset is small_train and clean.poisons is None
    assert [t.key for t in clean.targets] == [r["target_key"] for r in evaluation.per_target]
    assert all(small_test.keys[t.index] == t.key for t in clean.targets)  # rows of the whole split
    model, model_config, stats = train_model(clean.dataset, tiny, progress=False)
    clean_metrics, _ = evaluate_trained_targeted(model, model_config, stats, clean, small_test, CLASSNAMES)
    assert clean_metrics["poison_count"] == 0 and clean_metrics["min_psnr_db"] is None

    text = evaluate_text_targets(model, ["a photo of a circle"], ["star"], small_test, CLASSNAMES, 16)
    assert text.metrics["text_mean_rank"] >= 0 and text.per_target[0]["target_label"] == "star"


# --- CLI ------------------------------------------------------------------------------------------


def run(args):
    return main([str(a) for a in args])


def test_cli_help_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["poison", "targeted", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--target-index", "--captions", "--noise-std", "--perturb-captions"))
    flags = ["--data", "d", "--out", "o", "--target-index", "0", "--target-label", "y", "--poison-count", "1"]
    args = build_parser().parse_args(["poison", "targeted", *flags])
    assert args.noise_std == DEFAULT_NOISE_STD


def test_cli_poison_targeted_from_index_and_from_file(small_data_dir, small_test, tmp_path, capsys):
    index = 7
    label = other_label(small_test, index)
    out = tmp_path / "p"
    assert run(["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", out,
                "--target-index", index, "--target-split", small_data_dir / "test.csv",
                "--target-label", label, "--poison-count", 12, "--captions", "both",
                "--perturb-captions", "--seed", 2]) == 0  # fmt: skip
    assert "min PSNR" in capsys.readouterr().out
    poisons = read_poison_set(out)
    assert len(poisons) == 12 and len(exact_duplicate_filter(poisons.samples.images)) == 12
    assert {r["target_index"] for r in poisons.manifest} == {index}
    assert {r["target_true_label"] for r in poisons.manifest} == {CLASSNAMES[int(small_test.labels[index])]}

    image_file = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 48, 3), dtype=np.uint8)).save(image_file)
    out2 = tmp_path / "q"
    assert run(["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", out2,
                "--target-image", image_file, "--target-label", "star", "--poison-count", 3,
                "--noise-std", 0]) == 0  # fmt: skip
    back = read_poison_set(out2)
    assert back.samples.images.shape == (3, 3, 32, 32) and (back.samples.images == 0).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-index", 0, "--target-label", "zebra"], "appears in no training caption"),
        (["--target-index", 0, "--target-label", "OWN"], "already of class"),
        (["--target-index", 10_000, "--target-label", "star"], "outside the 120 samples"),
        (["--target-image", "missing.png", "--target-label", "star"], "cannot read target image"),
    ],
)
def test_cli_bad_inputs_exit_2_and_write_nothing(
    small_data_dir, small_test, tmp_path, capsys, extra, message
):
    extra = [CLASSNAMES[int(small_test.labels[0])] if a == "OWN" else a for a in extra]
    out = tmp_path / "p"
    args = ["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", out,
            "--target-split", small_data_dir / "test.csv", "--poison-count", 5, *extra]  # fmt: skip
    assert run(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]  # one line (CSV progress bars aside)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_target_index_needs_a_split(small_data_dir, tmp_path, capsys):
    assert run(["poison", "targeted", "--data", small_data_dir / "train.csv", "--out", tmp_path / "p",
                "--target-index", 0, "--target-label", "star", "--poison-count", 2]) == 2  # fmt: skip
    assert "--target-split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # x' from a file and an index at once: argparse's error
        main(["poison", "targeted", "--target-image", "a.png", "--target-index", "0"])
    assert exit_info.value.code == 2
