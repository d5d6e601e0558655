"""Labelled evaluation images as ImageNet-val is usually laid out: ``ROOT/CLASS_DIR/*.JPEG``.

Class indices follow torchvision's ``ImageFolder``: the sorted class-directory names. Class names
(for the zero-shot prompts) are those directory names, one per line from a file, or open_clip's
1,000 ImageNet names when the directories are ImageNet's WordNet ids (``n01440764`` …), whose
sorted order is the order of that list.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from poisonclip.data.dataset import ImageTextDataset, load_image, read_classnames
from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def class_directories(root: str | Path) -> list[str]:
    """Sorted names of the class directories under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UsageError(f"{root}: need at least two class directories, found {len(classes)}")
    return classes


def resolve_classnames(spec: str | None, directories: list[str]) -> list[str]:
    """Class names in label order: ``None`` → the directory names (underscores as spaces),
    ``"imagenet"`` → open_clip's ImageNet names, else a file with one name per line."""
    if spec is None:
        return [d.replace("_", " ") for d in directories]
    if spec == "imagenet":
        from poisonclip.data.prompts import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
    else:
        names = read_classnames(spec)
    if len(names) != len(directories):
        raise UsageError(f"{len(names)} class names ({spec}) for {len(directories)} class directories")
    for label, (directory, named) in enumerate(
        zip(directories, match_directories(directories, names), strict=True)
    ):
        if named is not None and named != label:  # this class would be called another's name
            raise UsageError(
                f"{spec}: directory {directory!r} has label {label} (the sorted directories' order) but "
                f"the file names it on line {named + 1}: list the names in the directories' sorted order"
            )
    return names


def match_directories(directories: Sequence[str], names: Sequence[str]) -> list[int | None]:
    """For each class directory, the index of the class name it is (as it is, or with underscores as
    spaces; case ignored), or None."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name.casefold(), i)
    return [index.get(d.casefold(), index.get(d.replace("_", " ").casefold())) for d in directories]


def imagefolder_files(root: str | Path, max_per_class: int | None = None) -> list[tuple[Path, int, str]]:
    """(path, label, class directory) of every image under ``root``, in the order they are read:
    classes sorted, files sorted within one, the first ``max_per_class`` of each."""
    root = Path(root)
    files = []
    for label, directory in enumerate(class_directories(root)):
        paths = sorted(p for p in (root / directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += [(p, label, directory) for p in paths[:max_per_class]]
    return files


def read_imagefolder(
    root: str | Path,
    image_size: int,
    max_per_class: int | None = None,
    progress: bool = True,
) -> ImageTextDataset:
    """Decode ``root/CLASS/*`` resized (shorter side) and centre-cropped to ``image_size``.

    ``labels`` are class indices (sorted directory order); ``captions`` the directory names;
    ``keys`` the paths relative to ``root``. ``max_per_class`` keeps the first files of each
    class in sorted order (ImageNet-val is 50,000 images: 7.5 GB as 224x224 uint8). Unreadable
    images are skipped and listed in ``skipped``.
    """
    root = Path(root)
    files = imagefolder_files(root, max_per_class)
    keys, arrays, captions, labels, skipped = [], [], [], [], []
    for path, label, directory in progress_bar(
        files, desc=f"reading {root.name}", unit="img", disable=not progress
    ):
        key = str(path.relative_to(root))
        try:
            arrays.append(load_image(path, image_size))
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad files
            skipped.append((key, f"{type(err).__name__}: {err}"))
            continue
        keys.append(key)
        captions.append(directory)
        labels.append(label)
    if skipped:
        warnings.warn(
            f"{root}: skipped {len(skipped)} of {len(files)} images "
            f"(first: {skipped[0][0]}: {skipped[0][1]})",
            stacklevel=2,
        )
    if not keys:
        raise UsageError(f"{root}: no readable images")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageTextDataset(keys, images, captions, torch.tensor(labels), skipped)
