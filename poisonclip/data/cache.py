"""A sweep's data: the synthetic-data cache, one folder per ``SyntheticConfig`` written once, then
only read; or a user's own files (``data/files.py``), read where they are.

The demo generates into its own output; sweeps share one cache folder per config
(named by the config's hash), so a config used by many trials is generated once.
"""

from __future__ import annotations

import json
from pathlib import Path

from poisonclip.data.dataset import ImageTextDataset, read_classnames, read_csv_dataset
from poisonclip.data.files import DataConfig, DataFiles, load_files
from poisonclip.data.io import OutputExistsError
from poisonclip.data.synthetic import SyntheticConfig, synthetic_train_labels, write_synthetic
from poisonclip.keys import config_dict, config_hash


def prepare_data(data_dir: Path, config: SyntheticConfig) -> None:
    """Write the synthetic dataset unless ``data_dir`` already holds this exact config."""
    config_file = data_dir / "config.json"

    def present() -> bool:
        return config_file.is_file() and json.loads(config_file.read_text()) == config_dict(config)

    if present():
        return
    # No path: the demo generates into its output's temporary, which is renamed when done.
    print(f"generating synthetic data ({config.num_train:,} training, {config.num_test:,} test pairs) ...")
    try:
        write_synthetic(data_dir, config)
    except OutputExistsError:
        if not present():  # not a concurrent sweep that wrote the same data first
            raise


def data_dir(data_root: Path, config: SyntheticConfig) -> Path:
    """The cache folder of one synthetic-data config (its hash names it)."""
    return data_root / f"synthetic-{config_hash(config_dict(config))}"


def prepare_sweep_data(data_root: Path, config: DataConfig) -> None:
    """Before a sweep's workers start: generate synthetic data once; check a user's files unchanged."""
    if isinstance(config, DataFiles):
        config.check_unchanged()
    else:
        prepare_data(data_dir(data_root, config), config)


def load_sweep_data(
    data_root: Path, config: DataConfig
) -> tuple[ImageTextDataset, ImageTextDataset, list[str]]:
    """(train, test, classnames) of a sweep's ``[data]``: synthetic (``load_synthetic``) or files."""
    if isinstance(config, DataFiles):
        return load_files(config)
    return load_synthetic(data_root, config)


def load_synthetic(
    data_root: Path, config: SyntheticConfig
) -> tuple[ImageTextDataset, ImageTextDataset, list[str]]:
    """(train, test, classnames) of ``config``, generated into the cache on first use.

    Images are read at ``config.image_size``, the model's input (checked by the grid), whatever
    ``stored_size`` they were written at: poisons are then built and triggers pasted in
    model-input pixels (the trigger-resolution rule). Training labels are the images' true
    classes (attacks and training ignore them; defenses' diagnostics read them); a cache written
    before ``train.csv`` had a label column gets them from ``config``, which drew them.
    """
    root = data_dir(data_root, config)
    prepare_data(root, config)
    train = read_csv_dataset(root / "train.csv", config.image_size, progress=False)
    if (train.labels < 0).all():  # an earlier cache: train.csv without labels
        train.labels = synthetic_train_labels(config, train.keys)
    return (
        train,
        read_csv_dataset(root / "test.csv", config.image_size, progress=False),
        read_classnames(root / "classnames.txt"),
    )
