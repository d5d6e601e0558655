"""What the targeted-attack tests share: the small set's class names, a dataset of captions alone,
a target from a split and a label that is not its own."""

import torch

from poisonclip.attacks import Target
from poisonclip.data import SHAPES, ImageTextDataset
from tests.conftest import SMALL

CLASSNAMES = list(SHAPES[: SMALL.num_shapes])


def text_dataset(captions, image_size=8):
    n = len(captions)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, image_size, image_size)
    return ImageTextDataset(
        [f"img/{i}.png" for i in range(n)], images.clone(), list(captions), torch.full((n,), -1)
    )


def make_target(split, index, label, classnames=CLASSNAMES):
    return Target(split.images[index], label, split.keys[index], index, classnames[int(split.labels[index])])


def other_label(split, index):
    return next(c for c in CLASSNAMES if c != CLASSNAMES[int(split.labels[index])])
