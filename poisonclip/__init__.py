"""poisonclip: poisoning and backdooring CLIP-style contrastive models (Carlini & Terzis, ICLR 2022).

Data flows one way: dataset → poison set → training → embeddings → metrics → results → figures.
"""

from poisonclip import attacks, data, evaluate, experiments, train
from poisonclip.attacks import make_backdoor
from poisonclip.data import make_synthetic, read_csv_dataset, write_synthetic
from poisonclip.errors import UsageError
from poisonclip.train import TrainConfig, load_checkpoint, train_clip

__version__ = "0.1.0"

__all__ = [
    "TrainConfig",
    "UsageError",
    "attacks",
    "data",
    "evaluate",
    "experiments",
    "load_checkpoint",
    "make_backdoor",
    "make_synthetic",
    "read_csv_dataset",
    "train",
    "train_clip",
    "write_synthetic",
]
