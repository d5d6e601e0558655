"""Every trigger: deterministic given its seeds, changing the image as its paper specifies, recorded
with the poisons and applied again, identically, at evaluation."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops, ImageEnhance

from poisonclip.attacks import make_backdoor, read_poison_set, write_poison_set
from poisonclip.attacks.triggers import Checkerboard, build_trigger, list_triggers, trigger_from_record
from poisonclip.attacks.triggers.badclip import BadClip
from poisonclip.attacks.triggers.badnets import BadNets
from poisonclip.attacks.triggers.blended import Blended
from poisonclip.attacks.triggers.sig import Sig
from poisonclip.attacks.triggers.stored import read_poison_trigger
from poisonclip.attacks.triggers.wanet import WaNet
from poisonclip.data.captions import search_captions
from poisonclip.errors import UsageError
from poisonclip.evaluate import suite
from poisonclip.train.checkpoint import save_checkpoint
from poisonclip.train.model import create_model, get_model_config, tokenize, tokenizer_for
from poisonclip.train.preprocess import normalize_images

from .conftest import SMALL

ROOT = Path(__file__).resolve().parent.parent
UNFITTED = [name for name in list_triggers() if name != "badclip"]  # badclip: see its own tests


def images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory) -> Path:
    config = get_model_config("toy-vit-micro")
    return save_checkpoint(
        tmp_path_factory.mktemp("surrogate") / "ckpt", create_model(config, seed=0), config
    )


@pytest.mark.parametrize("name", UNFITTED)
def test_every_trigger_is_deterministic_changes_images_and_leaves_its_input(name):
    x = images()
    trigger = build_trigger(name, {"placement": "random"} if name in ("checkerboard", "badnets") else {})
    a = trigger.apply(x, torch.Generator().manual_seed(1))
    b = trigger.apply(x, torch.Generator().manual_seed(1))
    assert torch.equal(a.images, b.images) and a.records == b.records and len(a.records) == len(x)
    assert a.images.dtype == torch.uint8 and a.images.shape == x.shape
    assert torch.equal(x, images()) and not torch.equal(a.images, x)
    assert trigger_from_record(json.loads(json.dumps(trigger.record()))) == trigger


def test_the_checkerboard_is_bit_identical_to_the_one_before_triggers_were_plugins(small_train, small_test):
    """Hashes of the poisons and patched test images of the old ``attacks/patch.py``, same seeds:
    the committed results were trained and evaluated on exactly these pixels."""
    for patch_size, placement, seed, expected in [
        (3, "random", 2, "48e80e1557da531c"),
        (4, "consistent", 5, "1e076e18113aa435"),
        (5, "random", 1, "91a5b3ac26132895"),
    ]:
        poisons = make_backdoor(small_train, "star", 12, Checkerboard(patch_size, placement), seed=seed)
        assert digest(poisons.samples.images) == expected
    tested = Checkerboard(4, "random").apply(small_test.images, torch.Generator().manual_seed(7))
    assert digest(tested.images) == "a87d596852b23e67"


def test_badnets_pastes_one_fixed_noise_patch_where_its_records_say():
    x = images(20)
    trigger = BadNets(patch_size=5, pattern_seed=3)
    out = trigger.apply(x, torch.Generator().manual_seed(0))
    pattern = trigger.pattern()
    assert len({(r["patch"]["y"], r["patch"]["x"]) for r in out.records}) > 5  # random placement
    for i, record in enumerate(out.records):
        y, x0 = record["patch"]["y"], record["patch"]["x"]
        assert torch.equal(out.images[i, :, y : y + 5, x0 : x0 + 5], pattern)
    assert torch.equal(BadNets(patch_size=5, pattern_seed=3).pattern(), pattern)
    assert not torch.equal(BadNets(patch_size=5, pattern_seed=4).pattern(), pattern)
    assert pattern.float().std() > 50  # noise, not a flat patch


def test_blended_is_the_alpha_mix_of_the_image_and_a_fixed_pattern(tmp_path):
    x = images()
    trigger = Blended(alpha=0.3, pattern_seed=2)
    pattern = trigger.blend_pattern(32)
    out = trigger.apply(x, torch.Generator()).images.float()
    assert (out - (0.7 * x.float() + 0.3 * pattern)).abs().max() <= 0.5 + 1e-4
    assert torch.equal(Blended(alpha=0.3, pattern_seed=2).blend_pattern(32), pattern)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    red = Blended(alpha=0.5, pattern=str(tmp_path / "red.png")).apply(x, torch.Generator()).images.float()
    assert (red[:, 0] - (0.5 * x[:, 0].float() + 127.5)).abs().max() <= 0.5 + 1e-4
    assert (red[:, 1] - 0.5 * x[:, 1].float()).abs().max() <= 0.5 + 1e-4
    with pytest.raises(UsageError, match="alpha must be in"):
        Blended(alpha=0)
    with pytest.raises(UsageError, match="not found"):
        Blended(pattern=str(tmp_path / "missing.png"))


def test_sig_adds_a_horizontal_sinusoid():
    x = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    out = Sig().apply(x, torch.Generator()).images.float() - 100
    expected = torch.tensor([20 * math.sin(2 * math.pi * j * 6 / 32) for j in range(32)])
    assert (out - expected).abs().max() <= 0.5 + 1e-4  # every row and channel, rounded
    assert torch.equal(out[0, 0], out[1, 2])


def test_wanet_is_a_small_smooth_warp():
    x = torch.linspace(0, 255, 32).repeat(2, 3, 32, 1).round().to(torch.uint8)  # a horizontal ramp
    trigger = WaNet(pattern_seed=1)
    grid = trigger.sampling_grid(32)
    axis = torch.linspace(-1, 1, 32)
    identity = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=2)
    offset = (grid[0] - identity)[2:-2, 2:-2]  # inside: clamped to [-1, 1] only at the border
    assert 0 < offset.abs().max() < 0.5 * 4 / 32  # s·field/S, the field 1 in mean magnitude
    curvature = offset[:, 2:] - 2 * offset[:, 1:-1] + offset[:, :-2]
    assert curvature.abs().max() < 0.1 * offset.abs().max()  # smooth: neighbours move alike
    out = trigger.apply(x, torch.Generator()).images.float()
    assert 0 < (out - x.float()).abs().mean() < 3  # a few levels on a ramp of 8 levels a pixel
    assert not torch.equal(WaNet(pattern_seed=2).sampling_grid(32), grid)


def _pilgram_nashville(image: Image.Image) -> Image.Image:
    """pilgram 1.2's ``nashville`` with PIL operations, as the reference."""
    darker = Image.blend(image, ImageChops.darker(image, Image.new("RGB", image.size, (247, 176, 153))), 0.56)
    lighter = Image.blend(darker, ImageChops.lighter(darker, Image.new("RGB", image.size, (0, 70, 150))), 0.4)
    s = 1 - 0.2
    sepia = lighter.convert(
        "RGB",
        (.393 + .607 * s, .769 - .769 * s, .189 - .189 * s, 0,
         .349 - .349 * s, .686 + .314 * s, .168 - .168 * s, 0,
         .272 - .272 * s, .534 - .534 * s, .131 + .869 * s, 0),
    )  # fmt: skip
    contrast = sepia.point(lambda v: round(v * 1.2 + 255 * (-0.5 * 1.2 + 0.5)))
    return ImageEnhance.Color(ImageEnhance.Brightness(contrast).enhance(1.05)).enhance(1.2)


def test_nashville_matches_pilgrams_filter_within_rounding():
    x = images(3)
    out = build_trigger("nashville", {}).apply(x, torch.Generator()).images.float()
    for i in range(len(x)):
        reference = _pilgram_nashville(Image.fromarray(x[i].permute(1, 2, 0).numpy()))
        expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1).float()
        difference = (out[i] - expected).abs()  # PIL truncates to 8 bits after every step
        assert difference.max() <= 4 and difference.mean() < 2


def _target_similarity(checkpoint: Path, train, trigger: BadClip) -> float:
    from poisonclip.train.checkpoint import load_checkpoint

    model, config = load_checkpoint(checkpoint)
    captions = [train.captions[i] for i in search_captions(train.captions, "star")]
    with torch.no_grad():
        target = model.encode_text(tokenize(captions, config), normalize=True).mean(0)
        patched = trigger.apply(train.images[:200], torch.Generator()).images
        embedded = model.encode_image(normalize_images(patched, model), normalize=True)
    return (
        float(embedded @ (target / target.norm())).mean()
        if False
        else float((embedded @ (target / target.norm())).mean())
    )


def test_badclip_optimises_toward_the_target_text_and_is_reapplied_exactly(surrogate, small_train, tmp_path):
    spec = BadClip(
        surrogate=str(surrogate), patch_size=8, fit_steps=0, fit_lr=0.05, fit_images=64, fit_batch_size=32
    )
    start = make_backdoor(small_train, "star", 10, spec, seed=1).trigger
    poisons = make_backdoor(small_train, "star", 10, BadClip(**{**spec.values(), "fit_steps": 40}), seed=1)
    fitted = poisons.trigger
    assert (
        _target_similarity(surrogate, small_train, fitted)
        > _target_similarity(surrogate, small_train, start) + 0.02
    )
    for row, image in zip(poisons.manifest, poisons.samples.images, strict=True):
        y, x = row["patch"]["y"], row["patch"]["x"]
        assert (y, x) == (12, 12) and torch.equal(image[:, y : y + 8, x : x + 8], fitted.pattern())
    write_poison_set(tmp_path / "p", poisons)
    again = read_poison_trigger(tmp_path / "p")
    assert torch.equal(again.pattern(), fitted.pattern()) and again == fitted
    assert torch.equal(read_poison_set(tmp_path / "p").trigger.pattern(), fitted.pattern())
    elsewhere = {**fitted.record(), "params": {**fitted.values(), "surrogate": str(tmp_path / "gone")}}
    assert torch.equal(trigger_from_record(elsewhere).pattern(), fitted.pattern())  # no surrogate needed
    with pytest.raises(UsageError, match="not fitted"):
        spec.apply(images(), torch.Generator())
    with pytest.raises(UsageError, match="needs a surrogate"):
        make_backdoor(small_train, "star", 4, BadClip(fit_steps=1), seed=1)
    # a pretrained open_clip model as the surrogate (MODEL:TAG, or MODEL:FILE as here): the same weights
    # as the checkpoint directory fit the same patch
    weights = f"toy-vit-micro:{surrogate / 'open_clip_model.safetensors'}"
    few = {**spec.values(), "fit_steps": 3}
    by_name = make_backdoor(small_train, "star", 4, BadClip(**{**few, "surrogate": weights}), seed=1).trigger
    assert torch.equal(
        by_name.pattern(), make_backdoor(small_train, "star", 4, BadClip(**few), seed=1).trigger.pattern()
    )
    bad = BadClip(**{**few, "surrogate": "toy-vit-micro:no-such-tag"})
    with pytest.raises(
        UsageError, match="surrogate 'toy-vit-micro:no-such-tag' is not a checkpoint directory"
    ):
        make_backdoor(small_train, "star", 4, bad, seed=1)


def test_the_manifest_and_trigger_json_record_the_trigger(small_train, tmp_path):
    trigger = BadNets(patch_size=3, pattern_seed=9)
    poisons = make_backdoor(small_train, "star", 5, trigger, seed=2)
    write_poison_set(tmp_path / "p", poisons)
    rows = [json.loads(line) for line in (tmp_path / "p" / "manifest.jsonl").read_text().splitlines()]
    assert all(r["trigger"] == "badnets" and r["trigger_params"] == trigger.values() for r in rows)
    assert all(set(r["patch"]) == {"y", "x", "size"} for r in rows)
    assert json.loads((tmp_path / "p" / "trigger.json").read_text())["name"] == "badnets"
    assert read_poison_trigger(tmp_path / "p") == trigger


def test_a_poison_set_from_before_triggers_were_plugins_reads_as_its_checkerboard(tmp_path):
    legacy = {"poison_key": "poison/000000.png", "patch": {"y": 3, "x": 9, "size": 3}, "placement": "random"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(legacy) + "\n")
    assert read_poison_trigger(tmp_path) == Checkerboard(3, "random")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"poison_key": "poison/000000.png"}) + "\n")
    with pytest.raises(UsageError, match="not a backdoor poison set"):
        read_poison_trigger(tmp_path)


def test_evaluation_applies_the_same_trigger_to_the_test_images(small_test, monkeypatch):
    seen = []
    encode = suite.encode_images

    def spy(model, batch, *args, **kwargs):
        seen.append(batch.clone())
        return encode(model, batch, *args, **kwargs)

    monkeypatch.setattr(suite, "encode_images", spy)
    config = get_model_config("toy-vit-micro")
    trigger = BadNets(patch_size=4, pattern_seed=3)
    classnames = list(SMALL.classnames)
    suite.evaluate_backdoor(
        create_model(config),
        small_test,
        classnames,
        "star",
        trigger,
        seed=5,
        templates="synthetic",
        tokenizer=tokenizer_for(config),
    )
    nontarget = small_test.labels != classnames.index("star")
    expected = trigger.apply(small_test.images[nontarget], torch.Generator().manual_seed(5)).images
    assert torch.equal(seen[-1], expected)


def test_parameters_are_typed_and_validated_by_the_spec():
    assert Blended(alpha=1) == Blended(alpha=1.0) and isinstance(Blended(alpha=1).alpha, float)
    with pytest.raises(UsageError, match="is not of type int"):
        Checkerboard(patch_size="4")
    with pytest.raises(UsageError, match="placement must be one of"):
        Checkerboard(placement="middle")
    with pytest.raises(UsageError, match="has no parameter alpha; its parameters: patch_size, placement"):
        build_trigger("checkerboard", {"alpha": 0.1})
    with pytest.raises(UsageError, match="unknown trigger 'nope'"):
        build_trigger("nope", {})
    with pytest.raises(UsageError, match="does not fit"):
        Checkerboard(40).apply(images(), torch.Generator())


def test_trigger_options_are_built_without_importing_torch():
    """The CLI builds its parser from the specs: ``poisonclip --help`` must not load torch (nor PIL
    or numpy: the specs and the poison set's ``trigger.json`` reader need neither)."""
    code = (
        "import argparse, sys\n"
        "from poisonclip.attacks.triggers.options import add_trigger_options\n"
        "add_trigger_options(argparse.ArgumentParser(), from_poison_set=True)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'PIL', 'numpy'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
