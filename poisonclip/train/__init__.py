"""Training: the in-memory trainer, one model from a config (``train_model``), model configs,
presets and checkpoints.

The names below are imported on first use: presets and model-config names are listed without
loading torch.
"""

from poisonclip.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.train.checkpoint": ("load_checkpoint", "save_checkpoint"),
        "poisonclip.train.config": ("TrainConfig", "list_model_configs", "list_presets", "load_preset"),
        "poisonclip.train.fit": ("train_model",),
        "poisonclip.train.loop": ("TrainStats", "normalize_images", "resolve_device", "train_clip"),
        "poisonclip.train.many": ("train_many",),
        "poisonclip.train.model": ("create_model", "get_model_config", "image_size_of", "tokenize"),
    },
)
