"""Datasets: the embedded synthetic default and readers/writers for users' data.

The names below are imported on first use: ``poisonclip.data.io`` and the CSV layout are read
by the command line before any torch-backed module is needed.
"""

from poisonclip.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "poisonclip.data.captions": ("search_captions",),
        "poisonclip.data.dataset": (
            "ImageTextDataset",
            "read_classnames",
            "read_csv_dataset",
            "write_csv_dataset",
        ),
        "poisonclip.data.synthetic": ("SHAPES", "SyntheticConfig", "make_synthetic", "write_synthetic"),
    },
)
