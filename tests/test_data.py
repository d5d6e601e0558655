import numpy as np
import pytest

from poisonclip.data import (
    SHAPES,
    SyntheticConfig,
    make_synthetic,
    read_classnames,
    read_csv_dataset,
    search_captions,
    write_csv_dataset,
)
from poisonclip.errors import UsageError

from .conftest import SMALL


def test_synthetic_is_deterministic_and_seed_dependent():
    config = SyntheticConfig(num_train=50, num_test=10, seed=7)
    a_train, a_test = make_synthetic(config)
    b_train, _ = make_synthetic(config)
    c_train, _ = make_synthetic(SyntheticConfig(num_train=50, num_test=10, seed=8))
    assert np.array_equal(a_train.images, b_train.images)
    assert a_train.captions == b_train.captions
    assert not np.array_equal(a_train.images, c_train.images)
    assert a_train.images.shape == (50, 32, 32, 3) and a_train.images.dtype == np.uint8
    assert a_test.labels.max() < config.num_shapes


def test_training_set_does_not_depend_on_test_size():
    a, _ = make_synthetic(SyntheticConfig(num_train=30, num_test=5))
    b, _ = make_synthetic(SyntheticConfig(num_train=30, num_test=50))
    assert np.array_equal(a.images, b.images)


def test_captions_name_the_class_mostly_and_sometimes_mislead():
    train, _ = make_synthetic(SyntheticConfig(num_train=4000, num_test=1, num_shapes=20))
    names_own = np.mean([SHAPES[y] in c for c, y in zip(train.captions, train.labels, strict=True)])
    assert 0.9 < names_own < 0.99  # a few captions name no shape
    hits = search_captions(train.captions, "star")
    truly_star = np.mean([train.labels[i] == SHAPES.index("star") for i in hits])
    assert 0.8 < truly_star < 1.0  # "basketball hoop": most, not all, matches are stars
    assert len({c.split(" ")[0] for c in train.captions}) > 10  # many templates and prefixes


def test_written_dataset_round_trips_through_the_user_reader(small_data_dir, small_train, small_test):
    train, test = make_synthetic(SMALL)
    assert small_train.images.shape == (SMALL.num_train, 3, 32, 32)
    assert np.array_equal(small_train.images.permute(0, 2, 3, 1).numpy(), train.images)
    assert small_train.captions == train.captions
    assert small_train.labels.tolist() == train.labels.tolist()  # true classes, for diagnostics
    assert small_test.labels.tolist() == test.labels.tolist()
    assert read_classnames(small_data_dir / "classnames.txt") == list(SHAPES[: SMALL.num_shapes])
    header = (small_data_dir / "train.csv").read_text().splitlines()[0]
    assert header == "filepath\ttitle\tlabel"  # open_clip_train's default columns, then the label


@pytest.mark.parametrize(
    ("label", "word_boundary", "expected"),
    [
        ("ring", True, [0, 3]),
        ("ring", False, [0, 2, 3]),
        ("RING", True, [0, 3]),
        ("star", True, []),
    ],
)
def test_search_captions(label, word_boundary, expected):
    captions = ["a red ring", "a blue circle", "an earring", "Ring on a mat"]
    assert search_captions(captions, label, word_boundary) == expected


def test_corrupt_and_missing_images_are_skipped_counted_and_reported(tmp_path):
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    write_csv_dataset(tmp_path / "d.csv", "img", images, ["a", "b", "c", "d"])
    (tmp_path / "img" / "000001.png").write_bytes(b"not a png")
    (tmp_path / "img" / "000002.png").unlink()
    with open(tmp_path / "d.csv", "a") as f:
        f.write("img/000000.png\t\n")  # empty caption
    with pytest.warns(UserWarning, match="skipped 3 of 5"):
        ds = read_csv_dataset(tmp_path / "d.csv", progress=False)
    assert ds.keys == ["img/000000.png", "img/000003.png"]
    assert [reason.split(":")[0] for _, reason in ds.skipped] == [
        "UnidentifiedImageError",
        "FileNotFoundError",
        "empty caption",
    ]


def test_missing_column_and_resize(tmp_path):
    images = np.full((2, 20, 40, 3), 200, dtype=np.uint8)
    write_csv_dataset(tmp_path / "d.csv", "img", images, ["a", "b"])
    with pytest.raises(UsageError, match="no column 'caption'"):
        read_csv_dataset(tmp_path / "d.csv", caption_column="caption", progress=False)
    ds = read_csv_dataset(tmp_path / "d.csv", image_size=16, progress=False)
    assert ds.images.shape == (2, 3, 16, 16)
