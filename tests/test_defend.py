import importlib
import math
import pkgutil

import pytest
import torch

import poisonclip.defend
from poisonclip.attacks import make_backdoor
from poisonclip.data import ImageTextDataset
from poisonclip.defend import (
    DefenseContext,
    NearestNeighbourBank,
    RoClipObjective,
    RoClipParams,
    SafeClipParams,
    apply_defense,
    filter_manifest,
    flag_top,
    full_batches,
    get_defense,
    high_similarity_probability,
    list_defenses,
    named_classes,
    parse_defense,
    run_safeclip,
    safe_split,
)
from poisonclip.defend.registry import BUILTIN_DEFENSES
from poisonclip.detect import poison_labels
from poisonclip.errors import UsageError
from poisonclip.train import load_checkpoint, load_preset, save_checkpoint, train_model
from poisonclip.train.model import create_model, get_model_config, tokenize
from poisonclip.train.objectives import Batch, clip_loss_per_sample

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = load_preset("tiny")


class FixedModel(torch.nn.Module):
    """Encoders that return given embeddings whatever the input (for known-input tests)."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.image, self.text = image, text

    def encode_image(self, images, normalize=True):
        return self.image[: len(images)]

    def encode_text(self, tokens, normalize=True):
        return self.text[: len(tokens)]


def identity(x):
    return x


@pytest.fixture(scope="module")
def poisoned(small_train):
    poisons = make_backdoor(small_train, "star", 20, seed=0)
    return ImageTextDataset.concat([small_train, poisons.samples]), poisons


@pytest.fixture(scope="module")
def undefended(poisoned):
    dataset, _ = poisoned
    model, _, _ = train_model(dataset, TINY, progress=False)
    return model


def test_the_listed_builtin_defenses_are_what_their_modules_register():
    for module in pkgutil.iter_modules(poisonclip.defend.__path__, "poisonclip.defend."):
        importlib.import_module(module.name)
    # a new defense needs its line in the table ("none" is the registry module's own)
    assert list_defenses() == sorted({*BUILTIN_DEFENSES, "none"})
    for name, module in BUILTIN_DEFENSES.items():
        assert get_defense(name).fn.__module__ == module


def test_registry_and_specs():
    assert list_defenses() == ["cleanclip", "filter", "none", "roclip", "safeclip"]
    name, params = parse_defense("filter:k-distance@2.5%")
    assert (name, params.detector, params.fraction) == ("filter", "k-distance", 0.025)
    assert parse_defense("roclip")[1].break_epoch == 2
    assert parse_defense("roclip(pool_size=256)")[1].pool_size == 256
    assert parse_defense("cleanclip(lrs=1e-5 1e-4, epochs=5)")[1].lrs == (1e-5, 1e-4)
    assert parse_defense("filter(detector=lid, fraction=0.1)")[1] == parse_defense("filter:lid@10%")[1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("magic", "unknown defense"),
        ("filter:magic@5%", "unknown detector"),
        ("filter:slof@0%", "in \\(0, 1\\)"),
        ("filter:slof@100%", "in \\(0, 1\\)"),
        ("filter:slof", "filter:<detector>@<percent>%"),
        ("filter:slof@x%", "not a number"),
        ("roclip(pool=3)", "has no parameter"),
        ("roclip(pool_size=2.5)", "not a whole number"),
    ],
)
def test_bad_defense_specs_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_defense(spec)


def test_a_defense_without_what_it_needs_is_a_usage_error(poisoned):
    with pytest.raises(UsageError, match="cleanclip needs the undefended model and clean pairs"):
        apply_defense("cleanclip", DefenseContext(TINY, poisoned[0]))


def test_flag_top_drops_the_ceiling_of_the_fraction_ties_by_order():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2])
    assert flag_top(scores, 0.2).tolist() == [False, True, False, False, False]  # tie: earlier first
    assert flag_top(scores, 0.5).tolist() == [False, True, True, True, False]  # ceil(2.5) = 3


def test_filter_then_retrain_keeps_the_manifest_keyed_by_sample(poisoned, undefended):
    dataset, poisons = poisoned
    outcome = apply_defense("filter:clip-score@10%", DefenseContext(TINY, dataset, undefended))
    assert int(outcome.flagged.sum()) == math.ceil(0.1 * len(dataset)) == outcome.record["num_dropped"]
    kept_keys = [k for k, f in zip(dataset.keys, outcome.flagged.tolist(), strict=True) if not f]
    remaining = filter_manifest(poisons.manifest, kept_keys)
    labels = poison_labels(dataset.keys, poisons.manifest)
    assert len(remaining) == int((labels & ~outcome.flagged).sum())
    assert {row["poison_key"] for row in remaining} <= set(kept_keys)
    assert outcome.model is not undefended and outcome.seconds > 0


def test_finetuning_from_a_checkpoint_loads_and_changes_weights(small_train, undefended, tmp_path):
    from poisonclip.train.model import get_model_config

    save_checkpoint(tmp_path / "ckpt", undefended, get_model_config(TINY.model), TINY)
    start = {k: v.clone() for k, v in load_checkpoint(tmp_path / "ckpt")[0].state_dict().items()}
    fresh = train_model(small_train, TINY.replace(lr=1e-12), progress=False)[0].state_dict()
    barely, _, _ = train_model(
        small_train, TINY.replace(lr=1e-12), init_checkpoint=tmp_path / "ckpt", progress=False
    )
    moved, _, _ = train_model(
        small_train, TINY.replace(lr=1e-2), init_checkpoint=tmp_path / "ckpt", progress=False
    )
    name = "visual.proj"
    assert torch.allclose(barely.state_dict()[name], start[name], atol=1e-6)  # starts from the checkpoint ...
    assert not torch.allclose(fresh[name], start[name], atol=1e-3)  # ... not from a fresh initialisation
    assert (moved.state_dict()[name] - start[name]).abs().max() > 1e-3  # and a real lr moves it
    with pytest.raises(UsageError, match="architecture differs"):
        train_model(small_train, TINY.replace(model="toy-vit-w32"), init_checkpoint=tmp_path / "ckpt")


def test_cleanclip_chooses_the_lr_on_clean_validation_loss(poisoned, undefended, small_train):
    dataset, _ = poisoned
    context = DefenseContext(TINY, dataset, undefended, clean=small_train.subset(range(200)))
    name, params = parse_defense("cleanclip")
    assert (params.epochs, params.batch_size, params.clip_weight, params.inmodal_weight) == (10, 64, 1.0, 1.0)
    assert 1e-5 in params.lrs
    outcome = get_defense(name).run(context, type(params)(lrs=(1e-6, 1e-2), epochs=1, batch_size=32))
    sweep = outcome.record["lr_sweep"]
    assert [row["lr"] for row in sweep] == [1e-6, 1e-2]
    assert outcome.record["chosen_lr"] == min(sweep, key=lambda r: r["validation_loss"])["lr"]
    assert len(outcome.alternatives) == 1 and outcome.model is not undefended
    before, after = undefended.state_dict()["visual.proj"], outcome.model.state_dict()["visual.proj"]
    assert not torch.equal(before, after)
    assert torch.equal(undefended.state_dict()["visual.proj"], before)  # the undefended model is untouched


def test_the_bank_starts_random_and_is_a_fifo_queried_before_the_batch_enters():
    bank = NearestNeighbourBank(3, seed=0)
    noise, noise_ids = bank.nearest(torch.eye(4)[:1])  # nothing entered yet: a random unit vector
    assert noise_ids.tolist() == [-1] and torch.allclose(noise.norm(dim=1), torch.ones(1))
    bank.push(torch.eye(4)[:2], torch.tensor([10, 11]))
    bank.push(torch.eye(4)[2:], torch.tensor([12, 13]))  # 4 pushed into 3: the first is evicted
    assert sorted(bank.ids.tolist()) == [11, 12, 13]
    entry, ids = bank.nearest(torch.tensor([[0.0, 0.9, 0.1, 0.0]]))
    assert torch.equal(entry, torch.eye(4)[1:2]) and ids.tolist() == [11]


def test_roclip_fills_its_pool_only_on_matching_epochs_and_counts_own_class_matches():
    classes = {"image_classes": torch.tensor([0, 1]), "caption_classes": torch.tensor([1, 1])}
    objective = RoClipObjective(pool_size=2, break_epoch=2, augment_image=identity, seed=0, **classes)
    batch = Batch(
        torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.long), torch.arange(2)
    )
    own = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.1, 1.0, 0.0]]), dim=1)
    model = FixedModel(own, own)
    plain = objective(model, batch, epoch=0)  # epoch 1: not matching, the pool stays random
    assert torch.allclose(plain, clip_loss_per_sample(own, own, torch.tensor(1.0)))
    assert objective.pool.ids is None and not objective.matching(0) and objective.matching(1)
    start = torch.nn.functional.normalize(
        torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), dim=1
    )
    # Epoch 2 matches: the images meet the random start (queried before the batch enters) ...
    losses = objective(model, batch, epoch=1)
    partners = start[(own @ start.T).argmax(dim=1)]
    assert torch.allclose(losses, clip_loss_per_sample(own, partners, torch.tensor(1.0)))
    assert sorted(objective.pool.ids.tolist()) == [0, 1]  # ... then the batch's captions entered
    objective(model, batch, epoch=1)  # each image now meets its own caption's entry
    assert objective.matching_record() == [{"epoch": 2, "own_class_share": 0.25, "random_share": 0.5}]


def test_named_classes_finds_whole_words():
    captions = ["a red star on grey", "no shape here", "Circle, blue", "starfish"]
    assert named_classes(captions, ["circle", "star"]).tolist() == [1, -1, 0, -1]


def test_full_batches_keep_every_id_and_fill_the_last_batch():
    ids = torch.arange(10, 20)
    rows = full_batches(ids, 4, torch.Generator().manual_seed(0))
    assert len(rows) == 12 and set(rows.tolist()) == set(ids.tolist())
    assert torch.equal(rows[10:], rows[:2])


def test_safeclip_split_on_known_similarities():
    g = torch.Generator().manual_seed(0)
    sims = torch.cat([0.8 + 0.02 * torch.randn(80, generator=g), 0.1 + 0.02 * torch.randn(20, generator=g)])
    probability = high_similarity_probability(sims)
    assert (probability[:80] > 0.99).all() and (probability[80:] < 0.01).all()
    assert safe_split(sims, 0.4).tolist() == (sims >= sims.sort(descending=True).values[39]).tolist()


def test_safeclip_runs_a_risky_pass_then_a_safe_pass_each_epoch(poisoned):
    """After the warm-ups, every main epoch is one in-modal pass over exactly the risky pairs, then
    one CLIP pass over exactly the safe pairs: a risky pair never enters the CLIP loss, a safe pair
    never misses it; batches are full. The safe fraction starts at the mixture's split and grows
    by fraction_growth / main epochs."""
    dataset = poisoned[0].subset(range(190))  # a few batches are enough for the mechanics
    recipe = TINY.replace(epochs=4)
    model_config = get_model_config(recipe.model)
    model = create_model(model_config, seed=0)
    passes: list[tuple[str, torch.Tensor]] = []
    params = SafeClipParams(fraction_growth=0.2)
    record = run_safeclip(
        model, dataset.images, tokenize(dataset.captions, model_config), recipe, params,
        on_pass=lambda loss, ids: passes.append((loss, ids)),
    )  # fmt: skip
    n, steps = len(dataset), math.ceil(len(dataset) / recipe.batch_size)
    assert all(len(ids) == recipe.batch_size for _, ids in passes)
    warmup, main = passes[: 2 * steps], passes[2 * steps :]
    assert [loss for loss, _ in warmup] == ["inmodal"] * steps + ["clip"] * steps
    fractions = record["safe_fractions"]
    assert len(fractions) == 2 and fractions[1] == pytest.approx(fractions[0] + 0.1)
    # The last epoch's split is the one returned; its passes are the last ones recorded.
    safe = record["safe"]
    assert int(safe.sum()) == round(fractions[1] * n)
    risky_steps, safe_steps = (
        math.ceil(int((~safe).sum()) / recipe.batch_size),
        math.ceil(int(safe.sum()) / recipe.batch_size),
    )
    last = main[-(risky_steps + safe_steps) :]
    assert [loss for loss, _ in last] == ["inmodal"] * risky_steps + ["clip"] * safe_steps
    inmodal = torch.cat([ids for _, ids in last[:risky_steps]])
    clip = torch.cat([ids for _, ids in last[risky_steps:]])
    assert len(inmodal) == risky_steps * recipe.batch_size and len(clip) == safe_steps * recipe.batch_size
    assert set(clip.tolist()) == set(torch.nonzero(safe).squeeze(1).tolist())  # every safe pair, only they
    assert set(inmodal.tolist()) == set(torch.nonzero(~safe).squeeze(1).tolist())


def test_roclip_and_safeclip_train_from_scratch(poisoned):
    dataset, _ = poisoned
    context = DefenseContext(
        TINY.replace(epochs=3), dataset, classnames=("star", "circle"), monitor=lambda m: 0.5
    )
    roclip = get_defense("roclip").run(context, RoClipParams(pool_size=128))
    assert roclip.seconds > 0 and roclip.record["pool_size"] == 128
    assert [row["epoch"] for row in roclip.record["matching"]] == [2]
    assert roclip.record["zero_shot_acc_per_epoch"] == [0.5] * 3
    safeclip = apply_defense("safeclip", context)
    assert safeclip.flagged.shape == (len(dataset),)
    assert safeclip.record["first_safe_fraction"] == safeclip.record["safe_fractions"][0]
    assert len(safeclip.record["safe_fractions"]) == 1
    with pytest.raises(UsageError, match="much smaller"):
        get_defense("roclip").run(context, RoClipParams(pool_size=len(dataset)))


def _strip_label_column(csv_path) -> None:
    """Rewrite a synthetic train.csv as caches written before it had labels."""
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    csv_path.write_text("".join(line.rsplit("\t", 1)[0] + "\n" for line in lines), encoding="utf-8")


def test_roclip_diagnostic_counts_true_classes_of_the_sweep_data(tmp_path, monkeypatch):
    """Review item 1: sweeps read train.csv, which had no labels, so every image's class was -1
    and a caption naming no class counted as naming the image's "own class". The sweep's loader
    now gives the true classes (from the column, or from the config for an earlier cache), and
    images of unknown class (poisons) are left out of the own-class share."""
    from poisonclip.data import SyntheticConfig
    from poisonclip.data.cache import data_dir, load_synthetic
    from poisonclip.data.synthetic import make_synthetic
    from poisonclip.defend.roclip import image_classes

    config = SyntheticConfig(num_train=300, num_test=20, num_shapes=10, seed=5)
    truth = torch.as_tensor(make_synthetic(config)[0].labels)
    train, _, classnames = load_synthetic(tmp_path / "new", config)
    assert torch.equal(train.labels, truth)
    old_root = data_dir(tmp_path / "old", config)
    load_synthetic(tmp_path / "old", config)
    _strip_label_column(old_root / "train.csv")  # a cache from before the label column
    old_train = load_synthetic(tmp_path / "old", config)[0]
    assert "label" not in (old_root / "train.csv").read_text().splitlines()[0]
    assert torch.equal(old_train.labels, truth) and old_train.keys == train.keys

    poisons = make_backdoor(train, "star", 8, seed=0)
    dataset = ImageTextDataset.concat([train, poisons.samples])
    caption_classes = named_classes(dataset.captions, classnames)
    classes = image_classes(dataset, classnames)
    assert torch.equal(classes[: len(train)], truth) and (classes[len(train) :] == -1).all()
    unnamed = int(torch.nonzero(caption_classes == -1)[0])  # a caption naming no class
    named = torch.nonzero((caption_classes == classes) & (classes >= 0)).squeeze(1)[:2].tolist()
    poison = len(train)
    objective = RoClipObjective(4, 2, identity, 0, classes, caption_classes)
    objective._count(1, torch.tensor([*named, poison]), torch.tensor([unnamed, unnamed, unnamed]))
    objective._count(3, torch.tensor([*named, poison]), torch.tensor([*named, named[0]]))
    assert objective.matching_record() == [
        {"epoch": 2, "own_class_share": 0.0, "random_share": 0.0},  # the bug counted 1.0 here
        {"epoch": 4, "own_class_share": 1.0, "random_share": 0.0},  # the poison is not counted
    ]
    unknown = RoClipObjective(4, 2, identity, 0, torch.full_like(classes, -1), caption_classes)
    unknown._count(1, torch.tensor([*named, poison]), torch.tensor([-1, unnamed, unnamed]))
    assert unknown.matching_record() == [{"epoch": 2, "random_share": 1 / 3}]  # own class: missing

    # The defense hands the objective those classes (the sweep's runner passes the class names).
    seen = {}
    original = RoClipObjective.__init__

    def spy(self, *args, **kwargs):
        seen["image_classes"] = args[4]
        original(self, *args, **kwargs)

    monkeypatch.setattr(RoClipObjective, "__init__", spy)
    context = DefenseContext(TINY.replace(epochs=2), dataset, classnames=tuple(classnames))
    outcome = get_defense("roclip").run(context, RoClipParams(pool_size=64))
    assert torch.equal(seen["image_classes"], classes)
    assert 0 <= outcome.record["matching"][0]["own_class_share"] <= 1


def test_augmentations_are_seeded_and_follow_the_image_size():
    from poisonclip.train.augment import CaptionAugment, ImageAugment, autoaugment_policy

    # CleanCLIP's ImageNet AutoAugment policy, except on images of CIFAR's 32x32 (the toy's)
    assert [autoaugment_policy(n) for n in (32, 64, 224)] == ["cifar10", "imagenet", "imagenet"]
    images = torch.randint(
        0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    first, again = ImageAugment(3, "imagenet")(images), ImageAugment(3, "imagenet")(images)
    assert first.shape == images.shape and first.dtype == torch.uint8 and torch.equal(first, again)
    assert not torch.equal(first, images)
    # one word edit per caption; the start token stays first and the end token (the highest id,
    # where a CLIP text tower pools) stays the caption's last token
    tokens = tokenize(
        ["a photo of a red star", "a small blue circle on grey"], get_model_config("toy-vit-micro")
    )
    edited = CaptionAugment(0)(tokens)
    for before, after in zip(tokens, edited, strict=True):
        end_before, end_after = int(before.argmax()), int(after.argmax())
        assert after[0] == before[0] and after[end_after] == before[end_before]
        assert abs(end_after - end_before) <= 1 and not torch.equal(before, after)
        assert set(after[1:end_after].tolist()) <= set(before[1:end_before].tolist())  # words only
