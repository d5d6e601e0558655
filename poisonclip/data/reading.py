"""Reading the data a user names: a CSV or webdataset shards, several in order, or a labelled test
set (CSV, shards or an ImageFolder directory), decoded into memory.

Labels are read only for evaluation splits (``labelled``): poisoning and training never need
them, so a label column they could not parse must not stop them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from poisonclip.data.csv_format import DEFAULT_CSV, CsvFormat
from poisonclip.data.dataset import ImageTextDataset, read_classnames, read_csv_dataset
from poisonclip.data.imagefolder import (
    class_directories,
    match_directories,
    read_imagefolder,
    resolve_classnames,
)
from poisonclip.data.shard_urls import is_shard_url
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError


def read_data(
    path: str,
    image_size: int | None = None,
    csv: CsvFormat = DEFAULT_CSV,
    *,
    labelled: bool = False,
    classnames: Sequence[str] | None = None,
    classnames_source: str = "",
    progress: bool = True,
) -> ImageTextDataset:
    """A CSV or webdataset shards (``is_shard_url``), resized to ``image_size`` if given.

    With ``labelled`` (an evaluation split), labels are class indices or class names, mapped
    through ``classnames`` (read from ``classnames_source``, named in errors) when given, and
    captions are optional.
    """
    label_column = csv.label_column if labelled else None
    if is_shard_url(path):
        from poisonclip.data.wds import read_shard_dataset  # loads webdataset: only for shards

        return read_shard_dataset(
            path, image_size, progress=progress, label_key=label_column, classnames=classnames,
            classnames_source=classnames_source, captions_required=not labelled,
        )  # fmt: skip
    return read_csv_dataset(
        path,
        image_size=image_size,
        sep=csv.separator,
        image_column=csv.image_column,
        caption_column=csv.caption_column,
        label_column=label_column,
        progress=progress,
        classnames=classnames,
        classnames_source=classnames_source,
        captions_required=not labelled,
    )


def read_datasets(
    paths: Sequence[str], image_size: int | None, csv: CsvFormat = DEFAULT_CSV, progress: bool = True
) -> ImageTextDataset:
    """Several CSVs or shard sets as one training set, in the order given (unlabelled)."""
    return ImageTextDataset.concat([read_data(path, image_size, csv, progress=progress) for path in paths])


def read_test_set(
    image_size: int,
    *,
    test: str | None = None,
    imagefolder: str | None = None,
    classnames: str | None = None,
    max_per_class: int | None = None,
    csv: CsvFormat = DEFAULT_CSV,
    progress: bool = True,
) -> tuple[ImageTextDataset, list[str]]:
    """A labelled test set and its class names in label order: a CSV or shards (``test``) whose
    labels are class names or are named by the ``classnames`` file, or an ImageFolder directory
    (classes: its sorted directories, named as ``resolve_classnames`` says)."""
    if imagefolder is not None:
        names = resolve_classnames(classnames, class_directories(imagefolder))
        return read_imagefolder(imagefolder, image_size, max_per_class, progress), names
    if test is None:
        raise ValueError("read_test_set needs test or imagefolder")
    names = read_classnames(classnames) if classnames else None
    dataset = read_data(
        test, image_size, csv, labelled=True, classnames=names, classnames_source=str(classnames),
        progress=progress,
    )  # fmt: skip
    if dataset.classnames is None:
        raise UsageError(
            f"{test}: its labels are class indices (or absent): pass --classnames to name "
            "them (one name per line, in label order)"
        )
    return dataset, dataset.classnames


def read_probe_set(
    root: str,
    image_size: int,
    classnames: Sequence[str],
    max_per_class: int | None = None,
    progress: bool = True,
) -> ImageTextDataset:
    """The images a linear probe is fit on (an ImageFolder directory), labelled as the test set is:
    a directory named as one of ``classnames`` (as it is, or with underscores as spaces; case
    ignored) gets that class's index, whatever order the names are in. Directories none of which is
    named so (ImageNet's WordNet ids) are taken in sorted order, as ``read_test_set`` takes a test
    ImageFolder, with a warning, and must be as many as the classes. A probe labelled in another
    order than the zero-shot classes would score nonsense."""
    import torch

    directories = class_directories(root)
    found = match_directories(directories, classnames)
    unknown = [d for d, i in zip(directories, found, strict=True) if i is None]
    if unknown and (len(unknown) < len(directories) or len(directories) != len(classnames)):
        raise UsageError(
            f"{root}: class directory {unknown[0]!r} is not one of the test set's {len(classnames)} class "
            f"names, and the {len(directories)} directories cannot be matched to them in sorted order"
        )
    if unknown:
        warnings.warn(
            f"{root}: no class directory is named as a class; its {len(directories)} sorted directories "
            f"are taken as the classes in order ({directories[0]} = {classnames[0]!r}, ...)",
            stacklevel=2,
        )
    dataset = read_imagefolder(root, image_size, max_per_class, progress)
    if not unknown:
        dataset.labels = torch.tensor(found)[dataset.labels]
    return dataset


def synthetic_model_size(source: str) -> int | None:
    """The model input size that ``data synth`` made ``source``'s set for (``image_size`` in the
    ``config.json`` beside it; the images may be stored at another ``stored_size``), else None."""
    folder = Path(os.path.dirname(source.split("::")[0].split("{")[0]))  # a CSV's or shards' folder
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no such file (not a synthetic set), or not ours
        return None
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    if not isinstance(config, dict) or not {"image_size", "num_shapes"} <= set(config) <= fields:
        return None
    size = config["image_size"]
    return size if isinstance(size, int) and not isinstance(size, bool) else None
