"""Per-sample loss tracking during training (for the ABL-style detector), and its file on disk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from poisonclip.data.io import write_json_atomic
from poisonclip.errors import UsageError

LOSS_RECORD_NAME = "sample_losses.json"


class LossTracker:
    """An ``on_batch`` callback for ``train_clip``: sums each sample's loss over the first
    ``epochs`` epochs, by sample id (the row of the training set)."""

    def __init__(self, num_samples: int, epochs: int = 2) -> None:
        if epochs < 1:
            raise UsageError(f"loss tracking needs at least one epoch, got {epochs}")
        self.epochs = epochs
        self.sums = torch.zeros(num_samples, dtype=torch.float64)
        self.counts = torch.zeros(num_samples, dtype=torch.float64)

    def __call__(self, epoch: int, ids: torch.Tensor, losses: torch.Tensor) -> None:
        if epoch >= self.epochs:
            return
        if self.sums.device != ids.device:  # accumulate where training runs: no sync per step
            self.sums, self.counts = self.sums.to(ids.device), self.counts.to(ids.device)
        self.sums.index_add_(0, ids, losses.double())
        self.counts.index_add_(0, ids, torch.ones_like(losses, dtype=torch.float64))

    def mean(self) -> torch.Tensor:
        """float64 [N] on the CPU: mean loss per sample; NaN for samples never seen."""
        return (self.sums / self.counts).cpu()


def save_loss_record(path: str | Path, keys: Sequence[str], losses: torch.Tensor, epochs: int) -> None:
    """Write ``{"epochs", "keys", "loss"}`` as JSON (NaN as null), atomically."""
    values = [None if v != v else v for v in losses.tolist()]
    write_json_atomic(path, {"epochs": epochs, "keys": list(keys), "loss": values})


def load_loss_record(path: str | Path, keys: Sequence[str]) -> torch.Tensor:
    """float64 [N] losses for the samples ``keys``, in that order; the record must list exactly them."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"loss record not found: {path}")
    record = json.loads(path.read_text())
    if record["keys"] != list(keys):
        raise UsageError(
            f"{path} records {len(record['keys'])} samples that differ from the {len(keys)} given "
            "(pass the same --data and --poisons, in the same order, as when training)"
        )
    return torch.tensor([float("nan") if v is None else v for v in record["loss"]], dtype=torch.float64)
