from pathlib import Path

import pytest
import torch

from poisonclip.data import SyntheticConfig, read_csv_dataset, write_synthetic

torch.set_num_threads(2)

SMALL = SyntheticConfig(num_train=400, num_test=120, num_shapes=10, seed=3)
# An experiment file's data and recipe for sweeps that train in seconds.
TINY_GRID = '[data]\nnum_train = 300\nnum_test = 120\nnum_shapes = 10\n[train]\npreset = "tiny"\n'


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", SMALL)


@pytest.fixture(scope="session")
def small_train(small_data_dir):
    return read_csv_dataset(small_data_dir / "train.csv", progress=False)


@pytest.fixture(scope="session")
def small_test(small_data_dir):
    return read_csv_dataset(small_data_dir / "test.csv", progress=False)
