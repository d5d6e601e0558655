"""Experiments: trials (train + evaluate) and the runners built from them (the demo, sweeps)."""

from poisonclip.experiments.demo import DemoConfig, format_table, run_demo
from poisonclip.experiments.targeted_trial import train_and_evaluate_targeted
from poisonclip.experiments.trial import train_and_evaluate_backdoor
from poisonclip.train.fit import train_model

__all__ = [
    "DemoConfig",
    "format_table",
    "run_demo",
    "train_and_evaluate_backdoor",
    "train_and_evaluate_targeted",
    "train_model",
]
