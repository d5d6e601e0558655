"""Per-sample losses for the ABL-style detector (eval-mode passes after the first epochs) on disk."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from poisonclip.data.io import write_json_atomic
from poisonclip.errors import UsageError

LOSS_RECORD_NAME = "sample_losses.json"


class LossTracker:
    """An ``on_epoch_end`` callback for ``train_clip``: after each of the first ``epochs`` epochs,
    one eval-mode pass over the whole training set computes every sample's CLIP loss, and the
    tracker averages them over those epochs (Huang et al.'s ABL baseline: ``track_training_loss``
    after each of the first 10 of 32 epochs, in eval mode, with no gradient).

    As in their pass, the loss is computed in shuffled batches of at most ``batch_size`` (a fresh
    seeded permutation each pass, none dropped), so a sample's negatives are its batch's other
    pairs, as in training. Their last batch is smaller; here the batches are split evenly, so that
    no sample is scored against only a handful of others.
    """

    def __init__(self, num_samples: int, epochs: int = 2, batch_size: int = 64, seed: int = 0) -> None:
        if epochs < 1 or batch_size < 2:
            raise UsageError(
                f"loss tracking needs at least one epoch and batches of 2, got {epochs}, {batch_size}"
            )
        self.epochs, self.batch_size = epochs, batch_size
        self.sums = torch.zeros(num_samples, dtype=torch.float64)
        self.counts = torch.zeros(num_samples, dtype=torch.float64)
        self._order = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(
        self, model: torch.nn.Module, epoch: int, images: torch.Tensor, tokens: torch.Tensor
    ) -> None:
        """After epoch ``epoch``: ``images`` uint8 [N, 3, H, W], ``tokens`` [N, L] (the training set)."""
        if epoch >= self.epochs:
            return
        from poisonclip.train.objectives import clip_loss_per_sample
        from poisonclip.train.preprocess import normalize_images

        model.eval()
        device = next(model.parameters()).device  # the training set may stay in CPU memory
        order = torch.randperm(len(images), generator=self._order)
        for ids in order.tensor_split(math.ceil(len(images) / self.batch_size)):
            rows = ids.to(images.device)
            image = model.encode_image(normalize_images(images[rows].to(device), model), normalize=True)
            text = model.encode_text(tokens[rows].to(device), normalize=True)
            losses = clip_loss_per_sample(image.float(), text.float(), model.logit_scale.exp())
            self.sums.index_add_(0, ids, losses.double().cpu())
            self.counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))

    def mean(self) -> torch.Tensor:
        """float64 [N]: mean loss per sample; NaN for samples never scored."""
        return self.sums / self.counts


def save_loss_record(path: str | Path, keys: Sequence[str], losses: torch.Tensor, epochs: int) -> None:
    """Write ``{"epochs", "keys", "loss"}`` as JSON (NaN as null), atomically."""
    values = [None if v != v else v for v in losses.tolist()]
    write_json_atomic(path, {"epochs": epochs, "keys": list(keys), "loss": values})


def load_loss_record(path: str | Path, keys: Sequence[str]) -> torch.Tensor:
    """float64 [N] losses for the samples ``keys``, in that order; the record must list exactly them."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"loss record not found: {path}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        recorded, losses = record["keys"], record["loss"]
    except (ValueError, KeyError, TypeError) as err:  # not JSON, or not a record
        raise UsageError(f"{path}: not a loss record written by poisonclip train ({err!r})") from err
    if recorded != list(keys):
        raise UsageError(
            f"{path} records {len(recorded)} samples that differ from the {len(keys)} given "
            "(pass the same --data and --poisons, in the same order, as when training)"
        )
    return torch.tensor([float("nan") if v is None else v for v in losses], dtype=torch.float64)
