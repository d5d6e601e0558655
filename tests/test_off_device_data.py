"""Training data kept in CPU memory for a GPU model (``--no-data-on-device``), checked on the CPU.

``train_clip`` then hands objectives the whole training set in CPU memory (``start_epoch``, the
epoch-end callbacks) but each batch, and its sample ids, on the model's device. There is no GPU
here: the model and the batches live on a fake CUDA device (torch's ``FakeTensorMode``, which
propagates devices through every op and refuses to mix them, without running any kernel), so
whatever reaches the model from the CPU-side data unmoved fails here as it would on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from poisonclip.defend.memory import NearestNeighbourBank
from poisonclip.defend.safeclip import CrossmodalObjective, InmodalObjective
from poisonclip.detect.loss_tracking import LossTracker
from poisonclip.train.objectives import Batch, CleanClipObjective

N, B, L, SIZE, DIM, VOCAB = 12, 4, 6, 8, 5, 20
GPU = torch.device("cuda", 0)  # a fake one: nothing runs on a GPU


class TinyClip(torch.nn.Module):
    """The parts of ``open_clip.CLIP`` the objectives use; refuses inputs off its own device."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.zeros((), device=device))
        self.visual = torch.nn.Linear(3 * SIZE * SIZE, DIM, device=device)
        self.token_embedding = torch.nn.Embedding(VOCAB, DIM, device=device)
        self.seen: list[torch.device] = []

    def _check(self, x: torch.Tensor) -> None:
        self.seen.append(x.device)
        assert x.device == self.logit_scale.device, f"input on {x.device}, model on {self.logit_scale.device}"

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self._check(images)
        return torch.nn.functional.normalize(self.visual(images.flatten(1)), dim=-1)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self._check(tokens)
        return torch.nn.functional.normalize(self.token_embedding(tokens).mean(1), dim=-1)


def flip(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


@pytest.fixture
def fake_gpu():
    """Inside: a model on the fake GPU, the training set in CPU memory (as ``data_on_device=False``
    leaves it) and ``batch(ids)``, what ``train_clip`` passes an objective for CPU ids [B]."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = TinyClip(GPU)
        images = torch.zeros(N, 3, SIZE, SIZE, dtype=torch.uint8)
        tokens = torch.zeros(N, L, dtype=torch.long)

        def batch(ids: torch.Tensor) -> Batch:
            return Batch(images[ids].to(GPU), tokens[ids].to(GPU), ids.to(GPU))

        yield model, images, tokens, batch


def test_cleanclip_picks_fixed_caption_edits_in_cpu_memory_for_a_gpu_batch(fake_gpu):
    model, images, tokens, batch = fake_gpu
    objective = CleanClipObjective(flip, aug_tokens=tokens.clone())
    objective.start_epoch(model, 0, images, tokens)  # the edits stay beside the training set
    assert objective.aug_tokens.device.type == "cpu"
    losses = objective(model, batch(torch.arange(B)), 0)
    assert losses.shape == (B,) and losses.device == GPU
    assert model.seen and all(device == GPU for device in model.seen)


@pytest.mark.parametrize("kind", ["inmodal", "crossmodal"])
def test_safeclip_picks_second_caption_views_in_cpu_memory_for_a_gpu_batch(fake_gpu, kind):
    model, images, tokens, batch = fake_gpu
    if kind == "inmodal":
        objective = InmodalObjective((NearestNeighbourBank(8, 0), NearestNeighbourBank(8, 1)), flip)
    else:
        objective = CrossmodalObjective(flip)
    objective.second = tokens.clone()
    objective.start_epoch(model, 0, images, tokens)
    assert objective.second.device.type == "cpu"
    losses = objective(model, batch(torch.arange(B)), 0)
    assert losses.shape == (B,) and losses.device == GPU
    assert model.seen and all(device == GPU for device in model.seen)


def test_loss_tracking_moves_each_batch_of_cpu_data_to_the_model(fake_gpu):
    model, images, tokens, _ = fake_gpu
    tracker = LossTracker(N, epochs=1, batch_size=B)
    tracker(model, 0, images, tokens)  # the training set as train_clip's on_epoch_end passes it
    assert len(model.seen) == 2 * (N // B) and all(device == GPU for device in model.seen)
    assert tracker.sums.device.type == "cpu" and tracker.mean().shape == (N,)  # fakes hold no values


def test_on_one_device_nothing_moves():
    """The usual case (data on the model's device, or everything on the CPU) is unchanged."""
    model, tokens = TinyClip(torch.device("cpu")), torch.randint(VOCAB, (N, L))
    images = torch.randint(256, (N, 3, SIZE, SIZE), dtype=torch.uint8)
    objective = CleanClipObjective(flip, aug_tokens=tokens.clone())
    objective.start_epoch(model, 0, images, tokens)
    ids = torch.arange(B)
    assert torch.isfinite(objective(model, Batch(images[ids], tokens[ids], ids), 0)).all()
    tracker = LossTracker(N, epochs=1, batch_size=B)
    tracker(model, 0, images, tokens)
    assert torch.isfinite(tracker.mean()).all()
