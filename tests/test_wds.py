import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from PIL import Image

from poisonclip.attacks import Checkerboard, make_backdoor, read_poison_set
from poisonclip.attacks.backdoor import backdoor_from_pool, make_backdoor_from_shards
from poisonclip.attacks.poison_set import write_merged_csv, write_poison_set, write_poison_shards
from poisonclip.attacks.targeted import Target, make_targeted, make_targeted_from_shards
from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.data import read_csv_dataset
from poisonclip.data.io import OUTPUT_MARKER
from poisonclip.data.wds import (
    brace_url,
    csv_to_shards,
    expand_urls,
    read_scanned_samples,
    read_shard_dataset,
    scan_captions,
    write_shards,
)
from poisonclip.errors import UsageError


@pytest.fixture(scope="module")
def shards(small_data_dir, tmp_path_factory):
    """The 400-sample synthetic training set as 4 img2dataset-layout shards of 100."""
    return csv_to_shards(
        small_data_dir / "train.csv", tmp_path_factory.mktemp("wds") / "shards", 100, progress=False
    )


def test_shards_have_img2dataset_layout(shards, small_train):
    root = shards.url.rsplit("/", 1)[0]
    assert shards.url == f"{root}/{{00000..00003}}.tar" and shards.num_shards == 4
    names = sorted(p.name for p in Path(root).iterdir() if p.name != OUTPUT_MARKER)
    assert names == sorted(f"{i:05d}{ext}" for i in range(4) for ext in (".tar", ".parquet", "_stats.json"))
    assert shards.keys[:2] == ["0000000", "0000001"] and shards.keys[100] == "0000100"  # shard + index
    with tarfile.open(f"{root}/00001.tar") as tar:
        members = tar.getnames()
        meta = json.loads(tar.extractfile("0000100.json").read())
        assert tar.extractfile("0000100.txt").read().decode() == small_train.captions[100]
    assert sorted(members[:3]) == ["0000100.json", "0000100.png", "0000100.txt"]
    assert meta["key"] == "0000100" and meta["url"] == small_train.keys[100] and meta["status"] == "success"
    table = pd.read_parquet(f"{root}/00001.parquet")
    assert table["key"].tolist() == shards.keys[100:200]
    assert table["caption"].tolist() == small_train.captions[100:200]
    stats = json.loads(Path(f"{root}/00001_stats.json").read_text())
    assert stats["count"] == stats["successes"] == 100


def test_shard_reader_round_trips_the_dataset(shards, small_train):
    back = read_shard_dataset(shards.url, progress=False)
    assert back.keys == shards.keys and back.skipped == []
    assert torch.equal(back.images, small_train.images)
    assert back.captions == small_train.captions
    only = read_shard_dataset(shards.url, keys={"0000007", "0000305"}, progress=False)
    assert only.keys == ["0000007", "0000305"]
    assert torch.equal(only.images[1], small_train.images[305])


def test_expand_urls(shards):
    root = shards.url.rsplit("/", 1)[0]
    assert expand_urls(f"{root}/{{00000..00001}}.tar::{root}/00003.tar") == [
        f"{root}/00000.tar",
        f"{root}/00001.tar",
        f"{root}/00003.tar",
    ]
    assert brace_url("d", 12) == "d/{00000..00011}.tar"
    with pytest.raises(UsageError, match="no shard found"):
        expand_urls(f"{root}/{{00010..00012}}.tar")


def test_caption_scan_reads_parquet_or_txt_identically(shards, small_train, tmp_path):
    scan = scan_captions(shards.url, "star", progress=False)
    assert scan.parquet_shards == 4 and len(scan) == 400 and scan.captions_per_second > 0
    expected = [i for i, c in enumerate(small_train.captions) if "star" in c.split()]
    assert len(scan.matches) >= len(expected) > 0
    assert scan.matched_captions == [small_train.captions[i] for i in scan.matches]
    assert scan.shard_of.tolist() == [i // 100 for i in range(400)]

    # Same shards without parquet files: captions come from the .txt members instead.
    root = shards.url.rsplit("/", 1)[0]
    for i in range(4):
        (tmp_path / f"{i:05d}.tar").write_bytes(Path(f"{root}/{i:05d}.tar").read_bytes())
    txt = scan_captions(str(tmp_path / "{00000..00003}.tar"), "star", progress=False)
    assert txt.parquet_shards == 0
    assert (txt.keys, txt.matches, txt.matched_captions) == (scan.keys, scan.matches, scan.matched_captions)


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture()
def faulty_shards(tmp_path):
    """00000.tar: 3 good samples, a truncated JPEG, undecodable bytes, no caption, no image;
    00001.tar: not a tar file; 00002.tar: missing."""
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    with wds.TarWriter(str(tmp_path / "00000.tar")) as tar:
        for i in range(3):
            tar.write({"__key__": f"good{i}", "png": _png(i), "txt": f"a star number {i}"})
        tar.write({"__key__": "truncated", "jpg": jpeg.getvalue()[:600], "txt": "a star cut short"})
        tar.write({"__key__": "garbage", "png": b"not an image", "txt": "a star in garbage"})
        tar.write({"__key__": "nocaption", "png": _png(9), "json": {"key": "nocaption"}})
        tar.write({"__key__": "noimage", "txt": "a star without image"})
    (tmp_path / "00001.tar").write_bytes(b"this is not a tar file" * 100)
    return str(tmp_path / "{00000..00002}.tar")


def test_faults_are_skipped_counted_and_listed(faulty_shards):
    with pytest.warns(UserWarning, match="skipped 6"):
        ds = read_shard_dataset(faulty_shards, progress=False)
    assert ds.keys == ["good0", "good1", "good2"] and ds.images.shape == (3, 3, 8, 8)
    reasons = dict(ds.skipped)
    assert len(ds.skipped) == 6
    assert reasons["truncated"].startswith("OSError: Truncated File Read")
    assert reasons["garbage"].startswith("UnidentifiedImageError")
    assert reasons["nocaption"].startswith("no caption") and reasons["noimage"].startswith("no image")
    shard_faults = [(k, r) for k, r in ds.skipped if k.endswith(".tar")]
    assert [k.rsplit("/", 1)[1] for k, _ in shard_faults] == ["00001.tar", "00002.tar"]
    assert shard_faults[0][1].startswith("ReadError") and shard_faults[1][1].startswith("FileNotFoundError")


def test_caption_scan_counts_faults_without_decoding(faulty_shards):
    scan = scan_captions(faulty_shards, "star", progress=False)
    # Images are not decoded: the truncated and garbage images are found only when fetched.
    assert scan.keys == ["good0", "good1", "good2", "truncated", "garbage"]
    assert scan.matches == [0, 1, 2, 3, 4]
    assert sorted(k.rsplit("/", 1)[-1] for k, _ in scan.skipped) == [
        "00001.tar",
        "00002.tar",
        "nocaption",
        "noimage",
    ]


def test_backdoor_on_shards_replaces_unreadable_sources(faulty_shards):
    with pytest.warns(UserWarning, match="skipped"):
        poisons, scan = make_backdoor_from_shards(faulty_shards, "star", 3, Checkerboard(2), progress=False)
    assert sorted(r["source_key"] for r in poisons.manifest) == ["good0", "good1", "good2"]
    # Seed 0's random order puts a bad image among the first three: it was replaced.
    assert {k for k, _ in poisons.samples.skipped} & {"truncated", "garbage"}
    with pytest.raises(UsageError, match="only 3 of the 5 images could be read"), pytest.warns(UserWarning):
        make_backdoor_from_shards(faulty_shards, "star", 4, Checkerboard(2), progress=False)
    subset = read_scanned_samples(scan, [2, 0])
    assert subset.keys == ["good2", "good0"]


def test_backdoor_on_shards_equals_backdoor_in_memory(shards, small_train):
    """One implementation: shard keys aside, the same images, captions and patches."""
    from_shards, scan = make_backdoor_from_shards(
        shards.url, "star", 15, Checkerboard(placement="random"), seed=4, progress=False
    )
    in_memory = make_backdoor(small_train, "star", 15, Checkerboard(placement="random"), seed=4)
    assert torch.equal(from_shards.samples.images, in_memory.samples.images)
    assert from_shards.samples.captions == in_memory.samples.captions
    key_of = dict(zip(small_train.keys, shards.keys, strict=True))
    for a, b in zip(from_shards.manifest, in_memory.manifest, strict=True):
        assert a["source_key"] == key_of[b["source_key"]] and a["patch"] == b["patch"]


@pytest.mark.parametrize("captions", ["search", "both"])
def test_targeted_on_shards_equals_targeted_in_memory(shards, small_train, small_test, captions):
    target = Target(small_test.images[0], "star", "test/0")
    options = TargetedOptions(captions=captions, perturb_captions=True)
    from_shards, scan = make_targeted_from_shards(shards.url, target, 9, 2, options, progress=False)
    in_memory = make_targeted(small_train, target, 9, seed=2, options=options)
    assert len(scan) == 400 and len(scan.matches) == len([c for c in small_train.captions if "star" in c])
    assert torch.equal(from_shards.samples.images, in_memory.samples.images)
    assert from_shards.samples.captions == in_memory.samples.captions
    key_of = dict(zip(small_train.keys, shards.keys, strict=True))
    for a, b in zip(from_shards.manifest, in_memory.manifest, strict=True):
        expected = key_of.get(b["caption_source_key"], b["caption_source_key"])  # templates: no key
        assert a["caption_source_key"] == expected


def test_targeted_on_shards_with_templates_needs_no_matching_caption(shards, small_test):
    target = Target(small_test.images[0], "zebra", "test/0")
    poisons, scan = make_targeted_from_shards(
        shards.url, target, 5, options=TargetedOptions(captions="templates"), progress=False
    )
    assert scan.matches == [] and len(poisons) == 5
    assert all("zebra" in c for c in poisons.samples.captions)
    with pytest.raises(UsageError, match="appears in no training caption"):
        make_targeted_from_shards(shards.url, target, 5, progress=False)
    with pytest.raises(UsageError, match="poison count must be at least 1"):  # checked before the scan
        make_targeted_from_shards(shards.url, target, 0, options=TargetedOptions("both"))


def test_targeted_on_shards_checks_the_image_size(shards, small_test):
    small = Target(small_test.images[0][:, :16, :16].contiguous(), "star", "x")
    with pytest.raises(UsageError, match="--image-size"):
        make_targeted_from_shards(shards.url, small, 3, progress=False)
    poisons, _ = make_targeted_from_shards(shards.url, small, 3, image_size=16, progress=False)
    assert poisons.samples.images.shape == (3, 3, 16, 16)


def test_backdoor_from_pool_decodes_only_chosen_images(small_train):
    requested = []

    def load(indices):
        requested.extend(indices)
        return small_train.subset(indices)

    pool = [i for i, c in enumerate(small_train.captions) if "star" in c]
    captions = [small_train.captions[i] for i in pool]
    poisons = backdoor_from_pool(small_train.keys, pool, captions, load, "star", 7)
    assert len(requested) == 7 and len(poisons) == 7


def test_poison_shards_are_poison_only_with_manifest(shards, small_train, tmp_path):
    poisons = make_backdoor(small_train, "star", 12, seed=1)
    written = write_poison_shards(tmp_path / "p", poisons, samples_per_shard=5)
    assert written.url == f"{tmp_path / 'p' / 'shards'}/{{00000..00002}}.tar" and written.num_samples == 12
    assert all(key.startswith("poison") for key in written.keys)  # apart from img2dataset keys
    manifest = [json.loads(line) for line in (tmp_path / "p" / "manifest.jsonl").read_text().splitlines()]
    assert [row["shard_key"] for row in manifest] == written.keys
    back = read_poison_set(tmp_path / "p")
    assert torch.equal(back.samples.images, poisons.samples.images)
    # as training reads it: no labels (the synthetic shards carry them, poisons do not)
    joined = read_shard_dataset(f"{shards.url}::{written.url}", progress=False, label_key=None)
    assert len(joined) == 412 and joined.keys[400:] == written.keys


def test_merged_csv_for_csv_users(small_data_dir, small_train, tmp_path):
    poisons = make_backdoor(small_train, "star", 5)
    write_poison_set(tmp_path / "p", poisons)
    rows = write_merged_csv(tmp_path / "merged" / "all.csv", small_data_dir / "train.csv", tmp_path / "p")
    assert rows == 405
    merged = read_csv_dataset(tmp_path / "merged" / "all.csv", progress=False)
    assert torch.equal(merged.images[:400], small_train.images)
    assert torch.equal(merged.images[400:], poisons.samples.images)
    assert merged.captions[400:] == poisons.samples.captions


def test_write_shards_rejects_bad_options(small_train, tmp_path):
    with pytest.raises(UsageError, match="image format"):
        write_shards(tmp_path / "s", small_train.subset(range(3)), image_format="gif")
    assert not (tmp_path / "s").exists()


def test_poison_cli_formats(small_data_dir, shards, tmp_path, capsys):
    from poisonclip.cli import main

    def run(*args):
        command = ("poison", "backdoor", "--poison-count", 5, "--target-label", "star", "--no-progress")
        return main([str(a) for a in (*command, *args)])

    csv = small_data_dir / "train.csv"
    assert run("--data", csv, "--out", tmp_path / "w", "--format", "wds") == 2
    assert "--format wds needs shards" in capsys.readouterr().err and not (tmp_path / "w").exists()
    assert run("--data", shards.url, "--out", tmp_path / "s", "--merged-csv", tmp_path / "m.csv") == 2
    assert not (tmp_path / "s").exists() and not (tmp_path / "m.csv").exists()
    assert run("--data", csv, "--out", tmp_path / "c", "--merged-csv", tmp_path / "all.csv") == 0
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 1 + 400 + 5
    assert run("--data", shards.url, "--out", tmp_path / "s", "--format", "csv") == 0
    assert (tmp_path / "s" / "poisons.csv").is_file()
    assert "no image decoded" in capsys.readouterr().out


def test_targeted_poison_cli_on_shards(shards, small_data_dir, tmp_path, capsys):
    from poisonclip.cli import main

    image = small_data_dir / "test.csv"
    first = image.read_text().splitlines()[1].split("\t")[0]
    args = ["poison", "targeted", "--data", shards.url, "--out", tmp_path / "t", "--poison-count", 6,
            "--target-image", small_data_dir / first, "--target-label", "heart", "--no-progress"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "no image decoded" in out and f"--train-data '{shards.url}::" in out
    assert "--train-num-samples 406" in out
    written = read_shard_dataset(str(tmp_path / "t" / "shards" / "00000.tar"), progress=False)
    assert len(written) == 6 and all("heart" in c for c in written.captions)
    rows = [json.loads(line) for line in (tmp_path / "t" / "manifest.jsonl").read_text().splitlines()]
    assert [row["target_label"] for row in rows] == ["heart"] * 6
