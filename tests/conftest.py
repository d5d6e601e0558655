from pathlib import Path

import pytest
import torch

from poisonclip.data import SyntheticConfig, read_csv_dataset, write_synthetic
from poisonclip.train.parallel import torch_threads

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


@pytest.fixture(scope="module")
def one_thread():
    """For a module that trains tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they train fastest on one thread; on a busy CPU two made a step 200× slower."""
    with torch_threads(1):
        yield
