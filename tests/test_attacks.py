import json

import pytest
import torch

from poisonclip.attacks import (
    Checkerboard,
    checkerboard,
    get_attack,
    list_attacks,
    make_backdoor,
    patch_area_fraction,
    read_poison_set,
    write_poison_set,
)
from poisonclip.errors import UsageError


def test_checkerboard_pattern():
    patch = checkerboard(4)
    assert patch.shape == (3, 4, 4) and patch.dtype == torch.uint8
    assert patch[0, 0, 0] == 255 and patch[0, 0, 1] == 0 and patch[0, 1, 0] == 0
    assert (patch[0] == 255).sum() == 8
    assert patch_area_fraction(16, 224) == pytest.approx(0.0051, abs=1e-4)


def test_the_checkerboard_changes_exactly_the_patch_region():
    images = torch.full((2, 3, 10, 10), 7, dtype=torch.uint8)
    triggered = Checkerboard(3, "random").apply(images, torch.Generator().manual_seed(0))
    out, (first, second) = triggered.images, [r["patch"] for r in triggered.records]
    assert (images == 7).all()  # input untouched
    for i, at in enumerate((first, second)):
        y, x = at["y"], at["x"]
        assert torch.equal(out[i, :, y : y + 3, x : x + 3], checkerboard(3)) and at["size"] == 3
        out[i, :, y : y + 3, x : x + 3] = 7
    assert (out == 7).all()  # nothing else changed


@pytest.mark.parametrize("placement", ["consistent", "random"])
def test_backdoor_positions_sizes_and_manifest(small_train, placement):
    poisons = make_backdoor(small_train, "star", 30, Checkerboard(5, placement), seed=1)
    assert len(poisons) == 30 and len(poisons.manifest) == 30
    positions = {(r["patch"]["y"], r["patch"]["x"]) for r in poisons.manifest}
    if placement == "consistent":
        assert positions == {(0, 0)}
    else:
        assert len(positions) > 10
        assert all(0 <= y <= 27 and 0 <= x <= 27 for y, x in positions)
    sources = [r["source_key"] for r in poisons.manifest]
    assert len(set(sources)) == 30  # 30 *different* images
    for i, row in enumerate(poisons.manifest):
        y, x = row["patch"]["y"], row["patch"]["x"]
        assert torch.equal(poisons.samples.images[i, :, y : y + 5, x : x + 5], checkerboard(5))
        assert "star" in row["caption"] and row["caption"] == poisons.samples.captions[i]
        assert row["poison_key"] == poisons.samples.keys[i]
        source = small_train.keys.index(row["source_key"])
        expected = small_train.images[source].clone()
        expected[:, y : y + 5, x : x + 5] = checkerboard(5)
        assert torch.equal(poisons.samples.images[i], expected)
        assert row["caption"] == small_train.captions[small_train.keys.index(row["caption_source_key"])]
        assert row["seed"] == 1 and row["trigger"] == "checkerboard"
        assert row["trigger_params"] == {"patch_size": 5, "placement": placement}


def test_backdoor_is_deterministic(small_train):
    a = make_backdoor(small_train, "star", 20, seed=5)
    b = make_backdoor(small_train, "star", 20, seed=5)
    c = make_backdoor(small_train, "star", 20, seed=6)
    assert a.manifest == b.manifest and torch.equal(a.samples.images, b.samples.images)
    assert a.manifest != c.manifest


def test_poison_set_round_trip_and_manifest_file(small_train, tmp_path):
    poisons = make_backdoor(small_train, "star", 12, Checkerboard(placement="random"), seed=2)
    write_poison_set(tmp_path / "p", poisons)
    lines = (tmp_path / "p" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == poisons.manifest
    back = read_poison_set(tmp_path / "p")
    assert torch.equal(back.samples.images, poisons.samples.images)
    assert back.samples.captions == poisons.samples.captions


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trigger": {"patch_size": 33}}, "does not fit"),
        ({"target_label": "zebra"}, "appears in no training caption"),
        ({"poison_count": 10_000}, "exceeds the 400 images"),
        ({"trigger": {"placement": "middle"}}, "placement must be one of"),
    ],
)
def test_backdoor_bad_inputs(small_train, kwargs, message):
    args = {"target_label": "star", "poison_count": 10, **kwargs}
    with pytest.raises(UsageError, match=message):
        if "trigger" in args:
            args["trigger"] = Checkerboard(**args["trigger"])
        make_backdoor(small_train, **args)


def test_registry():
    assert "backdoor" in list_attacks()
    assert get_attack("backdoor") is make_backdoor
    with pytest.raises(UsageError, match="unknown attack"):
        get_attack("nope")


def test_the_listed_builtin_attacks_are_what_their_modules_register():
    import importlib

    from poisonclip.attacks.registry import BUILTIN_ATTACKS

    for module in set(BUILTIN_ATTACKS.values()):
        importlib.import_module(module)
    assert list_attacks() == sorted(BUILTIN_ATTACKS)  # a new built-in attack needs its line in the table
    for name, module in BUILTIN_ATTACKS.items():
        assert get_attack(name).__module__ == module
