"""Datasets: the embedded synthetic default and readers/writers for users' data."""

from poisonclip.data.captions import search_captions
from poisonclip.data.dataset import (
    ImageTextDataset,
    read_classnames,
    read_csv_dataset,
    write_csv_dataset,
)
from poisonclip.data.synthetic import SHAPES, SyntheticConfig, make_synthetic, write_synthetic

__all__ = [
    "SHAPES",
    "ImageTextDataset",
    "SyntheticConfig",
    "make_synthetic",
    "read_classnames",
    "read_csv_dataset",
    "search_captions",
    "write_csv_dataset",
    "write_synthetic",
]
