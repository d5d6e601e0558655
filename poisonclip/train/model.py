"""Model configs (open_clip's JSON schema) shipped in the package, and model construction."""

from __future__ import annotations

import functools
import inspect
import json
import pickle
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
from safetensors import SafetensorError

from poisonclip.errors import UsageError
from poisonclip.train.config import list_model_configs
from poisonclip.train.preprocess import pretrained_image_stats, set_image_stats

if TYPE_CHECKING:
    from poisonclip.train.config import TrainConfig


def get_model_config(name: str) -> dict:
    """Resolve ``name``: one of ours, a JSON file path, or an open_clip built-in (``RN50``...)."""
    if name in list_model_configs():
        path = resources.files("poisonclip.train") / "model_configs" / f"{name}.json"
        return json.loads(path.read_text())
    if name.endswith(".json") and Path(name).is_file():
        return _read_model_config_file(Path(name))
    config = open_clip.get_model_config(name)
    if config is None:
        raise UsageError(
            f"unknown model config {name!r}; ours: {', '.join(list_model_configs())}, "
            "or any open_clip model name, or a path to a JSON config"
        )
    return config


# The keys a model config may hold: the CLIP / CustomTextCLIP constructor's, and ours.
_CONFIG_KEYS = (
    set(inspect.signature(open_clip.CLIP).parameters)
    | set(inspect.signature(open_clip.CustomTextCLIP).parameters)
    | {"custom_text"}
)


def _read_model_config_file(path: Path) -> dict:
    """An open_clip model config from a JSON file (its ``model_cfg`` if it is a checkpoint's
    ``open_clip_config.json``), checked for what building the model and reading its sizes need."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # not JSON (JSONDecodeError), not UTF-8, unreadable
        raise UsageError(f"model config {path}: not readable JSON ({err})") from err
    if isinstance(config, dict) and isinstance(config.get("model_cfg"), dict):
        config = config["model_cfg"]
    if not isinstance(config, dict):
        raise UsageError(f"model config {path}: must be a JSON object, not {type(config).__name__}")
    vision, text = config.get("vision_cfg"), config.get("text_cfg")
    size = vision.get("image_size") if isinstance(vision, dict) else None
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not (isinstance(config.get("embed_dim"), int) and isinstance(vision, dict) and isinstance(text, dict)):
        raise UsageError(
            f"model config {path}: not an open_clip model config (it needs embed_dim, vision_cfg and "
            f"text_cfg; keys: {', '.join(sorted(config)) or 'none'})"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UsageError(
            f"model config {path}: vision_cfg needs image_size, a positive number of pixels (or a square "
            f"[size, size]), got {size!r}"
        )
    if unknown := sorted(set(config) - _CONFIG_KEYS):
        raise UsageError(f"model config {path}: unknown keys {unknown}")
    return config


def create_model(model_config: dict, seed: int = 0) -> open_clip.CLIP:
    """Build an ``open_clip.CLIP`` (or CustomTextCLIP) from a config dict, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = dict(model_config)
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**config)


def initial_model(config: TrainConfig, model_config: dict) -> torch.nn.Module:
    """The model that training starts from: ``config.pretrained``'s weights (and the image mean and
    std they were trained with, ``pretrained_image_stats``), else fresh from ``config.seed``."""
    model = create_model(model_config, seed=config.seed)
    if config.pretrained:
        load_pretrained(model, config.model, config.pretrained)
        set_image_stats(model, pretrained_image_stats(config.model, config.pretrained))
    return model


def check_pretrained(model_name: str, pretrained: str) -> Path | None:
    """Validate ``--pretrained`` without loading it: the weights file, or ``None`` for an open_clip
    pretrained tag of ``model_name``. TorchScript archives (OpenAI's original ``.pt``) are refused:
    loading one runs its code, and open_clip itself loads files with ``weights_only=True``."""
    path = Path(pretrained)
    if path.is_file():
        if zipfile.is_zipfile(path) and _is_torchscript(path):
            raise UsageError(
                f"--pretrained {path} is a TorchScript archive (OpenAI's original .pt), which cannot "
                "be loaded as weights only; use the open_clip tag instead (e.g. --pretrained openai: "
                "open_clip downloads the same weights as a state dict)"
            )
        return path
    if path.is_dir():
        raise UsageError(f"--pretrained {path} is a directory: name the weights file in it")
    if open_clip.get_pretrained_cfg(model_name, pretrained):
        return None
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise UsageError(
        f"--pretrained {pretrained!r} is neither a file nor an open_clip pretrained tag of model "
        f"{model_name!r} (its tags: {', '.join(tags) or 'none'})"
    )


def resolve_pretrained(model_name: str, pretrained: str) -> Path:
    """The weights file of ``--pretrained`` (checked by ``check_pretrained``): the file itself, or
    a tag's weights, downloaded now (and cached) by open_clip, as ``open_clip.create_model(model_name,
    pretrained=tag)`` does. Call it before any other work: a download that fails (no network, a
    full disk, a bad checksum) is a ``UsageError``; the cached file is not downloaded again."""
    path = check_pretrained(model_name, pretrained)
    if path is not None:
        return path
    try:
        found = open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, pretrained))
    # No network (open_clip turns huggingface_hub's errors into FileNotFoundError; urllib raises
    # URLError, an OSError), a full disk, a bad checksum or no huggingface_hub (RuntimeError).
    except (OSError, RuntimeError, ValueError) as err:
        detail = " ".join(str(err).strip().splitlines()[:2])[:300] or type(err).__name__
        raise UsageError(
            f"--pretrained {pretrained}: cannot download the weights of model {model_name!r} (no "
            f"network? they are cached after a first download): {detail}"
        ) from err
    if not found or not Path(found).is_file():
        raise UsageError(f"--pretrained {pretrained}: open_clip found no weights file for it ({found!r})")
    return Path(found)


def _is_torchscript(path: Path) -> bool:
    # What torch.load itself checks: torch.save's zip archives hold no constants.pkl.
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:  # torch.load reports a damaged file when it is loaded
        return False


def load_pretrained(model: torch.nn.Module, model_name: str, pretrained: str) -> None:
    """Load ``pretrained`` (see ``check_pretrained``) into ``model`` with open_clip's own loader:
    safetensors, or ``torch.load(weights_only=True)`` (open_clip_train's ``epoch_N.pt`` with its DDP
    ``module.`` prefix, a plain state dict), every key of the model required. A tag is downloaded
    (and cached) by open_clip, as ``open_clip.create_model(model_name, pretrained=tag)`` does."""
    path = resolve_pretrained(model_name, pretrained)
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(
            f"--pretrained {pretrained}: not weights only (it pickles other objects), so it is not "
            f"loaded: {str(err).splitlines()[0]}"
        ) from err
    # What torch.load, safetensors and load_state_dict raise on a file of another model or format.
    except (
        RuntimeError, KeyError, ValueError, TypeError, AttributeError, StopIteration, OSError, EOFError,
        SafetensorError,
    ) as err:  # fmt: skip
        detail = " ".join(str(err).strip().splitlines()[:2])[:300] or type(err).__name__
        raise UsageError(
            f"--pretrained {pretrained}: cannot load it into model {model_name!r}: {detail}"
        ) from err


def image_size_of(model_config: dict) -> int:
    size = model_config["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def context_length_of(model_config: dict) -> int:
    return model_config["text_cfg"].get("context_length", 77)


Tokenizer = Callable[[list[str]], torch.Tensor]  # captions -> int64 [N, context_length] token ids


def tokenizer_for(model_config: dict) -> Tokenizer:
    """The tokenizer of a model's text tower, chosen from its config as ``open_clip.get_tokenizer``
    chooses it: the Hugging Face tokenizer its ``text_cfg`` names (SigLIP, XLM-R towers; fetched
    and cached by ``transformers``, so only for a model a user names), else CLIP's packaged BPE
    (``open_clip.tokenize``: offline), with the config's ``tokenizer_kwargs`` and context length.
    Deviation: ``get_tokenizer``'s SigLIP fallback by model *name* is not needed, since every SigLIP
    config of open_clip names its tokenizer."""
    text = model_config["text_cfg"]
    kwargs = json.dumps(text.get("tokenizer_kwargs", {}), sort_keys=True)  # a hashable cache key
    return _tokenizer(
        text.get("hf_tokenizer_name", ""), text.get("tokenizer_mode"), context_length_of(model_config), kwargs
    )


@functools.cache
def _tokenizer(hf_name: str, mode: str | None, context_length: int, kwargs_json: str) -> Tokenizer:
    kwargs = json.loads(kwargs_json)
    if not hf_name:
        return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)
    try:
        return open_clip.tokenizer.HFTokenizer(
            hf_name, context_length=context_length, tokenizer_mode=mode, **kwargs
        )
    except ImportError as err:
        raise UsageError(
            f"this model's text tower uses the Hugging Face tokenizer {hf_name!r}: pip install transformers"
        ) from err
    except OSError as err:  # not cached and no network, or no such tokenizer
        raise UsageError(
            f"cannot load the tokenizer {hf_name!r} (no network? it is cached once fetched): {err}"
        ) from err


def tokenize(captions: list[str], model_config: dict) -> torch.Tensor:
    """int64 [N, context_length] token ids with the model's tokenizer (``tokenizer_for``)."""
    return tokenizer_for(model_config)(list(captions))
