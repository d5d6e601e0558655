import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

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
from poisonclip.detect.knn import nearest_neighbours
from poisonclip.errors import UsageError
from poisonclip.train import load_preset, train_clip
from poisonclip.train.model import create_model, get_model_config, tokenize

NUM_CLEAN, NUM_PLANTS, DIM = 300, 8, 16


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def planted(
    plants: torch.Tensor, plant_text: torch.Tensor, seed: int = 0
) -> tuple[DetectorInputs, torch.Tensor]:
    """Clean pairs in 10 dense class clusters with matching captions, then ``plants`` [M, D] with
    captions ``plant_text`` [M, D] that do not match them, and with the lowest early loss."""
    g = torch.Generator().manual_seed(seed)
    centres = unit(torch.randn(10, DIM, generator=g))
    clean = unit(
        centres[torch.randint(10, (NUM_CLEAN,), generator=g)]
        + 0.3 * torch.randn(NUM_CLEAN, DIM, generator=g) / DIM**0.5
    )
    clean_text = unit(clean + 0.1 * torch.randn(NUM_CLEAN, DIM, generator=g) / DIM**0.5)
    labels = torch.cat([torch.zeros(NUM_CLEAN, dtype=torch.bool), torch.ones(len(plants), dtype=torch.bool)])
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


# Each detector's obvious case. LID and Isolation Forest are not in the first list: a tight cluster
# is *not* their outlier (LID: near-duplicate neighbours give a low dimension; Isolation Forest: a
# cluster masks its members), see test_tight_clusters_are_not_outliers_for_lid_and_isolation_forest.
TIGHT_CLUSTER_DETECTORS = ["clip-score", "dao", "k-distance", "loss-tracking", "slof"]


def test_every_detector_has_a_sign_test():
    assert set(TIGHT_CLUSTER_DETECTORS) | {"lid", "isolation-forest"} == set(list_detectors())


@pytest.mark.parametrize("name", TIGHT_CLUSTER_DETECTORS)
def test_planted_tight_cluster_ranks_first(name):
    """A tight cluster of 8 (fewer than k = 16) away from the clean clusters, with ill-matched
    captions and the lowest early loss: the detector puts exactly the plants on top."""
    inputs, labels = planted(tight_cluster(NUM_PLANTS), tight_cluster(NUM_PLANTS, seed=11))
    assert ranked_first(run_detector(name, inputs), labels)


@pytest.mark.parametrize("name", list_detectors())
def test_planted_sparse_neighbourhoods_rank_first(name):
    """Each plant alone in an empty region: the geometry Huang et al. (ICLR'25) report for CLIP
    backdoor poisons, which the density-ratio detectors (SLOF, DAO) were chosen for."""
    inputs, labels = planted(isolated_points(NUM_PLANTS), isolated_points(NUM_PLANTS, seed=12))
    assert ranked_first(run_detector(name, inputs), labels)


def test_tight_clusters_are_not_outliers_for_lid_and_isolation_forest():
    """The other side of the geometry, kept as it is rather than flipping signs to win: 40
    near-duplicates (more than k = 16) have the *smallest* k-distance and LID ≈ 0; LID (k = 64)
    and Isolation Forest do not single out even the 8-point cluster. The sweep measures which
    geometry the toy's poisons have."""
    inputs, labels = planted(tight_cluster(40), tight_cluster(40, seed=11))
    assert roc_auc(run_detector("k-distance", inputs), labels) == 0.0
    assert roc_auc(run_detector("lid", inputs), labels) == 0.0
    inputs, labels = planted(tight_cluster(NUM_PLANTS), tight_cluster(NUM_PLANTS, seed=11))
    assert not ranked_first(run_detector("lid", inputs), labels)
    assert not ranked_first(run_detector("isolation-forest", inputs), labels)


def test_detectors_do_not_read_the_manifest():
    """Scores depend on the embeddings only: against shuffled labels AUROC is ≈ 0.5."""
    inputs, labels = planted(isolated_points(NUM_PLANTS), isolated_points(NUM_PLANTS, seed=12))
    aurocs = []
    for name in list_detectors():
        scores = run_detector(name, inputs)
        metrics = detection_metrics(scores, labels, seed=0)
        assert metrics["roc_auc"] > 0.9
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


def test_loss_tracker_records_per_sample_losses_by_id(small_train, tmp_path):
    config = load_preset("tiny").replace(epochs=2)
    model_config = get_model_config(config.model)
    tokens = tokenize(small_train.captions, model_config)
    tracker, seen = LossTracker(len(small_train), epochs=1), []
    stats = train_clip(
        create_model(model_config), small_train.images, tokens, config, progress=False,
        on_batch=lambda epoch, ids, losses: (tracker(epoch, ids, losses), seen.append((epoch, ids, losses))),
    )  # fmt: skip
    first_epoch_ids = torch.cat([ids for epoch, ids, _ in seen if epoch == 0])
    assert len(seen) == stats.steps and all(len(ids) == config.batch_size for _, ids, _ in seen)
    assert len(set(first_epoch_ids.tolist())) == len(first_epoch_ids)  # a permutation, no repeats
    losses = tracker.mean()
    assert losses.shape == (len(small_train),)
    assert torch.isnan(losses).sum() == len(small_train) - len(first_epoch_ids)  # the dropped partial batch
    assert losses[seen[0][1]].tolist() == pytest.approx(seen[0][2].double().tolist())
    save_loss_record(tmp_path / "l.json", small_train.keys, losses, epochs=1)
    reloaded = load_loss_record(tmp_path / "l.json", small_train.keys)
    assert torch.equal(reloaded.isnan(), losses.isnan())
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
