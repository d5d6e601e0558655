"""Many models at once and the trainer's CPU/GPU paths: each must equal plain training."""

import math
import threading

import pytest
import torch

from poisonclip.data import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.evaluate import encode_images, encode_texts
from poisonclip.train import (
    TrainConfig,
    create_model,
    get_model_config,
    load_preset,
    normalize_images,
    train_model,
)
from poisonclip.train.grouped import GroupedCLIP, groupable, train_grouped
from poisonclip.train.loop import train_clip
from poisonclip.train.many import train_many
from poisonclip.train.parallel import single_thread_pool

TINY = load_preset("tiny").replace(batch_size=32, epochs=2)


def random_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [n, 3, 32, 32], tokens [n, 16]) with an end-of-text token, as tokenize gives."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 1000, (n, 16), generator=g)
    tokens[:, 0], tokens[:, 9], tokens[:, 10:] = 49406, 49407, 0
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), tokens


@pytest.mark.parametrize("name", ["toy-vit-micro", "toy-vit-w32", "toy-vit-w64"])
def test_grouped_forward_equals_each_model(name):
    config = get_model_config(name)
    models = [create_model(config, seed=s).eval() for s in range(3)]
    assert all(groupable(m) for m in models)
    group = GroupedCLIP(models)
    images, tokens = random_data(3 * 4, seed=0)
    images, tokens = images.view(3, 4, 3, 32, 32), tokens.view(3, 4, 16)
    with torch.no_grad():
        image_features = group.encode_image(normalize_images(images.flatten(0, 1)).view(images.shape))
        text_features = group.encode_text(tokens)  # [S, B, E] each
        for s, model in enumerate(models):
            expected = model.encode_image(normalize_images(images[s]), normalize=True)
            torch.testing.assert_close(image_features[s], expected, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(text_features[s], model.encode_text(tokens[s], normalize=True))


def test_unsupported_models_are_not_grouped():
    config = get_model_config("toy-vit-micro")
    avg_pool = {**config, "vision_cfg": {**config["vision_cfg"], "pool_type": "avg"}}
    assert not groupable(create_model(avg_pool))
    assert not groupable(create_model({**config, "quick_gelu": True}))
    with pytest.raises(ValueError, match="one architecture"):
        GroupedCLIP([create_model(config), create_model(get_model_config("toy-vit-w32"))])


def test_grouped_training_equals_separate_runs():
    """Different seeds and different datasets of one size: the same losses and weights."""
    data = [random_data(96, seed=s) for s in range(3)]
    configs = [TINY.replace(seed=s) for s in range(3)]
    model_config = get_model_config(TINY.model)
    separate = []
    for (images, tokens), config in zip(data, configs, strict=True):
        model = create_model(model_config, seed=config.seed)
        separate.append((model, train_clip(model, images, tokens, config, progress=False)))
    grouped = [create_model(model_config, seed=c.seed) for c in configs]
    stats = train_grouped(grouped, data, configs, progress=False)
    images, tokens = random_data(8, seed=9)
    for (model, expected), together, got in zip(separate, grouped, stats, strict=True):
        assert got.final_loss == pytest.approx(expected.final_loss, abs=1e-5)
        assert got.steps == expected.steps == 6
        # Embeddings, not weights: AdamW turns the rounding noise on weights with no true gradient
        # (attention's key bias) into lr-sized steps that change nothing the model computes.
        with torch.no_grad():
            for encode, inputs in (("encode_image", normalize_images(images)), ("encode_text", tokens)):
                torch.testing.assert_close(
                    getattr(together, encode)(inputs), getattr(model, encode)(inputs), atol=1e-4, rtol=1e-4
                )
    with pytest.raises(ValueError, match="only in their seeds"):
        train_grouped(grouped[:2], data[:2], [TINY, TINY.replace(lr=1.0)], progress=False)


@pytest.mark.parametrize("method", ["sequential", "grouped", "grouped-processes"])
def test_train_many_equals_train_model(small_train, method):
    """Two groups (seeds 0, 1 and another batch size), trained by each method, in the given order."""
    configs = [TINY.replace(seed=0), TINY.replace(batch_size=50), TINY.replace(seed=1)]
    results = train_many([small_train] * 3, configs, method=method, workers=2)
    for (model, model_config, stats), config in zip(results, configs, strict=True):
        expected_model, expected_config, expected = train_model(small_train, config, progress=False)
        assert model_config == expected_config
        assert stats.final_loss == pytest.approx(expected.final_loss, abs=1e-5)
        torch.testing.assert_close(model.visual.proj, expected_model.visual.proj, atol=1e-5, rtol=1e-4)


def test_train_many_rejects_bad_arguments(small_train):
    with pytest.raises(UsageError, match="method"):
        train_many([small_train], [TINY], method="vmap")
    with pytest.raises(UsageError, match="configs"):
        train_many([small_train], [TINY, TINY])


def test_sharded_cpu_step_repeats_exactly_and_equals_one_thread():
    """Two threads split each batch in two shards (the default on a 2-core CPU)."""
    images, tokens = random_data(96, seed=1)
    model_config = get_model_config(TINY.model)

    def run(threads: int) -> tuple[float, torch.Tensor]:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model = create_model(model_config, seed=0)
            stats = train_clip(model, images, tokens, TINY, progress=False)
        finally:
            torch.set_num_threads(previous)
        return stats.final_loss, model.visual.proj.detach()

    (loss_a, proj_a), (loss_b, proj_b), (loss_1, proj_1) = run(2), run(2), run(1)
    assert loss_a == loss_b and torch.equal(proj_a, proj_b)
    assert loss_a == pytest.approx(loss_1, abs=1e-5)
    torch.testing.assert_close(proj_a, proj_1, atol=1e-5, rtol=1e-4)


def test_precision_and_data_placement_paths_on_cpu(monkeypatch):
    """fp16 trains with loss scaling (a GradScaler on the training device: torch's default device
    "cuda" would switch it off on the CPU), bf16 near fp32, and data left off the device exactly
    as fp32."""
    images, tokens = random_data(96, seed=2)
    model_config = get_model_config(TINY.model)
    scalers = []
    real_scaler = torch.amp.GradScaler

    def recording_scaler(device: str, enabled: bool):
        scaler = real_scaler(device, enabled=enabled)
        scalers.append(scaler)
        return scaler

    monkeypatch.setattr(torch.amp, "GradScaler", recording_scaler)

    def run(config: TrainConfig) -> float:
        return train_clip(create_model(model_config), images, tokens, config, progress=False).final_loss

    fp16 = run(TINY.replace(precision="fp16"))
    assert scalers[-1].is_enabled() and scalers[-1].get_scale() > 0 and math.isfinite(fp16)
    fp32 = run(TINY.replace(precision="fp32"))
    assert not scalers[-1].is_enabled()
    assert run(TINY.replace(precision="bf16")) == pytest.approx(fp32, abs=0.05)
    assert run(TINY.replace(data_on_device=False)) == fp32


@pytest.fixture
def compiled(monkeypatch) -> list:
    """torch.compile with the aot_eager backend: it traces and replays the same graphs as inductor
    without inductor's minute of C++ compilation (inductor, run by hand: the same loss to 1e-6).
    Returns the functions compiled."""
    real_compile, calls = torch.compile, []

    def compile_eagerly(fn, **kwargs):
        calls.append(fn)
        return real_compile(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    return calls


def test_compile_flag_gives_the_same_training(compiled):
    images, tokens = random_data(64, seed=3)
    model_config = get_model_config(TINY.model)
    config = TINY.replace(compile=True)
    with_compile = train_clip(create_model(model_config), images, tokens, config, progress=False)
    plain = train_clip(create_model(model_config), images, tokens, TINY, progress=False)
    assert len(compiled) == 1
    assert with_compile.final_loss == pytest.approx(plain.final_loss, abs=1e-5)


def test_grouped_training_compiles_and_leaves_data_off_the_device(compiled):
    data = [random_data(64, seed=s) for s in range(2)]
    model_config = get_model_config(TINY.model)
    losses = {}
    for flag in ("", "compile", "data_on_device"):
        changes = {"compile": True} if flag == "compile" else {"data_on_device": False} if flag else {}
        configs = [TINY.replace(seed=s, **changes) for s in range(2)]
        models = [create_model(model_config, seed=s) for s in range(2)]
        losses[flag] = [s.final_loss for s in train_grouped(models, data, configs, progress=False)]
    assert len(compiled) == 1
    assert losses["compile"] == pytest.approx(losses[""], abs=1e-5)
    assert losses["data_on_device"] == losses[""]


def test_train_many_accepts_a_dataset_per_model(small_train):
    poisoned = ImageTextDataset.concat([small_train.subset(range(300)), small_train.subset(range(100))])
    (model_a, _, a), (model_b, _, b) = train_many([small_train, poisoned], [TINY, TINY.replace(seed=1)])
    assert a.final_loss == pytest.approx(
        train_model(small_train, TINY, progress=False)[2].final_loss, abs=1e-5
    )
    assert b.final_loss == pytest.approx(
        train_model(poisoned, TINY.replace(seed=1), progress=False)[2].final_loss, abs=1e-5
    )


def test_worker_threads_give_one_thread_results_and_leave_thread_counts_alone():
    model = create_model(get_model_config(TINY.model)).eval()
    images, tokens = random_data(70, seed=4)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = encode_images(model, images, batch_size=16), encode_texts(model, tokens, batch_size=16)
        with single_thread_pool(2) as pool:
            assert pool.submit(torch.get_num_threads).result() == 1
        assert torch.get_num_threads() == 2
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        seen: list[int] = []
        later.start()
        later.join()
        assert seen == [2]  # threads started later get the process's count, not the workers' 1
        torch.set_num_threads(1)
        one = encode_images(model, images, batch_size=16), encode_texts(model, tokens, batch_size=16)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(threaded, one, strict=True))
