"""Image–caption datasets as users have them: open_clip-style CSV files plus image files.

The CSV format is open_clip_train's default (tab separator, columns ``filepath`` and ``title``)
so the same file feeds both our in-memory trainer and ``open_clip_train``; an optional ``label``
column holds class indices for evaluation splits. Relative image paths are resolved against the
CSV's directory. Unreadable or corrupt images are skipped, counted and reported, never fatal.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from poisonclip.data.csv_format import CAPTION_COLUMN, CSV_SEPARATOR, IMAGE_COLUMN, LABEL_COLUMN
from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar


@dataclass
class ImageTextDataset:
    """Decoded images and captions, in memory.

    ``images`` uint8 [N, 3, H, W]; ``labels`` int64 [N] with -1 where unknown; ``keys`` are the
    image paths as written in the source file (stable ids for manifests); ``skipped`` lists
    ``(key, reason)`` for every sample that could not be loaded; ``classnames`` names the label
    indices when the reader knew them (a class-name list, or labels given as names).
    """

    keys: list[str]
    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classnames: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.images.shape[0] != n or len(self.captions) != n or self.labels.shape[0] != n:
            raise ValueError("keys, images, captions and labels must have the same length")

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageTextDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageTextDataset(
            keys=[self.keys[i] for i in idx.tolist()],
            images=self.images[idx],
            captions=[self.captions[i] for i in idx.tolist()],
            labels=self.labels[idx],
            classnames=self.classnames,
        )

    @staticmethod
    def concat(parts: Sequence[ImageTextDataset]) -> ImageTextDataset:
        """Concatenate datasets (e.g. clean data ∪ poisons); image sizes must agree."""
        sizes = {tuple(p.images.shape[1:]) for p in parts}
        if len(sizes) != 1:
            raise UsageError(f"cannot concatenate datasets with image shapes {sorted(sizes)}")
        same_names = all(p.classnames == parts[0].classnames for p in parts)
        return ImageTextDataset(
            keys=[k for p in parts for k in p.keys],
            images=torch.cat([p.images for p in parts]),
            captions=[c for p in parts for c in p.captions],
            labels=torch.cat([p.labels for p in parts]),
            skipped=[s for p in parts for s in p.skipped],
            # label indices mean the same classes only if every part named them alike
            classnames=parts[0].classnames if same_names else None,
        )


def write_csv_dataset(
    csv_path: str | Path,
    image_dir: str,
    images: np.ndarray,
    captions: Sequence[str],
    labels: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    sep: str = CSV_SEPARATOR,
) -> list[str]:
    """Write ``images`` (uint8 [N, H, W, 3]) as PNGs under ``csv_path.parent / image_dir`` and a CSV.

    Returns the keys (relative file paths) written. ``names`` are file stems (default 000000…).
    """
    csv_path = Path(csv_path)
    out_dir = csv_path.parent / image_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names if names is not None else [f"{i:06d}" for i in range(len(images))]
    keys = [f"{image_dir}/{name}.png" for name in names]
    for key, image in zip(keys, images, strict=True):
        Image.fromarray(image).save(csv_path.parent / key, compress_level=1)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        header = [IMAGE_COLUMN, CAPTION_COLUMN] + ([LABEL_COLUMN] if labels is not None else [])
        writer.writerow(header)
        for i, (key, caption) in enumerate(zip(keys, captions, strict=True)):
            writer.writerow([key, caption] + ([int(labels[i])] if labels is not None else []))
    return keys


def load_image(source: Path | BinaryIO, image_size: int | None) -> np.ndarray:
    """Decode one image (a path or an open binary file) to uint8 [H, W, 3].

    With ``image_size``, resize (shorter side) and centre-crop to ``image_size`` x ``image_size``.
    Raises ``ValueError`` for an image above PIL's decompression-bomb limit (``MAX_IMAGE_PIXELS``), so
    readers skip it like any corrupt file. 16-bit images are scaled to 8 bits (PIL's RGB conversion
    would clip them).
    """
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x the limit, and decodes such an image in full
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(f"decompression bomb: {err}") from err
    with im:
        if im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit PNGs open as I;16 or I
            im = Image.fromarray(
                (np.asarray(im, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8)
            )
        im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            w, h = im.size
            ratio = image_size / min(w, h)
            im = im.resize(
                (max(image_size, round(w * ratio)), max(image_size, round(h * ratio))),
                Image.Resampling.BICUBIC,
            )
            w, h = im.size
            left, top = (w - image_size) // 2, (h - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        return np.asarray(im, dtype=np.uint8)


class DecodedSamples:
    """Samples decoded one at a time (image uint8 [H, W, 3], caption, label cell), gathered into an
    ``ImageTextDataset`` by the CSV and shard readers. Every image must have the first one's shape."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.captions: list[str] = []
        self.cells: list[str | None] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, array: np.ndarray, caption: str, cell: str | None) -> None:
        if self.arrays and array.shape != self.arrays[0].shape:
            raise UsageError(
                f"{key}: image shape {array.shape} differs from {self.arrays[0].shape}: images of "
                "several sizes need a size to resize them to (the model's input size: --image-size, "
                "or image_size in Python)"
            )
        self.keys.append(key)
        self.arrays.append(array)
        self.captions.append(caption)
        self.cells.append(cell)

    def to_dataset(
        self,
        where: str,
        skipped: list[tuple[str, str]],
        classnames: Sequence[str] | None,
        classnames_source: str,
    ) -> ImageTextDataset:
        """The samples with their label cells resolved (``resolve_labels``; ``where`` names the
        source in its errors) and ``skipped`` listed."""
        labels, names = resolve_labels(self.cells, self.keys, where, classnames, classnames_source)
        images = torch.from_numpy(np.stack(self.arrays)).permute(0, 3, 1, 2).contiguous()
        return ImageTextDataset(self.keys, images, self.captions, labels, skipped, names)


def read_csv_dataset(
    csv_path: str | Path,
    image_size: int | None = None,
    sep: str = CSV_SEPARATOR,
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    label_column: str | None = LABEL_COLUMN,
    progress: bool = True,
    classnames: Sequence[str] | None = None,
    classnames_source: str = "the class names",
    captions_required: bool = True,
) -> ImageTextDataset:
    """Read an open_clip-style CSV and decode its images into memory.

    Rows whose image is missing, unreadable or corrupt, or whose caption is empty, are skipped and
    listed in ``dataset.skipped`` (a warning reports the count); without ``captions_required`` (a
    labelled evaluation set) the caption column may be absent and empty captions are kept.
    ``label_column`` is used when present in the file (``None``: labels ignored); its cells are
    class indices or class names, resolved by ``resolve_labels`` against ``classnames`` (read from
    ``classnames_source``, named in errors). Without ``image_size`` all images must already share
    one size.
    """
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path, sep)
    check_columns(
        rows, (image_column, caption_column) if captions_required else (image_column,), csv_path, sep
    )
    has_captions = bool(rows) and caption_column in rows[0]
    fieldnames = rows[0].keys() if rows else []
    has_labels = label_column is not None and label_column in fieldnames
    decoded, skipped = DecodedSamples(), []
    for row in progress_bar(rows, desc=f"reading {csv_path.name}", unit="img", disable=not progress):
        key, caption = row[image_column], (row[caption_column] or "").strip() if has_captions else ""
        if not caption and captions_required:
            skipped.append((key, "empty caption"))
            continue
        path = Path(key) if Path(key).is_absolute() else csv_path.parent / key
        try:
            array = load_image(path, image_size)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad files
            skipped.append((key, f"{type(err).__name__}: {err}"))
            continue
        decoded.add(key, array, caption, row[label_column] if has_labels else None)
    if skipped:
        warnings.warn(
            f"{csv_path}: skipped {len(skipped)} of {len(rows)} samples "
            f"(first: {skipped[0][0]}: {skipped[0][1]})",
            stacklevel=2,
        )
    if not decoded:
        raise UsageError(f"{csv_path}: no readable samples")
    return decoded.to_dataset(str(csv_path), skipped, classnames, classnames_source)


def read_csv_rows(csv_path: Path, sep: str = CSV_SEPARATOR) -> list[dict[str, str]]:
    """The rows of a CSV as {column: cell} (no image is read)."""
    if not csv_path.is_file():
        raise UsageError(f"dataset file not found: {csv_path}")
    try:  # utf-8-sig: a byte-order mark (Excel's UTF-8 CSV) must not become part of the first column
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter=sep))
    except UnicodeDecodeError as err:
        raise UsageError(f"{csv_path}: not UTF-8 text ({err}); re-save it as UTF-8") from err


def check_columns(rows: Sequence[dict[str, str]], columns: Sequence[str], source: object, sep: str) -> None:
    """Every column in ``columns`` is one of the CSV's (rows as ``read_csv_rows`` gives them)."""
    for column in columns:
        if rows and column not in rows[0]:
            raise UsageError(
                f"{source}: no column {column!r} (columns: {', '.join(rows[0])}; separator {sep!r})"
            )


def resolve_labels(
    cells: Sequence[str | None],
    keys: Sequence[str],
    source: str,
    classnames: Sequence[str] | None = None,
    classnames_source: str = "the class names",
) -> tuple[torch.Tensor, list[str] | None]:
    """Label cells (class indices or class names; ``None`` = no label) -> (int64 [N], class names).

    With ``classnames``, a cell that is a class name maps to its index and any other cell must be
    an index into them. Without, integer cells stay indices (their names are unknown: ``None``)
    and otherwise every cell is a name, the classes being the sorted distinct names (CLIP_benchmark
    and ImageFolder sort the same way). No cell at all gives -1 everywhere; a missing cell among
    others, an unknown name and an index out of range are ``UsageError``s naming value and file.
    """
    present = [cell is not None and cell.strip() != "" for cell in cells]
    if not any(present):
        return torch.full((len(cells),), -1, dtype=torch.long), (list(classnames) if classnames else None)
    if not all(present):
        key = keys[present.index(False)]
        raise UsageError(f"{source}: sample {key} has an empty label (every sample needs one, or none)")
    values = [cell.strip() for cell in cells]
    names = list(classnames) if classnames else None
    if names is None:
        if all(_is_index(v) for v in values):
            return torch.tensor([int(v) for v in values], dtype=torch.long), None
        names = sorted(set(values))
        classnames_source = f"the labels of {source}"
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for key, value in zip(keys, values, strict=True):
        if value in index:
            labels.append(index[value])
        elif _is_index(value) and int(value) < len(names):
            labels.append(int(value))
        elif _is_index(value):
            raise UsageError(
                f"{source}: label {value} of sample {key} is outside the {len(names)} class names "
                f"of {classnames_source}"
            )
        else:
            raise UsageError(
                f"{source}: label {value!r} of sample {key} is not a class name in {classnames_source}"
            )
    return torch.tensor(labels, dtype=torch.long), names


def _is_index(value: str) -> bool:
    return value.isascii() and value.isdigit()


def read_classnames(path: str | Path) -> list[str]:
    """One class name per line, in label order."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"class-name file {path} is a directory: name the file in it")
    if not path.is_file():
        raise UsageError(f"class-name file not found: {path}")
    try:  # utf-8-sig, as read_csv_dataset: a byte-order mark is not part of the first name
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err}); re-save it as UTF-8") from err
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if len(names) < 2:
        raise UsageError(f"{path}: need at least two class names")
    return names
