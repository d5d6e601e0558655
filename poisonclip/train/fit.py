"""One model from a config: build (or load) it, train it on a dataset, optionally save it.

Experiments train their models with it, and so does the filter-then-retrain defense.
"""

from __future__ import annotations

from pathlib import Path

import torch

from poisonclip.data.dataset import ImageTextDataset
from poisonclip.errors import UsageError
from poisonclip.train.checkpoint import load_checkpoint_as, save_checkpoint
from poisonclip.train.config import TrainConfig
from poisonclip.train.loop import BatchCallback, EpochCallback, Objective, TrainStats, train_clip
from poisonclip.train.model import get_model_config, initial_model, tokenize


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
