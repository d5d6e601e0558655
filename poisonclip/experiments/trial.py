"""One trial = train one model on (clean data ∪ poisons) and evaluate it. Sweeps are grids of these."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from poisonclip.attacks.triggers import Trigger
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.evaluate.suite import BackdoorEvaluation, evaluate_backdoor
from poisonclip.train.config import TrainConfig
from poisonclip.train.fit import train_model
from poisonclip.train.loop import TrainStats
from poisonclip.train.model import tokenizer_for


def train_and_evaluate_backdoor(
    dataset: ImageTextDataset,
    test: ImageTextDataset,
    classnames: list[str],
    config: TrainConfig,
    target_label: str,
    trigger: Trigger,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    *,
    templates: str,
) -> tuple[dict, BackdoorEvaluation]:
    """Train on ``dataset`` (clean or poisoned) and return (flat metrics, evaluation with ``trigger``
    and the zero-shot prompts ``templates``: a set name or a templates file)."""
    model, model_config, stats = train_model(dataset, config, checkpoint_dir, progress)
    return evaluate_trained_backdoor(
        model, model_config, stats, test, classnames, target_label, trigger, config.seed, templates
    )


def evaluate_trained_backdoor(
    model: torch.nn.Module,
    model_config: dict,
    stats: TrainStats,
    test: ImageTextDataset,
    classnames: list[str],
    target_label: str,
    trigger: Trigger,
    seed: int,
    templates: str,
) -> tuple[dict, BackdoorEvaluation]:
    """Evaluate a model from ``train_model``: (flat metrics incl. training stats, evaluation).

    Evaluation-only settings (the trigger's placement on test images, the zero-shot ``templates``:
    a set name or a file) can be varied on one trained model by calling this once per setting;
    ``seed`` draws the trigger's per-image randomness (random patch positions).
    """
    evaluation = evaluate_backdoor(
        model,
        test,
        classnames,
        target_label,
        trigger,
        seed=seed,
        templates=templates,
        tokenizer=tokenizer_for(model_config),
    )
    metrics = {
        **evaluation.metrics,
        **{f"train_{k}": v for k, v in dataclasses.asdict(stats).items()},
    }
    metrics["train_seconds"] = stats.train_seconds
    return metrics, evaluation
