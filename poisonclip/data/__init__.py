"""Datasets: the embedded synthetic default and readers/writers for users' data.

The names below are imported on first use: ``poisonclip.data.io`` and the CSV layout are read
by the command line before any torch-backed module is needed.
"""

from poisonclip.lazy import lazy_exports

_EXPORTS = {
    "SHAPES": "poisonclip.data.synthetic",
    "ImageTextDataset": "poisonclip.data.dataset",
    "SyntheticConfig": "poisonclip.data.synthetic",
    "make_synthetic": "poisonclip.data.synthetic",
    "read_classnames": "poisonclip.data.dataset",
    "read_csv_dataset": "poisonclip.data.dataset",
    "search_captions": "poisonclip.data.captions",
    "write_csv_dataset": "poisonclip.data.dataset",
    "write_synthetic": "poisonclip.data.synthetic",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
