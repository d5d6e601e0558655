"""One trial = train one model on (clean data ∪ poisons) and evaluate it. Sweeps are grids of these."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from poisonclip.attacks.triggers import Trigger
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.evaluate.suite import BackdoorEvaluation, evaluate_backdoor
from poisonclip.train.checkpoint import load_checkpoint_as, save_checkpoint
from poisonclip.train.config import TrainConfig
from poisonclip.train.loop import BatchCallback, EpochCallback, Objective, TrainStats, train_clip
from poisonclip.train.model import context_length_of, get_model_config, initial_model, tokenize


def train_model(
    dataset: ImageTextDataset,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    init_checkpoint: str | Path | None = None,
    objective: Objective | None = None,
    on_batch: BatchCallback | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> tuple[torch.nn.Module, dict, TrainStats]:
    """Build the configured model from ``config.seed`` or ``config.pretrained`` (or start from
    ``init_checkpoint``, which must have the configured architecture), train it on ``dataset``
    with ``objective`` (default: the CLIP loss; ``on_batch`` and ``on_epoch_end`` as in
    ``train_clip``), optionally save it."""
    model_config = get_model_config(config.model)
    if init_checkpoint is None:
        model = initial_model(config, model_config)
    elif config.pretrained:
        raise UsageError("start from a pretrained model or from a checkpoint, not both")
    else:
        model = load_checkpoint_as(init_checkpoint, model_config)
    tokens = tokenize(dataset.captions, model_config)
    stats = train_clip(model, dataset.images, tokens, config, progress, objective, on_batch, on_epoch_end)
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, model, model_config, config, stats)
    return model, model_config, stats


def train_and_evaluate_backdoor(
    dataset: ImageTextDataset,
    test: ImageTextDataset,
    classnames: list[str],
    config: TrainConfig,
    target_label: str,
    trigger: Trigger,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict, BackdoorEvaluation]:
    """Train on ``dataset`` (clean or poisoned) and return (flat metrics, evaluation with ``trigger``)."""
    model, model_config, stats = train_model(dataset, config, checkpoint_dir, progress)
    return evaluate_trained_backdoor(
        model, model_config, stats, test, classnames, target_label, trigger, config.seed
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
    templates: str = "synthetic",
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
        context_length=context_length_of(model_config),
    )
    metrics = {
        **evaluation.metrics,
        **{f"train_{k}": v for k, v in dataclasses.asdict(stats).items()},
    }
    metrics["train_seconds"] = stats.train_seconds
    return metrics, evaluation
