"""poisonclip: poisoning and backdooring CLIP-style contrastive models (Carlini & Terzis, ICLR 2022).

Data flows one way: dataset → poison set → training → embeddings → metrics → results → figures.
The names below are imported on first use, so that the command line's help and listings do not
load torch.
"""

from poisonclip.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.attacks": ("attacks",),
        "poisonclip.attacks.backdoor": ("make_backdoor",),
        "poisonclip.data": ("data",),
        "poisonclip.data.dataset": ("read_csv_dataset",),
        "poisonclip.data.synthetic": ("make_synthetic", "write_synthetic"),
        "poisonclip.errors": ("UsageError",),
        "poisonclip.evaluate": ("evaluate",),
        "poisonclip.experiments": ("experiments",),
        "poisonclip.train": ("train",),
        "poisonclip.train.checkpoint": ("load_checkpoint",),
        "poisonclip.train.config": ("TrainConfig",),
        "poisonclip.train.loop": ("train_clip",),
    },
)
