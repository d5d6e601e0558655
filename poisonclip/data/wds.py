"""Webdataset shards in img2dataset's layout: read, scan captions, fetch chosen samples; the one
import for shard users (the shard URLs' helpers, ``poisonclip.data.shard_urls``, and the writer,
``poisonclip.data.shard_writer``, are importable from here too).

Reading goes through the ``webdataset`` library one shard at a time, so that every fault is
attributed to its shard. Faults (a truncated or undecodable image, a sample without caption or
image, a shard that cannot be read) are skipped, counted and listed, never fatal.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import UnidentifiedImageError

from poisonclip.data.captions import search_captions
from poisonclip.data.dataset import DecodedSamples, ImageTextDataset, load_image
from poisonclip.data.shard_urls import (
    IMAGE_EXTENSIONS,
    brace_url,
    expand_urls,
    is_shard_url,
    shard_ranges,
)
from poisonclip.data.shard_writer import ShardSet, csv_to_shards, write_shards
from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar

__all__ = [
    "IMAGE_EXTENSIONS",
    "CaptionScan",
    "ShardSet",
    "brace_url",
    "csv_to_shards",
    "expand_urls",
    "is_shard_url",
    "read_scanned_samples",
    "read_shard_dataset",
    "scan_captions",
    "shard_ranges",
    "write_shards",
]


def _fault_reason(exn: BaseException) -> str:
    # webdataset appends the stream and URL to ``exn.args``; keep the original message only.
    message = exn.strerror if isinstance(exn, OSError) and exn.strerror else (exn.args or ("",))[0]
    return f"{type(exn).__name__}: {message}"


def _iter_shard(
    url: str,
    faults: list[tuple[str, str]],
    select_files: Callable[[str], bool] | None = None,
) -> Iterator[dict]:
    """Raw samples ``{"__key__", ext: bytes, ...}`` of one shard; read errors go to ``faults``."""

    def handler(exn: Exception) -> bool:
        faults.append((url, _fault_reason(exn)))
        return True  # skip and go on, as open_clip_train's log_and_continue

    pipeline = wds.DataPipeline(
        wds.SimpleShardList([url]),
        wds.tarfile_to_samples(handler=handler, select_files=select_files),
    )
    yield from pipeline


def _member_key(fname: str) -> str:
    # webdataset's base_plus_ext: the key is everything before the first dot of the file name.
    directory, _, base = fname.rpartition("/")
    return f"{directory}/{base.split('.')[0]}" if directory else base.split(".")[0]


def _decode(
    sample: dict, image_size: int | None, label_key: str | None, captions_required: bool = True
) -> tuple[np.ndarray, str, str | None]:
    """(image uint8 [H, W, 3], caption, label cell) of a raw sample; raises ValueError with the fault.

    The label cell is the JSON's ``label_key`` value as text (an index or a class name, as
    img2dataset's ``--save_additional_columns`` stores it), else the ``.cls`` member (a class
    index, as CLIP_benchmark's evaluation shards store it), ``None`` without either; neither is read
    when ``label_key`` is ``None`` (poisoning and training need no labels). A caption (``.txt``) is
    needed only where ``captions_required`` (a labelled evaluation set need not have one)."""
    caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    if not caption and captions_required:
        raise ValueError("no caption")
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if extension is None:
        raise ValueError("no image")
    try:
        image = load_image(io.BytesIO(sample[extension]), image_size)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad files
        # PIL names an in-memory file by its object address: say what is wrong instead.
        message = "cannot identify the image" if isinstance(err, UnidentifiedImageError) else err
        raise ValueError(f"{type(err).__name__}: {message}") from err
    label = None
    if label_key is not None and "json" in sample:
        try:
            value = json.loads(sample["json"]).get(label_key)
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"unreadable json: {err}") from err
        if isinstance(value, int | str) and not isinstance(value, bool):
            label = str(value)
        elif value is not None:
            raise ValueError(f"json {label_key!r} is {value!r}, neither a class index nor a class name")
    if label is None and label_key is not None and "cls" in sample:
        label = sample["cls"].decode("utf-8", errors="replace").strip()
    return image, caption, label


def read_shard_dataset(
    urls: str | Sequence[str],
    image_size: int | None = None,
    keys: set[str] | None = None,
    progress: bool = True,
    label_key: str | None = "label",
    classnames: Sequence[str] | None = None,
    classnames_source: str = "the class names",
    captions_required: bool = True,
) -> ImageTextDataset:
    """Decode shards into memory, in shard order (or only the samples whose key is in ``keys``).

    Faults are skipped and listed in ``dataset.skipped`` as ``(sample key or shard URL, reason)``:
    undecodable or truncated images, samples without image or (where ``captions_required``)
    caption, unreadable shards, and requested ``keys`` that are not in the shards. A warning
    reports the count. The ``label_key`` of each sample's JSON (an index or a class name), else its
    ``.cls`` member, is resolved as in ``read_csv_dataset`` (``None``: labels ignored). Without
    ``image_size`` all images must already share one size.
    """
    shard_urls = expand_urls(urls)
    wanted = None if keys is None else (lambda fname: _member_key(fname) in keys)
    decoded = DecodedSamples()
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    bar = progress_bar(shard_urls, desc="reading shards", unit="shard", disable=not progress)
    for url in bar:
        for sample in _iter_shard(url, skipped, wanted):
            key = sample["__key__"]
            seen.add(key)
            try:
                array, caption, label = _decode(sample, image_size, label_key, captions_required)
            except ValueError as err:
                skipped.append((key, f"{err} (in {Path(url).name})"))
                continue
            decoded.add(key, array, caption, label)
    if keys is not None:
        skipped += [(key, "not found in the shards") for key in sorted(keys - seen)]
    if skipped:
        warnings.warn(
            f"{' '.join([urls] if isinstance(urls, str) else urls)}: skipped {len(skipped)} "
            f"(first: {skipped[0][0]}: {skipped[0][1]})",
            stacklevel=2,
        )
    if not decoded:
        if keys is not None:  # every requested sample failed: the caller decides what that means
            empty = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
            return ImageTextDataset([], empty, [], torch.empty(0, dtype=torch.long), skipped)
        raise UsageError(f"{urls}: no readable samples")
    where = " ".join([urls] if isinstance(urls, str) else urls)
    return decoded.to_dataset(where, skipped, classnames, classnames_source)


@dataclass
class CaptionScan:
    """Result of a caption search over shards (no image decoded).

    ``keys`` [N] every sample with a caption, in shard order; ``shard_of`` int32 [N] its index in
    ``urls``; ``matches`` indices into ``keys`` whose caption contains the label, with their
    ``matched_captions``; ``parquet_shards`` how many shards were read from parquet (the rest from
    their ``.txt`` members); ``skipped`` ``(key or URL, reason)`` for every fault.
    """

    urls: list[str]
    keys: list[str]
    shard_of: np.ndarray
    matches: list[int]
    matched_captions: list[str]
    parquet_shards: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def captions_per_second(self) -> float:
        return len(self.keys) / max(self.seconds, 1e-9)


def _parquet_captions(path: Path, skipped: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(keys, captions) of the downloaded samples listed in an img2dataset parquet file."""
    import pyarrow.parquet as pq  # heavy; only the caption scan needs it

    columns = set(pq.read_schema(path).names)
    if not {"key", "caption"} <= columns:
        raise UsageError(f"{path}: parquet without 'key' and 'caption' columns")
    table = pq.read_table(path, columns=["key", "caption"] + (["status"] if "status" in columns else []))
    rows = table.to_pydict()
    # Failed downloads are listed with their status but were never written to the tar.
    statuses = rows.get("status") or ["success"] * table.num_rows
    keys, captions = [], []
    for key, caption, status in zip(rows["key"], rows["caption"], statuses, strict=True):
        if status != "success":
            continue
        if not (caption or "").strip():
            skipped.append((key, f"no caption (in {path.name})"))
            continue
        keys.append(key)
        captions.append(caption.strip())
    return keys, captions


def _tar_captions(url: str, skipped: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(keys, captions) from a shard's ``.txt`` members; image members are skipped, not read."""
    extensions: dict[str, set[str]] = {}

    def only_captions(fname: str) -> bool:
        # Called for every member: note what each sample has, extract only the captions.
        extensions.setdefault(_member_key(fname), set()).add(fname.rpartition(".")[2].lower())
        return fname.endswith(".txt")

    captions = {
        sample["__key__"]: sample["txt"].decode("utf-8", errors="replace").strip()
        for sample in _iter_shard(url, skipped, only_captions)
    }
    keys, texts = [], []
    for key, exts in extensions.items():
        if not captions.get(key):
            skipped.append((key, f"no caption (in {Path(url).name})"))
        elif not exts & set(IMAGE_EXTENSIONS):
            skipped.append((key, f"no image (in {Path(url).name})"))
        else:
            keys.append(key)
            texts.append(captions[key])
    return keys, texts


def _shard_captions(
    shard_urls: Iterable[str], skipped: list[tuple[str, str]], use_parquet: bool
) -> Iterator[tuple[int, list[str], list[str], bool]]:
    """(index of the shard, keys, captions, read from parquet) of each shard that exists, from its
    parquet file when there is one (and ``use_parquet``), else from its ``.txt`` members."""
    for index, url in enumerate(shard_urls):
        parquet = Path(url).with_suffix(".parquet")
        if not Path(url).is_file():  # its parquet alone would count samples nobody can read
            skipped.append((url, "FileNotFoundError: no such shard"))
            continue
        from_parquet = use_parquet and parquet.is_file()
        keys, captions = _parquet_captions(parquet, skipped) if from_parquet else _tar_captions(url, skipped)
        yield index, keys, captions, from_parquet


def count_captioned(urls: str | Sequence[str]) -> int:
    """How many samples of a shard set have an image and a caption (no image read)."""
    return sum(len(keys) for _, keys, _, _ in _shard_captions(expand_urls(urls), [], use_parquet=True))


def scan_captions(
    urls: str | Sequence[str],
    label: str,
    word_boundary: bool = True,
    progress: bool = True,
    use_parquet: bool = True,
) -> CaptionScan:
    """Search every caption of a shard set for ``label`` (see ``search_captions``), images unread.

    Streams shard by shard: captions come from the shard's parquet file when there is one (and
    ``use_parquet``), else from its ``.txt`` members. Only the keys of all samples and the
    matching captions are kept.
    """
    shard_urls = expand_urls(urls)
    keys: list[str] = []
    shard_of: list[np.ndarray] = []
    matches: list[int] = []
    matched: list[str] = []
    skipped: list[tuple[str, str]] = []
    parquet_shards = 0
    start = time.perf_counter()
    bar = progress_bar(shard_urls, desc="scanning captions", unit="shard", disable=not progress)
    for index, shard_keys, captions, from_parquet in _shard_captions(bar, skipped, use_parquet):
        parquet_shards += from_parquet
        hits = search_captions(captions, label, word_boundary=word_boundary)
        matches += [len(keys) + i for i in hits]
        matched += [captions[i] for i in hits]
        keys += shard_keys
        shard_of.append(np.full(len(shard_keys), index, dtype=np.int32))
        bar.set_postfix(captions_s=f"{len(keys) / (time.perf_counter() - start):,.0f}")
    return CaptionScan(
        urls=shard_urls,
        keys=keys,
        shard_of=np.concatenate(shard_of) if shard_of else np.zeros(0, dtype=np.int32),
        matches=matches,
        matched_captions=matched,
        parquet_shards=parquet_shards,
        seconds=time.perf_counter() - start,
        skipped=skipped,
    )


def read_scanned_samples(
    scan: CaptionScan,
    indices: Sequence[int],
    image_size: int | None = None,
    progress: bool = False,
) -> ImageTextDataset:
    """Decode only the samples ``indices`` (into ``scan.keys``), reading only the shards that hold them.

    Returned in the order of ``indices``; samples that fail to decode are left out and listed
    in ``skipped``.
    """
    wanted = [scan.keys[i] for i in indices]
    shards = sorted({int(scan.shard_of[i]) for i in indices})
    # Poisoning never needs labels: their JSON is not even parsed.
    dataset = read_shard_dataset(
        [scan.urls[s] for s in shards], image_size, set(wanted), progress, label_key=None
    )
    position = {key: rank for rank, key in enumerate(wanted)}
    order = sorted(range(len(dataset)), key=lambda j: position[dataset.keys[j]])
    reordered = dataset.subset(order) if len(dataset) else dataset
    reordered.skipped = dataset.skipped
    return reordered
