"""Training: the in-memory trainer, model configs, presets and checkpoints.

The names below are imported on first use: presets and model-config names are listed without
loading torch.
"""

from poisonclip.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "poisonclip.train.config",
    "TrainStats": "poisonclip.train.loop",
    "create_model": "poisonclip.train.model",
    "get_model_config": "poisonclip.train.model",
    "image_size_of": "poisonclip.train.model",
    "list_model_configs": "poisonclip.train.config",
    "list_presets": "poisonclip.train.config",
    "load_checkpoint": "poisonclip.train.checkpoint",
    "load_preset": "poisonclip.train.config",
    "normalize_images": "poisonclip.train.loop",
    "resolve_device": "poisonclip.train.loop",
    "save_checkpoint": "poisonclip.train.checkpoint",
    "tokenize": "poisonclip.train.model",
    "train_clip": "poisonclip.train.loop",
    "train_many": "poisonclip.train.many",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
