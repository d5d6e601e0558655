"""poisonclip: poisoning and backdooring CLIP-style contrastive models (Carlini & Terzis, ICLR 2022).

Data flows one way: dataset → poison set → training → embeddings → metrics → results → figures.
The names below are imported on first use, so that the command line's help and listings do not
load torch.
"""

from poisonclip.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "poisonclip.train.config",
    "UsageError": "poisonclip.errors",
    "attacks": "poisonclip.attacks",
    "data": "poisonclip.data",
    "evaluate": "poisonclip.evaluate",
    "experiments": "poisonclip.experiments",
    "load_checkpoint": "poisonclip.train.checkpoint",
    "make_backdoor": "poisonclip.attacks.backdoor",
    "make_synthetic": "poisonclip.data.synthetic",
    "read_csv_dataset": "poisonclip.data.dataset",
    "train": "poisonclip.train",
    "train_clip": "poisonclip.train.loop",
    "write_synthetic": "poisonclip.data.synthetic",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
