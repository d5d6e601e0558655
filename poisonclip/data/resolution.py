"""The trigger-resolution rule: a trigger is specified in the model's input pixels.

Resizing is part of the threat model: a checkerboard of 1-pixel cells downsampled 2x becomes a grey
block, and a trigger pasted on test images after resizing is not the one training saw. So, for
every data resolution:

* poisons are written at the model's input size (``poison ... --image-size``: the chosen source
  images are resized and centre-cropped to it, then the trigger is applied);
* training resizes the clean data to the model's input (as open_clip's preprocessing does) and
  refuses a backdoor poison set stored at another size, whose trigger the resize would change,
  wherever its poisons are: a poison set's own CSV or shards, any ``::`` part of joined shards,
  or the poison rows of a merged CSV (``poison ... --merged-csv``). On the open_clip_train backend
  its training crop is turned off for the same reason (``open_clip_backend.EXACT_RESIZE_AUG_CFG``);
* evaluation resizes the test images to the model's input, then pastes the same trigger.

This module finds the size a dataset is stored at (from the first image's header, nothing decoded)
and applies the refusal.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from poisonclip.data.dataset import CSV_SEPARATOR, IMAGE_COLUMN
from poisonclip.data.manifest import MANIFEST_NAME, POISON_KEY_PREFIX, SHARD_DIR, is_backdoor_row
from poisonclip.data.shard_urls import IMAGE_EXTENSIONS, is_shard_url
from poisonclip.errors import UsageError


def stored_image_size(
    source: str, sep: str = CSV_SEPARATOR, image_column: str = IMAGE_COLUMN
) -> tuple[int, int] | None:
    """(width, height) of the first readable image of a CSV or shard set; ``None`` if none opens
    (or the data is not here: a ``--dry-run`` command may name another machine's files)."""
    if is_shard_url(source):
        import webdataset as wds

        for url in (u for part in source.split("::") for u in wds.shardlists.expand_urls(part)):
            if not Path(url).is_file():
                continue
            only_images = wds.tarfile_to_samples(
                handler=wds.ignore_and_continue,
                select_files=lambda name: name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS,
            )
            for sample in only_images(wds.SimpleShardList([url])):
                for ext in IMAGE_EXTENSIONS:
                    if ext in sample and (size := _header_size(io.BytesIO(sample[ext]))):
                        return size
        return None
    path = Path(source)
    if not path.is_file():
        return None
    try:  # utf-8-sig, as read_csv_dataset reads it: a byte-order mark is not part of a column name
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f, delimiter=sep):
                key = row.get(image_column) or ""
                image = Path(key) if Path(key).is_absolute() else path.parent / key
                if key and image.is_file() and (size := _header_size(image)):
                    return size
    except UnicodeDecodeError:  # the reader itself reports a file that is not UTF-8
        return None
    return None


def _header_size(file: Path | io.BytesIO) -> tuple[int, int] | None:
    try:
        with Image.open(file) as im:  # reads the header only
            return im.size
    except (OSError, ValueError, SyntaxError):  # PIL raises all three on bad files
        return None


def _lists_trigger(folder: Path) -> bool:
    """Whether ``folder`` holds a ``manifest.jsonl`` of backdoor poisons: its rows name a trigger
    (or, in sets written before triggers were plugins, list patches)."""

    try:
        with open(folder / MANIFEST_NAME, encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):  # no manifest (not a poison set) or not one of ours
        return False
    return isinstance(first, dict) and is_backdoor_row(first)


def carries_trigger(source: str) -> bool:
    """Whether one ``--data`` source (a CSV, or one ``::`` part of shards) is a poison set written
    by ``poison backdoor``: its manifest lies beside it and names a trigger (targeted poisons carry
    no trigger, and resize like clean data)."""

    here = Path(os.path.dirname(source.split("{")[0]))  # CSV or shards folder
    if here.name == SHARD_DIR:  # poison shards lie in their set's shards/ folder
        here = here.parent
    return _lists_trigger(here)


def source_parts(source: str) -> list[str]:
    """The parts of a ``--data`` source: shards joined with ``::`` (open_clip_train's
    ``original::poisons``) are checked one by one; a CSV is one part."""
    return [part for part in source.split("::") if part] if is_shard_url(source) else [source]


def poison_rows_size(
    source: str, sep: str = CSV_SEPARATOR, image_column: str = IMAGE_COLUMN
) -> tuple[int, int] | None:
    """(width, height) of the first image of a CSV that belongs to a backdoor poison set, or
    ``None``: the poison rows of a ``poison ... --merged-csv`` file (or any CSV that lists a poison
    set's images), recognised by where their images lie, ``SET/poison/NAME.png`` beside the set's
    ``manifest.jsonl``. One pass over the rows; each image folder is looked at once."""
    path = Path(source)
    if is_shard_url(source) or not path.is_file():
        return None
    verdicts: dict[str, bool] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f, delimiter=sep)
            header = next(rows, [])
            if image_column not in header:  # the reader itself reports a missing column
                return None
            column = header.index(image_column)
            for row in rows:
                key = row[column] if column < len(row) else ""
                folder = os.path.dirname(key)
                if folder not in verdicts:
                    where = Path(folder) if os.path.isabs(folder) else path.parent / folder
                    verdicts[folder] = where.name == POISON_KEY_PREFIX and _lists_trigger(where.parent)
                if verdicts[folder]:
                    image = Path(key) if os.path.isabs(key) else path.parent / key
                    if image.is_file() and (size := _header_size(image)):
                        return size
    except (UnicodeDecodeError, csv.Error):  # the reader itself reports a file it cannot read
        return None
    return None


def check_poison_resolution(
    sources: Sequence[str], model_size: int, sep: str = CSV_SEPARATOR, image_column: str = IMAGE_COLUMN
) -> list[tuple[str, tuple[int, int]]]:
    """Refuse backdoor poisons not stored at the model's input size; return ``(source, (width,
    height))`` of the other sources stored at another size, for a note.

    A backdoor poison at another size would be resized before the model sees it, changing its
    trigger (``UsageError``). Poisons are found in every ``::`` part of a shard source (a poison
    set's shards, its manifest beside their folder), in a poison set's own CSV, and among the rows
    of any other CSV (a ``--merged-csv`` file: ``poison_rows_size``). Other data is only resized,
    as open_clip's preprocessing does. ``sep`` and ``image_column`` describe the user's CSVs
    (merged ones too); poison sets are written with the defaults.
    """
    resized = []
    for source in sources:
        for part in source_parts(source):
            trigger = carries_trigger(part)
            csv_format = (CSV_SEPARATOR, IMAGE_COLUMN) if trigger else (sep, image_column)
            size = stored_image_size(part, *csv_format)
            poison_size = size if trigger else poison_rows_size(part, sep, image_column)
            if poison_size is not None and poison_size != (model_size, model_size):
                rows = "" if trigger else " (the poison rows)"
                raise UsageError(
                    f"{part}{rows}: the poisons are {poison_size[0]}x{poison_size[1]} pixels but the model "
                    f"takes {model_size}x{model_size}; resizing them would change the trigger (a trigger is "
                    f"given in model-input pixels): rebuild them with poison ... --image-size {model_size}, "
                    f"or train a model that takes {poison_size[0]}x{poison_size[1]} (--model, --preset; the "
                    "default preset's model is the 32-px toy)"
                )
            if not trigger and size is not None and size != (model_size, model_size):
                resized.append((part, size))
    return resized
