"""The targeted attack: its poisons and manifest, many targets, text targets, and its evaluation."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

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
from poisonclip.attacks.dedup import exact_duplicate_filter, psnr
from poisonclip.attacks.targeted import target_seed
from poisonclip.attacks.targeted_spec import DEFAULT_NOISE_STD, TargetedOptions
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
from poisonclip.train.model import tokenizer_for
from tests.targeted_helpers import CLASSNAMES, make_target, other_label, text_dataset

TEMPLATES = TargetedOptions(captions="templates")


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
    metrics, evaluation = train_and_evaluate_targeted(
        poisoning, small_test, CLASSNAMES, tiny, progress=False, templates="synthetic"
    )
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
    clean_metrics, _ = evaluate_trained_targeted(
        model, model_config, stats, clean, small_test, CLASSNAMES, "synthetic"
    )
    assert clean_metrics["poison_count"] == 0 and clean_metrics["min_psnr_db"] is None

    text = evaluate_text_targets(
        model, ["a photo of a circle"], ["star"], small_test, CLASSNAMES, tokenizer_for(model_config)
    )
    assert text.metrics["text_mean_rank"] >= 0 and text.per_target[0]["target_label"] == "star"
