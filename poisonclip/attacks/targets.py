"""Choosing x′ for a targeted attack or its evaluation: an image file, or one sample of a held-out
split (whose class, when the split is labelled, must differ from the target label y′)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from poisonclip.attacks.targeted import Target
from poisonclip.data.csv_format import DEFAULT_CSV, CsvFormat
from poisonclip.data.dataset import load_image, read_classnames
from poisonclip.data.reading import read_data
from poisonclip.errors import UsageError


@dataclass(frozen=True)
class TargetSource:
    """Where x′ comes from: ``image`` (a file), or row ``index`` of ``split`` (a CSV or shards);
    ``classnames`` names the split's labels (default: ``classnames.txt`` beside it, if there)."""

    label: str  # y′
    image: str | None = None
    split: str | None = None
    index: int | None = None
    classnames: str | None = None


def load_target(
    source: TargetSource, image_size: int | None, csv: CsvFormat = DEFAULT_CSV, progress: bool = True
) -> Target:
    """x′ resized and centre-cropped to ``image_size`` (None: as stored), with its class if known."""
    if source.image is not None:
        try:
            array = load_image(Path(source.image), image_size)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad files
            raise UsageError(f"cannot read target image {source.image}: {err}") from err
        image = torch.tensor(array).permute(2, 0, 1).contiguous()  # copies PIL's read-only array
        return Target(image, source.label, source.image)
    if source.split is None:
        raise UsageError("--target-index needs --target-split")
    if source.index is None:
        raise ValueError("a TargetSource names an image or an index of a split")
    classnames_file = Path(source.classnames or Path(source.split).parent / "classnames.txt")
    # a named class-name file is read strictly; the file beside the split only if it is there
    named = source.classnames or classnames_file.is_file()
    split = read_data(
        source.split, image_size, csv, labelled=True,
        classnames=read_classnames(classnames_file) if named else None,
        classnames_source=str(classnames_file), progress=progress,
    )  # fmt: skip
    index = source.index
    if not 0 <= index < len(split):
        raise UsageError(f"--target-index {index} is outside the {len(split)} samples of {source.split}")
    true_label = None
    if (label := int(split.labels[index])) >= 0:
        if split.classnames is None:  # labels are indices, and no file names them
            raise UsageError(f"{source.split} is labelled: pass --classnames to name its classes")
        true_label = split.classnames[label]
    return Target(split.images[index], source.label, split.keys[index], index, true_label)
