import open_clip
import pytest
import torch

from poisonclip.errors import UsageError
from poisonclip.train import (
    TrainConfig,
    get_model_config,
    list_model_configs,
    list_presets,
    load_checkpoint,
    load_preset,
    train_model,
)
from poisonclip.train.loop import autocast_dtype, lr_at

TINY = load_preset("tiny")


def test_presets_and_model_configs_resolve():
    assert {"demo", "paper", "tiny"} <= set(list_presets())
    paper = load_preset("paper")
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.batch_size, paper.epochs) == (
        "sgd",
        2e-4,
        0.02,
        1024,
        30,
    )
    assert load_preset("demo") == TrainConfig()  # dataclass defaults are the demo preset
    for name in list_model_configs():
        assert get_model_config(name)["vision_cfg"]["image_size"] == 32
    assert get_model_config("RN50")["vision_cfg"]["layers"] == [3, 4, 6, 3]  # open_clip's own


def test_bad_configs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown model config"):
        get_model_config("no-such-model")
    with pytest.raises(UsageError, match="unknown preset"):
        load_preset("nope")
    bad = tmp_path / "p.json"
    bad.write_text('{"epochs": 2, "lr_typo": 1}')
    with pytest.raises(UsageError, match="unknown keys"):
        load_preset(str(bad))
    with pytest.raises(UsageError, match="optimizer"):
        TrainConfig(optimizer="lion")


def test_lr_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(lr=1.0, warmup_fraction=0.1)
    lrs = [lr_at(s, 100, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] < 0.01


def test_precision_choice():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16


def test_training_is_deterministic_and_checkpoint_loads_in_open_clip(small_train, tmp_path):
    model_a, _, stats_a = train_model(small_train, TINY, tmp_path / "a", progress=False)
    model_b, _, stats_b = train_model(small_train, TINY, tmp_path / "b", progress=False)
    model_c, _, _ = train_model(small_train, TINY.replace(seed=1), progress=False)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert stats_a.final_loss == stats_b.final_loss
    assert not torch.equal(state_a["visual.proj"], model_c.state_dict()["visual.proj"])
    assert stats_a.steps == len(small_train) // TINY.batch_size

    # open_clip itself loads the checkpoint, and so does poisonclip
    reloaded = open_clip.create_model(f"local-dir:{tmp_path / 'a'}")
    loaded, config = load_checkpoint(tmp_path / "a")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model_a.encode_image(images)
        assert torch.allclose(reloaded.encode_image(images), expected)
        assert torch.allclose(loaded.encode_image(images), expected)
    assert config == get_model_config(TINY.model)


def test_training_changes_weights_and_lowers_loss(small_train):
    config = TINY.replace(model="toy-vit-w32", epochs=10, batch_size=50)
    model, _, stats = train_model(small_train, config, progress=False)
    assert stats.final_loss < torch.log(torch.tensor(50.0)).item() - 0.3  # below chance-level loss


def test_bf16_autocast_runs_on_cpu(small_train):
    _, _, stats = train_model(small_train, TINY.replace(precision="bf16"), progress=False)
    assert torch.isfinite(torch.tensor(stats.final_loss))


def test_sgd_optimizer_runs(small_train):
    _, _, stats = train_model(small_train, TINY.replace(optimizer="sgd", lr=0.05), progress=False)
    assert torch.isfinite(torch.tensor(stats.final_loss))


def test_checkpoint_of_another_architecture_is_a_usage_error(small_train, tmp_path):
    train_model(small_train, TINY, tmp_path / "ck", progress=False)
    config_file = tmp_path / "ck" / "open_clip_config.json"
    config_file.write_text(config_file.read_text().replace('"width": 16', '"width": 24', 1))
    with pytest.raises(UsageError, match="do not match"):
        load_checkpoint(tmp_path / "ck")
