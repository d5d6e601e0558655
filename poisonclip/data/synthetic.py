"""Procedural image–caption data: coloured shapes on dark backgrounds, captioned from templates.

The embedded default dataset. It is built to make the paper's attacks meaningful at toy scale:

* classes are shapes (``SHAPES``), drawn with random size, position and rotation, in one of
  ``COLOURS``; the zero-shot task is to name the shape;
* captions come from many templates with size/position words, distractor words ("stock photo",
  "hd") and noise (a few captions never name the shape);
* a few captions *mention another shape* while describing this one ("a red square on a circle
  mat"), like the paper's "basketball hoop" caption, so a substring search for a label returns
  mostly — not only — images of that label.

Everything is deterministic given ``seed``. Images are 8-bit RGB arrays; ``write_synthetic``
stores them as PNG files plus open_clip-style CSVs, which are then read back through the same
loader as a user's dataset (:mod:`poisonclip.data.dataset`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from poisonclip.data.dataset import write_csv_dataset
from poisonclip.data.io import atomic_path
from poisonclip.errors import UsageError
from poisonclip.keys import ADDED_LATER, config_dict

TRAIN_IMAGE_DIR = "images/train"  # where write_synthetic puts the training PNGs (their keys)

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart", "hexagon",
    "pentagon", "moon", "arrow", "bar", "oval", "dome", "chevron", "hourglass", "tee", "frame",
    "plus",
)  # fmt: skip

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 220, 50),
    "cyan": (50, 210, 220),
    "magenta": (210, 60, 200),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
}

_TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "{colour} {shape} on a dark background",
    "a {size} {colour} {shape} in the {position}",
    "clip art of a {shape} painted {colour}",
    "the {shape} is {colour}",
    "a simple {colour} {shape} icon",
    "drawing of a {shape}, {colour}",
    "{shape} shape in {colour}",
    "an image of one {size} {colour} {shape}",
    "a {colour} {shape} sticker",
    "here is a {size} {shape}, coloured {colour}",
    "low resolution {colour} {shape}",
    "my kid drew a {colour} {shape}",
    "a {colour} {shape} near the {position}",
    "{size} {shape} ({colour})",
)
# The caption names another shape ("decoy") while describing this one: substring-search noise.
_MISLEADING_TEMPLATES = (
    "a {colour} {shape} on a {decoy} mat",
    "{colour} {shape} next to a {decoy} logo",
    "a {shape} cut out of a {decoy} poster, {colour}",
    "{decoy} tattoo idea: a {colour} {shape}",
)
# Captions that never name the shape (web captions are often uninformative).
_UNLABELLED_TEMPLATES = (
    "an abstract {colour} thing",
    "untitled image",
    "something {colour} on black",
    "{colour} clip art",
)
_PREFIXES = ("", "", "", "", "stock photo: ", "vintage ", "hd ", "free download - ", "new! ")
_SUFFIXES = ("", "", "", "", " #art", " | royalty free", " 2019", " (vector)", " - image")


@dataclass(frozen=True)
class SyntheticConfig:
    """What ``make_synthetic`` generates. Defaults are the embedded default (demo) dataset."""

    num_train: int = 20_000  # training image–caption pairs
    num_test: int = 2_000  # held-out labelled test images (clean)
    image_size: int = 32  # pixels per side
    num_shapes: int = 20  # classes: the first ``num_shapes`` of SHAPES
    misleading_rate: float = 0.05  # captions that also name a decoy shape
    unlabelled_rate: float = 0.02  # captions that name no shape
    seed: int = 0
    # Store the images at this many pixels per side instead of ``image_size``: the same scenes,
    # captions and labels rendered at another resolution (data that is not at the model's input
    # size; readers resize it to ``image_size``).
    stored_size: int | None = field(default=None, metadata={ADDED_LATER: True})

    def __post_init__(self) -> None:
        if not 2 <= self.num_shapes <= len(SHAPES):
            raise UsageError(f"num_shapes must be in [2, {len(SHAPES)}], got {self.num_shapes}")
        if self.image_size < 8:
            raise UsageError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if self.stored_size is not None and self.stored_size < 8:
            raise UsageError(f"stored_size must be at least 8 pixels, got {self.stored_size}")
        if self.num_train < 1 or self.num_test < 1:
            raise UsageError("num_train and num_test must be positive")
        if self.seed < 0:  # numpy's generators take no negative seeds
            raise UsageError(f"seed must be 0 or more, got {self.seed}")
        for name in ("misleading_rate", "unlabelled_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"{name} must be in [0, 1)")

    @property
    def classnames(self) -> tuple[str, ...]:
        return SHAPES[: self.num_shapes]

    @property
    def templates(self) -> str:
        """The zero-shot prompts of this data: those written for the shapes."""
        return "synthetic"


@dataclass(frozen=True)
class SyntheticSplit:
    """One generated split: ``images`` uint8 [N, H, W, 3], ``labels`` int64 [N] (shape index)."""

    images: np.ndarray
    captions: list[str]
    labels: np.ndarray
    colours: np.ndarray


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` on canonical coordinates (u right, v up, shape within ~[-1, 1])."""
    r = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return r <= 0.9
    if shape == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if shape == "square":
        return np.maximum(au, av) <= 0.75
    if shape == "frame":
        return (np.maximum(au, av) <= 0.85) & (np.maximum(au, av) >= 0.5)
    if shape == "triangle":
        return (v >= -0.7) & (au <= 0.9 * (0.9 - v) / 1.6)
    if shape == "diamond":
        return au + av <= 0.95
    if shape == "cross":
        return (np.minimum(np.abs(u - v), np.abs(u + v)) <= 0.3) & (np.maximum(au, av) <= 0.8)
    if shape == "plus":
        return ((au <= 0.22) & (av <= 0.9)) | ((av <= 0.22) & (au <= 0.9))
    if shape == "star":
        phi = np.arctan2(u, v)
        return r <= 0.38 + 0.55 * np.abs(np.cos(2.5 * phi)) ** 3
    if shape == "heart":
        x, y = u * 1.25, v * 1.25 + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    if shape == "hexagon":
        return (av <= 0.78) & (au * 0.866 + av * 0.5 <= 0.78)
    if shape == "pentagon":
        angles = np.deg2rad(90 + 36 + 72 * np.arange(5))
        inside = np.ones_like(u, dtype=bool)
        for a in angles:
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.7
        return inside
    if shape == "moon":
        return (r <= 0.9) & (np.hypot(u - 0.45, v - 0.25) >= 0.75)
    if shape == "arrow":
        shaft = (av <= 0.2) & (u >= -0.9) & (u <= 0.2)
        head = (u >= 0.1) & (u <= 0.9) & (av <= (0.9 - u) * 0.9)
        return shaft | head
    if shape == "bar":
        return (au <= 0.9) & (av <= 0.22)
    if shape == "oval":
        return (u / 0.95) ** 2 + (v / 0.55) ** 2 <= 1
    if shape == "dome":
        return (r <= 0.9) & (v >= -0.25)
    if shape == "chevron":
        return (np.abs(v - (au - 0.4)) <= 0.25) & (au <= 0.85)
    if shape == "hourglass":
        return (au <= av * 0.9) & (av <= 0.85)
    if shape == "tee":
        return ((np.abs(v - 0.6) <= 0.22) & (au <= 0.85)) | ((au <= 0.2) & (v >= -0.9) & (v <= 0.6))
    raise UsageError(f"unknown shape {shape!r}")


def render_shapes(
    shapes: np.ndarray,
    colours: np.ndarray,
    rng: np.random.Generator,
    image_size: int,
    classnames: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one shape per image. Returns images uint8 [N, S, S, 3], scales [N], centres [N, 2].

    Anti-aliased by 2× supersampling; random scale, centre, rotation, background level and noise.
    """
    n, s, ss = len(shapes), image_size, 2
    scale = rng.uniform(0.45, 0.8, n)  # half-extent as a fraction of the half image
    centre = rng.uniform(-1, 1, (n, 2)) * (1 - scale)[:, None] * 0.9
    theta = rng.uniform(-0.35, 0.35, n)  # ±20°: shapes stay recognisable, e.g. arrow vs bar
    grid = (np.arange(s * ss) + 0.5) / (s * ss) * 2 - 1  # pixel centres in [-1, 1]
    gx, gy = np.meshgrid(grid, -grid)  # gy up
    coverage = np.zeros((n, s, s), dtype=np.float32)
    for class_index, name in enumerate(classnames):
        idx = np.nonzero(shapes == class_index)[0]
        if len(idx) == 0:
            continue
        dx = gx[None] - centre[idx, 0, None, None]
        dy = gy[None] - centre[idx, 1, None, None]
        cos, sin = np.cos(theta[idx])[:, None, None], np.sin(theta[idx])[:, None, None]
        k = scale[idx][:, None, None]
        u, v = (dx * cos + dy * sin) / k, (-dx * sin + dy * cos) / k
        mask = _shape_mask(name, u, v).astype(np.float32)
        coverage[idx] = mask.reshape(len(idx), s, ss, s, ss).mean(axis=(2, 4))
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    fg = palette[colours] + rng.normal(0, 12, (n, 3))  # colour jitter
    bg = rng.uniform(0, 60, (n, 1, 1, 1)) + rng.normal(0, 6, (n, s, s, 3))
    a = coverage[..., None]
    images = a * fg[:, None, None, :] + (1 - a) * bg
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), scale, centre


def _size_word(scale: float) -> str:
    return "small" if scale < 0.55 else ("large" if scale > 0.7 else "medium")


def _position_word(centre: np.ndarray) -> str:
    x, y = centre
    horizontal = "left" if x < -0.1 else ("right" if x > 0.1 else "")
    vertical = "top" if y > 0.1 else ("bottom" if y < -0.1 else "")
    return " ".join(w for w in (vertical, horizontal) if w) or "centre"


def write_captions(
    shapes: np.ndarray,
    colours: np.ndarray,
    scales: np.ndarray,
    centres: np.ndarray,
    rng: np.random.Generator,
    classnames: tuple[str, ...],
    misleading_rate: float,
    unlabelled_rate: float,
) -> list[str]:
    """One caption per image from the templates, with distractors, decoys and uninformative noise."""
    colour_names = list(COLOURS)
    captions = []
    kinds = rng.random(len(shapes))
    for i, shape_index in enumerate(shapes):
        fields = {
            "shape": classnames[shape_index],
            "colour": colour_names[colours[i]],
            "size": _size_word(scales[i]),
            "position": _position_word(centres[i]),
        }
        if kinds[i] < unlabelled_rate:
            template = _UNLABELLED_TEMPLATES[rng.integers(len(_UNLABELLED_TEMPLATES))]
        elif kinds[i] < unlabelled_rate + misleading_rate:
            template = _MISLEADING_TEMPLATES[rng.integers(len(_MISLEADING_TEMPLATES))]
            decoy = rng.integers(len(classnames) - 1)
            fields["decoy"] = classnames[decoy + (decoy >= shape_index)]
        else:
            template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        text = template.format(**fields)
        text = _PREFIXES[rng.integers(len(_PREFIXES))] + text + _SUFFIXES[rng.integers(len(_SUFFIXES))]
        captions.append(text)
    return captions


def make_synthetic(
    config: SyntheticConfig = SyntheticConfig(),
) -> tuple[SyntheticSplit, SyntheticSplit]:
    """Generate the (train, test) splits of the synthetic dataset, deterministically from the seed."""
    splits = []
    # Independent streams per split: changing num_test never changes the training set.
    for stream, n in ((0, config.num_train), (1, config.num_test)):
        rng, shapes = _split_start(config, stream, n)
        colours = rng.integers(len(COLOURS), size=n)
        replay = np.random.default_rng()
        replay.bit_generator.state = rng.bit_generator.state
        images, scales, centres = render_shapes(shapes, colours, rng, config.image_size, config.classnames)
        if config.stored_size is not None:
            # The same draws at another resolution (only the per-pixel background noise differs);
            # ``rng`` has moved on as at ``image_size``, so captions stay the same too.
            images = render_shapes(shapes, colours, replay, config.stored_size, config.classnames)[0]
        captions = write_captions(
            shapes,
            colours,
            scales,
            centres,
            rng,
            config.classnames,
            config.misleading_rate,
            config.unlabelled_rate,
        )
        splits.append(SyntheticSplit(images, captions, shapes.astype(np.int64), colours))
    return splits[0], splits[1]


def _split_start(config: SyntheticConfig, stream: int, n: int) -> tuple[np.random.Generator, np.ndarray]:
    """A split's generator and its first draw, the class of each image (int64 [n])."""
    rng = np.random.default_rng([config.seed, stream])
    return rng, rng.integers(config.num_shapes, size=n)


def train_key(index: int) -> str:
    """The key (CSV image path) ``write_synthetic`` gives training image ``index``."""
    return f"{TRAIN_IMAGE_DIR}/{index:06d}.png"


def synthetic_train_labels(config: SyntheticConfig, keys: Sequence[str]) -> torch.Tensor:
    """The true class of each training sample of ``config`` named by ``keys`` (as written by
    ``write_synthetic``; -1 for any other key), without rendering an image.

    For data caches written before ``train.csv`` had its label column.
    """
    labels = _split_start(config, 0, config.num_train)[1]
    index = {train_key(i): int(label) for i, label in enumerate(labels)}
    return torch.tensor([index.get(key, -1) for key in keys], dtype=torch.long)


def write_synthetic(root: str | Path, config: SyntheticConfig = SyntheticConfig()) -> Path:
    """Generate the dataset and write it as PNGs + open_clip CSVs under ``root`` (atomically).

    Layout::

        root/train.csv   tab-separated: filepath, title, label     (open_clip_train's columns,
        root/test.csv    tab-separated: filepath, title, label      label = class index)
        root/classnames.txt  one class name per line, in label order
        root/config.json     the SyntheticConfig used
        root/images/{train,test}/000000.png
    """
    train, test = make_synthetic(config)
    root = Path(root)
    with atomic_path(root) as tmp:
        # Training labels are the images' true classes: poisoning and training ignore them (as
        # open_clip_train ignores extra columns); defenses' diagnostics read them.
        write_csv_dataset(
            tmp / "train.csv", TRAIN_IMAGE_DIR, train.images, train.captions, labels=train.labels
        )
        write_csv_dataset(tmp / "test.csv", "images/test", test.images, test.captions, labels=test.labels)
        (tmp / "classnames.txt").write_text("\n".join(config.classnames) + "\n")
        # config_dict: a field added later is written only when set, so existing caches still match
        (tmp / "config.json").write_text(json.dumps(config_dict(config), indent=2) + "\n")
    return root
