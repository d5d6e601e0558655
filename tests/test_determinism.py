from poisonclip.attacks import Checkerboard, make_backdoor
from poisonclip.data import ImageTextDataset
from poisonclip.experiments import train_and_evaluate_backdoor
from poisonclip.train import load_preset

from .conftest import SMALL


def test_same_seed_gives_identical_poisons_and_metrics(small_train, small_test):
    def run():
        trigger = Checkerboard(3, "random")
        poisons = make_backdoor(small_train, "star", 10, trigger, seed=4)
        data = ImageTextDataset.concat([small_train, poisons.samples])
        metrics, _ = train_and_evaluate_backdoor(
            data, small_test, list(SMALL.classnames), load_preset("tiny"), "star", trigger, progress=False,
            templates="synthetic",
        )  # fmt: skip
        return poisons.manifest, {k: v for k, v in metrics.items() if "second" not in k}  # timings differ

    manifest_a, metrics_a = run()
    manifest_b, metrics_b = run()
    assert manifest_a == manifest_b
    assert metrics_a == metrics_b
    assert set(metrics_a) >= {"zero_shot_acc", "asr", "natural_rate", "zscore"}
