"""A user's own data as a sweep's ``[data]``: a training set (a CSV or img2dataset shards) and a
labelled test set (a CSV or an ImageFolder), named by path.

The synthetic data is generated from its config; a user's data is identified by its files. A result
key holds the paths as written and ``fingerprint``: the SHA-256 of the bytes of the CSVs and the
class-name file, and of the listing (names and sizes) of a shard set or ImageFolder, so an edited
file is a new configuration instead of a silent match of stored results. The images a CSV names are
not hashed (an image replaced in place keeps the key), nor is a templates file (as everywhere in
sweeps: give changed prompts a new name).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poisonclip.data.csv_format import (
    CAPTION_COLUMN,
    CSV_SEPARATOR,
    IMAGE_COLUMN,
    LABEL_COLUMN,
    CsvFormat,
    check_separator,
)
from poisonclip.data.dataset import (
    ImageTextDataset,
    check_columns,
    read_classnames,
    read_csv_rows,
    resolve_labels,
)
from poisonclip.data.imagefolder import class_directories, imagefolder_files, resolve_classnames
from poisonclip.data.prompts import check_templates
from poisonclip.data.reading import read_data, read_test_set
from poisonclip.data.shard_urls import expand_urls, is_shard_url
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError

COMPUTED = "computed"  # field metadata key: taken from the files (``fingerprinted``), never given


def _computed(default: object) -> Any:
    return field(default=default, metadata={COMPUTED: True})


@dataclass(frozen=True)
class DataFiles:
    """The keys of ``[data]`` for a user's own data (paths relative to the directory the sweep runs
    in, as written: ``./x.csv`` and ``x.csv`` are two keys). CSVs have open_clip_train's layout
    (``CsvFormat``); a test CSV needs a label column and no captions. The training set may instead be
    img2dataset shards, the test set an ImageFolder directory (``ROOT/CLASS/*.jpg``, as ``evaluate
    --imagefolder`` reads it). The computed fields are read from the files by ``fingerprinted`` and
    stored with every result (``data.num_train`` is the synthetic data's key too, so the data-size
    figures draw either)."""

    train: str  # image–caption pairs (a CSV or shards); a label column is ignored, as by `train`
    test: str  # labelled images (labels: names, or indices named by ``classnames_file``), or a folder
    image_size: int  # the model's input: images are resized and centre-cropped to it
    # one class name per line, in label order; "": the labels' sorted names (a folder's directory
    # names; "imagenet": open_clip's ImageNet names for WordNet-id directories)
    classnames_file: str = ""
    templates: str = "openai"  # zero-shot prompts: a set name or a templates file (one `{}` a line)
    separator: str = CSV_SEPARATOR
    image_column: str = IMAGE_COLUMN
    caption_column: str = CAPTION_COLUMN
    label_column: str = LABEL_COLUMN
    num_train: int = _computed(0)  # pairs with a caption
    num_test: int = _computed(0)
    fingerprint: str = _computed("")

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise UsageError(f"image_size must be at least 8 pixels, got {self.image_size}")
        check_separator(self.separator, "separator")
        check_templates("templates", self.templates)

    @property
    def csv(self) -> CsvFormat:
        return CsvFormat(self.separator, self.image_column, self.caption_column, self.label_column)

    @property
    def classnames(self) -> tuple[str, ...]:
        return self._summary().classnames

    def fingerprinted(self) -> DataFiles:
        """This config with the computed fields of the files as they are now."""
        summary = self._summary()
        return dataclasses.replace(
            self, num_train=summary.num_train, num_test=summary.num_test, fingerprint=summary.fingerprint
        )

    def _summary(self) -> _Summary:
        _check_kinds(self)
        # one cache entry with or without the computed fields, and a new one when a file changes
        stamps = tuple(_stamp(source) for source in _sources(self))
        given = {f.name: f.default for f in dataclasses.fields(self) if f.metadata.get(COMPUTED)}
        return _summary(dataclasses.replace(self, **given), stamps)

    def check_unchanged(self) -> None:
        """Refuse files that changed since ``fingerprinted`` read them (the sweep was planned)."""
        if not self.fingerprint:
            raise ValueError("DataFiles.check_unchanged needs a fingerprinted config")
        if _files_fingerprint(self) != self.fingerprint:
            raise UsageError(
                f"{', '.join(_sources(self))}: changed since the sweep was planned (the results "
                "would not be those of the files its keys name); run the sweep again"
            )


@dataclass(frozen=True)
class _Summary:
    """What ``fingerprinted`` and the grid's checks read from the files."""

    num_train: int
    num_test: int
    classnames: tuple[str, ...]
    fingerprint: str


def _check_kinds(config: DataFiles) -> None:
    """``train`` is a CSV or shards, ``test`` a CSV or an ImageFolder; "imagenet" names a folder's."""
    if Path(config.train).is_dir():
        raise UsageError(f"{config.train}: a directory; train is a CSV or shards ('d/{{00000..00009}}.tar')")
    if is_shard_url(config.test):
        raise UsageError(f"{config.test}: test is a CSV or an ImageFolder directory in a sweep, not shards")
    if config.classnames_file == "imagenet" and not Path(config.test).is_dir():
        raise UsageError('classnames_file = "imagenet" names the classes of an ImageFolder of WordNet ids')


def _sources(config: DataFiles) -> list[str]:
    """What the data is read from ("imagenet" names no file)."""
    return [s for s in (config.train, config.test, config.classnames_file) if s and s != "imagenet"]


def _identity(source: str) -> bytes:
    """A file's bytes; for an ImageFolder or a shard set (whose images would take long to hash),
    the listing of every image or shard file with its size."""
    if is_shard_url(source):
        shards = [Path(url) for url in expand_urls(source)]
        files = [f for shard in shards for f in (shard, shard.with_suffix(".parquet")) if f.is_file()]
        return "".join(f"{f.name}\t{f.stat().st_size}\n" for f in files).encode()
    path = Path(source)
    if path.is_dir():  # the classes too: one without a single image is still a class
        listing = [f"{d}/\n" for d in class_directories(path)]
        listing += [f"{p.relative_to(path)}\t{p.stat().st_size}\n" for p, _, _ in imagefolder_files(path)]
        return "".join(listing).encode()
    return path.read_bytes() if path.is_file() else b""


def _stamp(source: str) -> object:
    """Changes when the source does, and costs no listing of every image: a file's size and time,
    a folder's and its class directories' times (an image or class added, removed or renamed), a
    shard set's listing. An image rewritten in place under its name changes none of them:
    ``check_unchanged``, which reads the whole listing, refuses it before training."""
    path = Path(source)
    if is_shard_url(source):
        return _identity(source)
    if path.is_dir():
        return tuple(d.stat().st_mtime_ns for d in [path, *(path / c for c in class_directories(path))])
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


def _files_fingerprint(config: DataFiles) -> str:
    digest = hashlib.sha256()
    for source in _sources(config):
        digest.update(_identity(source))
        digest.update(b"\0")  # source boundaries: moving a line between files changes the digest
    return digest.hexdigest()[:16]


def _num_train(config: DataFiles) -> int:
    """Training pairs with a caption (an unreadable image shows only when decoded)."""
    if is_shard_url(config.train):
        from poisonclip.data.wds import count_captioned  # loads webdataset: only for shards

        if missing := [url for url in expand_urls(config.train) if not Path(url).is_file()]:
            raise UsageError(f"{config.train}: shard {missing[0]} is missing ({len(missing)} in all)")
        return count_captioned(config.train)
    rows = read_csv_rows(Path(config.train), config.separator)
    if not rows:
        raise UsageError(f"{config.train}: no rows")
    check_columns(rows, (config.image_column, config.caption_column), config.train, config.separator)
    return sum(bool((row[config.caption_column] or "").strip()) for row in rows)


def _test_classes(config: DataFiles) -> tuple[int, list[str]]:
    """(number of test images, class names in label order) from the CSV's cells or the folder's
    listing, no image decoded."""
    if Path(config.test).is_dir():
        names = resolve_classnames(config.classnames_file or None, class_directories(config.test))
        return len(imagefolder_files(config.test)), names
    rows = read_csv_rows(Path(config.test), config.separator)
    if not rows:
        raise UsageError(f"{config.test}: no rows")
    check_columns(rows, (config.image_column, config.label_column), config.test, config.separator)
    names = read_classnames(config.classnames_file) if config.classnames_file else None
    source = config.classnames_file or "the class names"
    keys, cells = [row[config.image_column] for row in rows], [row[config.label_column] for row in rows]
    labels, names = resolve_labels(cells, keys, config.test, names, source)
    if (labels < 0).all():
        raise UsageError(
            f"{config.test}: column {config.label_column!r} is empty: every test image needs a label "
            "([data] label_column names the column)"
        )
    if names is None:
        raise UsageError(
            f"{config.test}: its labels are class indices: name them with [data] classnames_file "
            "(one name per line, in label order)"
        )
    return len(rows), names


@functools.cache
def _summary(config: DataFiles, stamps: tuple[object, ...]) -> _Summary:
    """Counts and class names from the CSV cells and folder listings alone (no image is decoded);
    cached per config and ``stamps`` (``_stamp``), so a grid of many cells reads them once."""
    num_test, classnames = _test_classes(config)
    return _Summary(
        num_train=_num_train(config),
        num_test=num_test,
        classnames=tuple(classnames),
        fingerprint=_files_fingerprint(config),
    )


def load_files(
    config: DataFiles, progress: bool = False
) -> tuple[ImageTextDataset, ImageTextDataset, list[str]]:
    """(train, test, classnames) decoded at ``config.image_size``; the files must be the ones the
    fingerprint was taken of, and the decoded test set must still hold every class."""
    config.check_unchanged()
    train = read_data(config.train, config.image_size, config.csv, progress=progress)
    folder = Path(config.test).is_dir()
    test, classnames = read_test_set(
        config.image_size, test=None if folder else config.test, imagefolder=config.test if folder else None,
        classnames=config.classnames_file or None, csv=config.csv, progress=progress,
    )  # fmt: skip
    if classnames != (names := _test_classes(config)[1]):  # every image of a class unreadable
        raise UsageError(
            f"{config.test}: after skipping unreadable images the classes are {len(classnames)}, not "
            f"the {len(names)} its labels name; fix or drop those rows"
        )
    return train, test, classnames


DataConfig = SyntheticConfig | DataFiles  # a sweep's [data]: generated, or a user's own files
