"""Pretrained starts: weights files and tags for training, CleanCLIP and sweeps, and their image stats."""

import json
import shlex

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from poisonclip.data import SyntheticConfig
from poisonclip.errors import UsageError
from poisonclip.experiments.grid import parse_sweep
from poisonclip.train.config import load_preset
from poisonclip.train.model import create_model, get_model_config, initial_model
from tests.cli_calls import run, run_quiet


class NotWeights:
    """Pickled by reference: ``torch.load(weights_only=True)`` refuses to rebuild it."""


@pytest.fixture(scope="module")
def pretrained_files(tmp_path_factory):
    """Weights of a toy-vit-micro (seed 7) as open_clip_train's epoch_N.pt and as safetensors."""
    root = tmp_path_factory.mktemp("pretrained")
    model = create_model(get_model_config("toy-vit-micro"), seed=7)
    state = model.state_dict()
    ddp = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 1, "name": "x", "state_dict": ddp, "optimizer": {"state": {}}}, root / "epoch_1.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, root / "weights.safetensors")
    torch.save({"state_dict": state, "extra": NotWeights()}, root / "pickled.pt")
    torch.save(create_model(get_model_config("toy-vit-w16")).state_dict(), root / "other_model.pt")
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), root / "torchscript.pt")
    return root, state


def test_pretrained_weights_files_start_training(pretrained_files, small_data_dir, tmp_path, capsys):
    root, state = pretrained_files
    config = load_preset("tiny")
    for name in ("epoch_1.pt", "weights.safetensors"):
        model = initial_model(config.replace(pretrained=str(root / name)), get_model_config(config.model))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the command line, in memory: a vanishing lr keeps the pretrained weights
    assert run_quiet(["train", "--data", small_data_dir / "train.csv", "--out", tmp_path / "ckpt",
                      "--preset", "tiny", "--pretrained", root / "epoch_1.pt", "--lr", 1e-12,
                      "--no-progress"])[0] == 0  # fmt: skip
    assert "from scratch" not in capsys.readouterr().err
    trained = open_clip.create_model(f"local-dir:{tmp_path / 'ckpt'}")
    assert all(torch.allclose(trained.state_dict()[k], v, atol=1e-6) for k, v in state.items())
    record = json.loads((tmp_path / "ckpt" / "train_config.json").read_text())
    assert record["train_config"]["pretrained"] == str(root / "epoch_1.pt")
    # and handed to open_clip_train, which loads the same file itself
    code, out = run_quiet(["train", "--backend", "open_clip", "--data", small_data_dir / "train.csv", "--out",
                           tmp_path / "oc", "--preset", "tiny", "--pretrained", root / "epoch_1.pt",
                           "--dry-run"])  # fmt: skip
    assert code == 0 and f"--pretrained {root / 'epoch_1.pt'}" in out
    # at the preset's from-scratch lr, with a note (an lr given by the user gets none)
    assert "lr 0.002 is the from-scratch rate of preset 'tiny'" in capsys.readouterr().err


def test_a_pretrained_tag_is_downloaded_by_open_clip(pretrained_files, monkeypatch):
    root, state = pretrained_files
    cfg = {"hf_hub": "someone/toy-clip/"}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag: cfg if tag == "toy-tag" else {})
    downloads = []
    monkeypatch.setattr(
        open_clip, "download_pretrained", lambda c: downloads.append(c) or str(root / "weights.safetensors")
    )
    config = load_preset("tiny").replace(pretrained="toy-tag")
    model = initial_model(config, get_model_config(config.model))
    assert downloads == [cfg] and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("torchscript.pt", "is a TorchScript archive"),
        ("pickled.pt", "not weights only"),
        ("other_model.pt", "cannot load it into model 'toy-vit-micro'"),
        ("no-such-tag", "neither a file nor an open_clip pretrained tag of model 'toy-vit-micro'"),
    ],
)
def test_bad_pretrained_weights_are_refused(
    pretrained_files, small_data_dir, tmp_path, capsys, name, message
):
    root, _ = pretrained_files
    pretrained = root / name if (root / name).exists() else name
    assert run(["train", "--data", small_data_dir / "train.csv", "--out", tmp_path / "ckpt", "--preset",
                "tiny", "--pretrained", pretrained, "--lr", 1e-5, "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "ckpt").exists()


def test_cleanclip_cleans_a_pretrained_model(pretrained_files, small_data_dir, tmp_path, capsys):
    root, _ = pretrained_files
    out = tmp_path / "cleaned"
    assert run_quiet(["defend", "cleanclip", "--pretrained", root / "epoch_1.pt", "--clean-data",
                      small_data_dir / "train.csv", "--lrs", 1e-4, "--finetune-epochs", 1, "--preset", "tiny",
                      "--out", out, "--no-progress"])[0] == 0  # fmt: skip
    record = json.loads((out / "defense.json").read_text())
    assert record["chosen_lr"] == 1e-4 and (out / "checkpoint" / "open_clip_model.safetensors").is_file()
    assert run(["defend", "roclip", "--pretrained", root / "epoch_1.pt", "--data",
                small_data_dir / "train.csv", "--preset", "tiny", "--out", tmp_path / "r"]) == 2  # fmt: skip
    assert "--pretrained names the model that cleanclip cleans" in capsys.readouterr().err


def test_sweeps_can_start_from_pretrained_weights(pretrained_files):
    root, _ = pretrained_files
    document = {
        "data": {"num_train": 300, "num_test": 60, "num_shapes": 4},
        "backdoor": {"target_label": SyntheticConfig(num_shapes=4).classnames[0]},
    }
    plain = parse_sweep({**document, "train": {"preset": "tiny"}}, "t").cells[0]
    assert "pretrained" not in plain.to_dict()["train"]  # existing result keys stay valid
    tuned = parse_sweep(
        {**document, "train": {"preset": "tiny", "pretrained": str(root / "epoch_1.pt")}}, "t"
    )
    assert tuned.cells[0].train.pretrained == str(root / "epoch_1.pt") and tuned.cells[0].key != plain.key
    with pytest.raises(UsageError, match="neither a file nor an open_clip pretrained tag"):
        parse_sweep({**document, "train": {"preset": "tiny", "pretrained": "no-such-tag"}}, "t")


SIGLIP_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SigLIP's image mean and std, not OpenAI's


def test_a_pretrained_start_keeps_its_own_image_mean_and_std(
    small_data_dir, small_train, tmp_path, monkeypatch
):
    """Review item 9: images were always standardised with OpenAI's mean and std, so a pretrained
    model trained with others (SigLIP: 0.5, 0.5) was fine-tuned and evaluated miscalibrated. The
    pretrained config's values now go with the model: training, its checkpoint, evaluation and the
    open_clip_train hand-off; models trained from scratch keep OpenAI's (no download here)."""
    import shutil

    from open_clip_train.params import parse_args

    from poisonclip.evaluate.embeddings import encode_images
    from poisonclip.train import objectives, preprocess
    from poisonclip.train.checkpoint import load_checkpoint, save_checkpoint
    from poisonclip.train.grouped import groupable
    from poisonclip.train.many import _rebuild

    config = load_preset("tiny")
    model_config = get_model_config(config.model)
    openai = (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    scratch = save_checkpoint(tmp_path / "scratch", create_model(model_config), model_config)
    cfg = json.loads((scratch / "open_clip_config.json").read_text())
    assert (cfg["preprocess_cfg"]["mean"], cfg["preprocess_cfg"]["std"]) == tuple(
        map(list, openai)
    )  # as before
    assert preprocess.image_stats(create_model(model_config)) == openai and groupable(
        create_model(model_config)
    )
    # a local model whose open_clip config carries SigLIP's values
    shutil.copytree(scratch, tmp_path / "siglip")
    cfg["preprocess_cfg"].update(mean=[0.5] * 3, std=[0.5] * 3)
    (tmp_path / "siglip" / "open_clip_config.json").write_text(json.dumps(cfg))
    weights = tmp_path / "siglip" / "open_clip_model.safetensors"
    assert preprocess.pretrained_image_stats(config.model, str(weights)) == SIGLIP_STATS
    assert preprocess.pretrained_image_stats("ViT-B-16-SigLIP", "webli") == SIGLIP_STATS  # a tag's config
    assert preprocess.pretrained_image_stats("ViT-B-32", "laion2b_s34b_b79k") == openai
    start = initial_model(config.replace(pretrained=str(weights)), model_config)
    images = small_train.images[:8]
    assert preprocess.image_stats(start) == SIGLIP_STATS and not groupable(start)  # grouped: OpenAI's only
    assert torch.allclose(preprocess.normalize_images(images, start), images.float() / 255 * 2 - 1)
    rebuilt = _rebuild(config.replace(pretrained=str(weights)), start.state_dict(), None)[0]  # sweeps
    assert preprocess.image_stats(rebuilt) == SIGLIP_STATS

    seen = set()  # the mean and std every training step standardised with
    original = preprocess.normalize_images
    monkeypatch.setattr(
        objectives,
        "normalize_images",
        lambda x, m=None: seen.add(preprocess.image_stats(m)) or original(x, m),
    )
    assert run_quiet(["train", "--data", small_data_dir / "train.csv", "--out", tmp_path / "ft", "--preset",
                      "tiny", "--pretrained", weights, "--no-progress"])[0] == 0  # fmt: skip
    assert seen == {SIGLIP_STATS}
    saved = json.loads((tmp_path / "ft" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert (saved["mean"], saved["std"]) == ([0.5] * 3, [0.5] * 3)
    model, _ = load_checkpoint(tmp_path / "ft")  # evaluation reads them back
    assert preprocess.image_stats(model) == SIGLIP_STATS
    with torch.inference_mode():
        expected = model.encode_image(images.float() / 255 * 2 - 1, normalize=True)
    assert torch.allclose(encode_images(model, images), expected, atol=1e-5)
    # open_clip_train takes a tag's values from the tag itself, a file's from --image-mean/--image-std
    hand_off = ["train", "--backend", "open_clip", "--data", small_data_dir / "train.csv", "--out",
                tmp_path / "oc", "--preset", "tiny", "--dry-run"]  # fmt: skip
    code, out = run_quiet([*hand_off, "--pretrained", weights])
    args = parse_args(shlex.split(out)[6:])
    assert code == 0 and args.image_mean == [0.5] * 3 and args.image_std == [0.5] * 3
    code, out = run_quiet(hand_off)
    assert code == 0 and "--image-mean" not in out  # from scratch: the command as before


@pytest.fixture
def fresh_tokenizers():
    from poisonclip.train import model

    model._tokenizer.cache_clear()
    yield model
    model._tokenizer.cache_clear()


def test_each_model_gets_its_own_tokenizer(fresh_tokenizers, monkeypatch):
    captions = ["a photo of a star.", "a red circle " * 30]
    for name, length in (("toy-vit-micro", 16), ("ViT-B-32", 77)):  # CLIP's BPE: as open_clip.tokenize
        tokens = fresh_tokenizers.tokenize(captions, get_model_config(name))
        assert torch.equal(tokens, open_clip.tokenize(captions, context_length=length))
    # SigLIP's config names its Hugging Face tokenizer (vocabulary 32,000: CLIP's ids would not fit)
    made = []

    class Recorder:
        def __init__(self, name, **kwargs):
            made.append((name, kwargs))

        def __call__(self, texts):
            return torch.zeros(len(texts), 64, dtype=torch.long)

    monkeypatch.setattr(open_clip.tokenizer, "HFTokenizer", Recorder)
    assert fresh_tokenizers.tokenize(captions, get_model_config("ViT-B-16-SigLIP")).shape == (2, 64)
    assert made == [
        ("timm/ViT-B-16-SigLIP", {"context_length": 64, "tokenizer_mode": None, "clean": "canonicalize"})
    ]


def test_a_missing_hugging_face_tokenizer_is_a_clear_error(fresh_tokenizers, monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("No module named 'transformers'")

    monkeypatch.setattr(open_clip.tokenizer, "HFTokenizer", missing)
    with pytest.raises(
        UsageError, match="Hugging Face tokenizer 'timm/ViT-B-16-SigLIP': pip install transformers"
    ):
        fresh_tokenizers.tokenizer_for(get_model_config("ViT-B-16-SigLIP"))


def test_caption_edits_refuse_a_hugging_face_tokenizer():
    """CleanCLIP, RoCLIP and SafeCLIP edit CLIP BPE ids; SigLIP's ids would be scrambled silently."""
    from poisonclip.train.augment import check_caption_edits

    check_caption_edits(get_model_config("ViT-B-32"))
    with pytest.raises(UsageError, match="tokenizer is 'timm/ViT-B-16-SigLIP'"):
        check_caption_edits(get_model_config("ViT-B-16-SigLIP"))
