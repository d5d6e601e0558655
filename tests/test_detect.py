import importlib
import math
import pkgutil

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

import poisonclip.detect
from poisonclip.detect import (
    DetectorInputs,
    LossTracker,
    detection_metrics,
    fpr_at_recall,
    list_detectors,
    load_loss_record,
    poison_labels,
    pr_auc,
    roc_auc,
    run_detector,
    save_loss_record,
)
from poisonclip.detect.knn import nearest_neighbours, over_batches
from poisonclip.detect.registry import BUILTIN_DETECTORS, get_detector
from poisonclip.errors import UsageError
from poisonclip.train import load_preset, train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.objectives import clip_loss_per_sample
from poisonclip.train.preprocess import normalize_images

# 1,016 clean pairs and 8 plants: in the default batches of 128, one plant a batch on average,
# and each clean pair has ~25 same-class images and captions in its batch (more than k + 1).
NUM_CLEAN, NUM_PLANTS, DIM, BATCH = 1016, 8, 16, 128


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def planted(
    plants: torch.Tensor, plant_text: torch.Tensor, seed: int = 0, num_clean: int = NUM_CLEAN
) -> tuple[DetectorInputs, torch.Tensor]:
    """Clean pairs in 10 dense class clusters with matching captions, then ``plants`` [M, D] with
    captions ``plant_text`` [M, D] that do not match them, and with the lowest early loss."""
    g = torch.Generator().manual_seed(seed)
    centres = unit(torch.randn(10, DIM, generator=g))
    clean = unit(
        centres[torch.randint(10, (num_clean,), generator=g)]
        + 0.3 * torch.randn(num_clean, DIM, generator=g) / DIM**0.5
    )
    clean_text = unit(clean + 0.1 * torch.randn(num_clean, DIM, generator=g) / DIM**0.5)
    labels = torch.cat([torch.zeros(num_clean, dtype=torch.bool), torch.ones(len(plants), dtype=torch.bool)])
    early_loss = torch.rand(len(labels), generator=g, dtype=torch.float64) + 1 - labels.double()
    inputs = DetectorInputs(torch.cat([clean, plants]), torch.cat([clean_text, plant_text]), early_loss)
    return inputs, labels


def tight_cluster(count: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return unit(unit(torch.randn(1, DIM, generator=g)) + 0.01 * torch.randn(count, DIM, generator=g))


def isolated_points(count: int, seed: int = 2) -> torch.Tensor:
    """Each plant alone in an empty region: Huang et al.'s sparser neighbourhoods."""
    return unit(torch.randn(count, DIM, generator=torch.Generator().manual_seed(seed)))


def ranked_first(scores: torch.Tensor, labels: torch.Tensor) -> bool:
    return bool(labels[torch.argsort(scores, descending=True)[: int(labels.sum())]].all())


KNN = ["dao", "k-distance", "lid", "slof"]
BATCHED = [*KNN, "isolation-forest"]


def test_every_detector_has_a_sign_test():
    assert set(BATCHED) | {"clip-score", "loss-tracking"} == set(list_detectors())


def test_the_listed_builtin_detectors_are_what_their_modules_register():
    for module in pkgutil.iter_modules(poisonclip.detect.__path__, "poisonclip.detect."):
        importlib.import_module(module.name)
    assert list_detectors() == sorted(BUILTIN_DETECTORS)  # a new detector needs its line in the table
    for name, module in BUILTIN_DETECTORS.items():
        assert get_detector(name).__module__ == module


@pytest.mark.parametrize("name", list_detectors())
def test_planted_sparse_neighbourhoods_rank_first(name):
    """Each plant alone in an empty region, with an ill-matched caption and the lowest early
    loss: the geometry Huang et al. (ICLR'25) report for CLIP backdoor poisons. Every detector, in
    its default (batch) protocol at ≤ 1 plant a batch, ranks the plants on top (ROC-AUC ≥ 0.999:
    a clean pair of a sparse region may sit among them)."""
    inputs, labels = planted(isolated_points(NUM_PLANTS), isolated_points(NUM_PLANTS, seed=12))
    assert NUM_PLANTS / math.ceil(len(inputs) / BATCH) <= 1  # plants a batch
    assert roc_auc(run_detector(name, inputs), labels) >= 0.999


@pytest.mark.parametrize("name", KNN)
def test_the_reference_set_decides_which_way_a_cluster_goes(name):
    """20 near-duplicate plants (more than k = 16) among 2,540 clean pairs. Over all pairs each
    plant's neighbours are the other plants: the k-distance and LID are the *smallest* and the
    density ratios ≈ 1, so the plants rank below the clean pairs (ROC-AUC 0–0.31). In batches of
    128 (one plant a batch on average, as Huang et al.'s batches at their poison rates) a plant's
    neighbours are clean pairs far away, and the same detector ranks them first (ROC-AUC ≥ 0.997)."""
    inputs, labels = planted(tight_cluster(20), tight_cluster(20, seed=11), num_clean=2540)
    assert roc_auc(run_detector(name, inputs), labels) > 0.99
    assert roc_auc(run_detector(name, inputs, reference="all", normalize=True), labels) < 0.5


def naive_batch_scores(image: torch.Tensor, text: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Huang et al.'s four k-NN scores for one batch, point by point from their code's formulas:
    pool = the batch's images and captions without the query pair's own; dₖ = the (k+1)-th pool
    distance; a pool point's dₖ and LID from its distances to all 2B pool points (self included)."""
    b, pool = len(image), torch.cat([image, text]).double()
    full = [sorted(torch.linalg.vector_norm(pool - p, dim=1).tolist()) for p in pool]  # [2B][2B]

    def lid(row: list[float]) -> float:
        return -k / sum(math.log(row[i] / row[k] + 1e-4) for i in range(k))

    out = {"k-distance": [], "slof": [], "dao": [], "lid": []}
    for i in range(b):
        others = [j for j in range(2 * b) if j not in (i, b + i)]
        dist = {j: torch.linalg.vector_norm(pool[j] - image[i].double()).item() for j in others}
        ranked = sorted(others, key=lambda j: dist[j])
        a = [dist[j] for j in ranked]
        near = ranked[:k]
        out["k-distance"].append(a[k])
        out["slof"].append(sum(a[k] / full[o][k] for o in near) / k)
        out["dao"].append(sum(lid(full[o]) * math.log(a[k] / full[o][k]) for o in near) / k)
        out["lid"].append(lid(a))
    return {name: torch.tensor(values, dtype=torch.float64) for name, values in out.items()}


@pytest.mark.parametrize("name", KNN)
def test_batch_scores_equal_a_naive_reference(name):
    """One batch holding every pair (batch_size = N, one shuffle): the vectorised scores equal the
    point-by-point formulas of Huang et al.'s code (with their neighbours' rows at the true index)."""
    g = torch.Generator().manual_seed(4)
    image, text = (
        3 * torch.randn(24, 6, generator=g),
        3 * torch.randn(24, 6, generator=g),
    )  # raw: not unit norm
    k = 5
    scores = run_detector(name, DetectorInputs(image, text), k=k, batch_size=24, reshuffles=1)
    assert torch.allclose(scores, naive_batch_scores(image, text, k)[name], rtol=1e-9, atol=1e-9)


def test_over_batches_scores_every_sample_once_a_shuffle():
    seen = []

    def score(ids: torch.Tensor) -> torch.Tensor:
        seen.append(ids)
        return torch.full((len(ids),), float(len(seen) % 2))

    scores = over_batches(10, score, batch_size=4, reshuffles=2, seed=0)
    assert [len(ids) for ids in seen] == [4, 3, 3, 4, 3, 3]  # ⌈10 / 4⌉ = 3 batches, split evenly
    assert sorted(torch.cat(seen[:3]).tolist()) == list(range(10))
    expected = torch.zeros(10, dtype=torch.float64)
    for number, ids in enumerate(seen, 1):
        expected[ids] += (number % 2) / 2
    assert torch.equal(scores, expected)
    with pytest.raises(UsageError, match="fewer than k"):
        run_detector("lid", DetectorInputs(torch.randn(40, 4), torch.randn(40, 4)), batch_size=20)
    with pytest.raises(UsageError, match="batch protocol"):
        run_detector("slof", DetectorInputs(torch.randn(40, 4), torch.randn(40, 4)), space="joint")


# poisonclip's earlier all-pairs variant: each detector's obvious case. LID and Isolation Forest
# are not in the first list: a tight cluster is *not* their outlier (LID: near-duplicate
# neighbours give a low dimension; Isolation Forest: a cluster masks its members).
TIGHT_CLUSTER_DETECTORS = ["dao", "k-distance", "slof"]
ALL_PAIRS = {"reference": "all", "normalize": True}


@pytest.mark.parametrize("name", TIGHT_CLUSTER_DETECTORS)
def test_all_pairs_rank_a_tight_cluster_smaller_than_k_first(name):
    inputs, labels = planted(tight_cluster(NUM_PLANTS), tight_cluster(NUM_PLANTS, seed=11), num_clean=300)
    assert ranked_first(run_detector(name, inputs, **ALL_PAIRS), labels)


def test_all_pairs_tight_clusters_are_not_outliers_for_lid_and_isolation_forest():
    """The other side of the geometry, kept as it is rather than flipping signs to win: 40
    near-duplicates (more than k = 16) have the *smallest* k-distance and LID ≈ 0 over all pairs;
    LID (k = 64) and Isolation Forest do not single out even the 8-point cluster."""
    inputs, labels = planted(tight_cluster(40), tight_cluster(40, seed=11), num_clean=300)
    assert roc_auc(run_detector("k-distance", inputs, **ALL_PAIRS), labels) == 0.0
    assert roc_auc(run_detector("lid", inputs, **ALL_PAIRS), labels) == 0.0
    inputs, labels = planted(tight_cluster(NUM_PLANTS), tight_cluster(NUM_PLANTS, seed=11), num_clean=300)
    assert not ranked_first(run_detector("lid", inputs, **ALL_PAIRS), labels)
    assert not ranked_first(run_detector("isolation-forest", inputs, reference="all"), labels)


def test_detectors_do_not_read_the_manifest():
    """Scores depend on the embeddings only: against shuffled labels AUROC is ≈ 0.5."""
    inputs, labels = planted(isolated_points(NUM_PLANTS), isolated_points(NUM_PLANTS, seed=12))
    aurocs = []
    for name in list_detectors():
        scores = run_detector(name, inputs, **({"reshuffles": 1} if name in BATCHED else {}))  # fast
        metrics = detection_metrics(scores, labels, seed=0)
        assert metrics["roc_auc"] > 0.95
        for seed in range(20):
            shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
            aurocs.append(roc_auc(scores, shuffled))
    assert abs(np.mean(aurocs) - 0.5) < 0.05


def test_nearest_neighbours_are_exact_in_small_chunks():
    x = unit(torch.randn(97, 8, generator=torch.Generator().manual_seed(0)))
    distances, indices = nearest_neighbours(x, 5, max_elements=97 * 3)  # chunks of 3 queries
    full = torch.cdist(x, x).fill_diagonal_(float("inf"))
    expected, expected_idx = torch.topk(full, 5, largest=False)
    assert torch.allclose(distances, expected, atol=1e-5)
    assert torch.equal(indices, expected_idx)
    with pytest.raises(UsageError, match="k must be"):
        nearest_neighbours(x, 97)


def test_unknown_detector_or_parameter_is_a_usage_error():
    inputs, _ = planted(isolated_points(4), isolated_points(4, seed=12))
    with pytest.raises(UsageError, match="unknown detector"):
        run_detector("magic", inputs)
    with pytest.raises(UsageError, match="takes no parameter"):
        run_detector("clip-score", inputs, k=3)
    with pytest.raises(UsageError, match="loss-tracking needs"):
        run_detector("loss-tracking", DetectorInputs(inputs.image, inputs.text))


@pytest.mark.parametrize("seed", range(5))
def test_scores_equal_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(200, generator=g) < 0.1
    labels[0], labels[1] = True, False
    scores = torch.randint(0, 30, (200,), generator=g).double() + 2.0 * labels  # many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert pr_auc(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    assert fpr_at_recall(scores, labels, 0.95) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_poison_labels_follow_the_manifest_keys():
    manifest = [{"poison_key": "poison/000001.png"}, {"poison_key": "poison/000000.png"}]
    labels = poison_labels(["a.png", "poison/000000.png", "b.png", "poison/000001.png"], manifest)
    assert labels.tolist() == [False, True, False, True]


def test_loss_tracker_is_an_eval_pass_after_each_early_epoch(small_train, tmp_path):
    """ABL as Huang et al. run it: after each of the first epochs, every sample's CLIP loss in an
    eval-mode pass over shuffled batches (none dropped), averaged over those epochs."""
    config = load_preset("tiny").replace(epochs=3)
    model_config = get_model_config(config.model)
    tokens = tokenize(small_train.captions, model_config)
    tracker, modes = LossTracker(len(small_train), epochs=2, batch_size=50, seed=0), []

    def after_epoch(model, epoch, images, tokens):
        modes.append(model.training)
        tracker(model, epoch, images, tokens)
        modes.append(model.training)

    model = create_model(model_config)
    train_clip(model, small_train.images, tokens, config, progress=False, on_epoch_end=after_epoch)
    assert modes == [True, False, True, False, True, True] and torch.equal(
        tracker.counts, torch.full((len(small_train),), 2.0)
    )

    # One more pass on the trained model equals the loss of each sample within its batch.
    probe = LossTracker(len(small_train), epochs=1, batch_size=50, seed=7)
    probe(model, 0, small_train.images, tokens)
    ids = torch.randperm(len(small_train), generator=torch.Generator().manual_seed(7))[:50]
    with torch.no_grad():
        image = model.encode_image(normalize_images(small_train.images[ids]), normalize=True)
        text = model.encode_text(tokens[ids], normalize=True)
        expected = clip_loss_per_sample(image, text, model.logit_scale.exp()).double()
    assert probe.mean()[ids].tolist() == pytest.approx(expected.tolist(), rel=1e-5)

    losses = tracker.mean()
    save_loss_record(tmp_path / "l.json", small_train.keys, losses, epochs=2)
    reloaded = load_loss_record(tmp_path / "l.json", small_train.keys)
    assert torch.allclose(reloaded, losses)
    with pytest.raises(UsageError, match="differ"):
        load_loss_record(tmp_path / "l.json", small_train.keys[::-1])


def test_a_poison_set_on_disk_is_keyed_as_its_manifest(small_data_dir, small_train, tmp_path):
    from poisonclip.attacks import make_backdoor, write_poison_set
    from poisonclip.data import ImageTextDataset, read_csv_dataset

    poisons = make_backdoor(small_train, "star", 6, seed=1)
    write_poison_set(tmp_path / "p", poisons)
    trained_on = ImageTextDataset.concat(
        [small_train, read_csv_dataset(tmp_path / "p" / "poisons.csv", progress=False)]
    )
    assert trained_on.keys[-6:] == [row["poison_key"] for row in poisons.manifest]
    assert (
        poison_labels(trained_on.keys, poisons.manifest).tolist() == [False] * len(small_train) + [True] * 6
    )
