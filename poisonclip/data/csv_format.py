"""The CSV layout of users' data: open_clip_train's defaults (tab separator, columns ``filepath``
and ``title``), plus the ``label`` column that evaluation splits carry."""

from __future__ import annotations

from dataclasses import dataclass

from poisonclip.errors import UsageError

CSV_SEPARATOR = "\t"
IMAGE_COLUMN = "filepath"
CAPTION_COLUMN = "title"
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class CsvFormat:
    """How to read a CSV's rows; ignored for webdataset shards but ``label_column`` (their JSON field)."""

    separator: str = CSV_SEPARATOR
    image_column: str = IMAGE_COLUMN  # image paths, relative to the CSV's directory or absolute
    caption_column: str = CAPTION_COLUMN
    label_column: str = LABEL_COLUMN  # class index or name; read by evaluation splits only


DEFAULT_CSV = CsvFormat()  # open_clip_train's layout


def check_separator(separator: str, name: str) -> None:
    """A CSV separator is one character, and not one that CSV quoting or line ends use."""
    if len(separator) != 1 or separator in '\r\n"':
        raise UsageError(
            f"{name} must be one character, not a quote or a line break, got {separator!r} "
            "(for a tab, leave the default or type $'\\t' in bash)"
        )
