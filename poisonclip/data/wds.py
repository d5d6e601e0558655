"""Webdataset shards in img2dataset's layout: write, read, scan captions, fetch chosen samples.

The layout (img2dataset ``--output_format webdataset``)::

    00000.tar          KEY.jpg|png|webp (image), KEY.txt (caption), KEY.json (metadata)
    00000.parquet      one row per sample: key, caption, status, width, height, ...
    00000_stats.json   counts for the shard
    00001.tar ...

Keys are the shard number (5 digits) followed by the index inside the shard, so they are unique
over a shard set. URLs are brace patterns (``shards/{00000..00331}.tar``); several sources are
joined with ``::``, as open_clip_train accepts them.

Reading goes through the ``webdataset`` library one shard at a time, so that every fault is
attributed to its shard. Faults (a truncated or undecodable image, a sample without caption or
image, a shard that cannot be read) are skipped, counted and listed, never fatal.
"""

from __future__ import annotations

import io
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image, UnidentifiedImageError

from poisonclip.data.captions import search_captions
from poisonclip.data.dataset import ImageTextDataset, load_image, resolve_labels
from poisonclip.data.io import atomic_path
from poisonclip.errors import UsageError
from poisonclip.progress import progress_bar

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")  # what open_clip_train reads
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
SHARD_DIGITS = 5  # img2dataset's shard names: 00000.tar


def is_shard_url(data: str) -> bool:
    """True for webdataset URLs (``dir/{00000..00009}.tar``, ``a.tar::b.tar``), False for CSV files."""
    return data.endswith(".tar")


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard paths from brace patterns joined with ``::`` (or a list of them), in order.

    Raises ``UsageError`` when no shard of the pattern exists (a mistyped URL); a single missing
    shard among existing ones is a fault reported by the readers instead.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for pattern in patterns for url in wds.shardlists.expand_urls(pattern)]
    if not any(Path(url).is_file() for url in expanded):
        raise UsageError(
            f"no shard found for {' '.join(patterns)!r} (expected e.g. 'dir/{{00000..00009}}.tar')"
        )
    return expanded


def brace_url(directory: str | Path, num_shards: int) -> str:
    """The brace pattern over ``num_shards`` shards named 00000.tar, 00001.tar ... in ``directory``."""
    last = f"{num_shards - 1:0{SHARD_DIGITS}d}"
    return f"{directory}/{{{0:0{SHARD_DIGITS}d}..{last}}}.tar"


def shard_ranges(urls: Sequence[str]) -> list[str]:
    """``urls`` (shard paths, in order) as few brace patterns: runs of consecutive shard numbers in
    one folder become ``dir/{00003..00007}.tar``; any other path stays as it is."""
    out: list[str] = []
    run: list[tuple[str, int, int]] = []  # (folder, first, last) of the current run

    def close() -> None:
        if run:
            folder, first, last = run.pop()
            name = f"{first:0{SHARD_DIGITS}d}"
            span = name if first == last else f"{{{name}..{last:0{SHARD_DIGITS}d}}}"
            out.append(f"{folder}/{span}.tar" if folder else f"{span}.tar")

    for url in urls:
        folder, _, name = url.rpartition("/")
        stem = name.removesuffix(".tar")
        if not (name.endswith(".tar") and stem.isdigit() and len(stem) == SHARD_DIGITS):
            close()
            out.append(url)
            continue
        number = int(stem)
        if run and run[0][0] == folder and run[0][2] == number - 1:
            run[0] = (folder, run[0][1], number)
        else:
            close()
            run.append((folder, number, number))
    close()
    return out


@dataclass(frozen=True)
class ShardSet:
    """Shards as written: ``url`` (brace pattern) over ``num_shards`` tars holding ``keys``."""

    url: str
    num_shards: int
    keys: list[str]

    @property
    def num_samples(self) -> int:
        return len(self.keys)


def write_shards(
    out_dir: str | Path,
    samples: ImageTextDataset,
    samples_per_shard: int = 10_000,
    image_format: str = "png",
    metadata: Sequence[dict] | None = None,
    key_prefix: str = "",
) -> ShardSet:
    """Write ``samples`` as img2dataset-layout shards (tar + parquet + stats) into ``out_dir``.

    ``metadata`` (one dict per sample) goes into each ``KEY.json`` and parquet row beside
    img2dataset's own fields; a known ``label`` (>= 0) is stored too. ``key_prefix`` keeps keys
    apart from another shard set's (poisons vs the original data). Written atomically.
    """
    import pandas as pd  # heavy; only writers and parquet readers need it

    if image_format not in IMAGE_FORMATS:
        raise UsageError(f"image format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if samples_per_shard < 1:
        raise UsageError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    n = len(samples)
    if metadata is not None and len(metadata) != n:
        raise ValueError("need one metadata dict per sample")
    num_shards = max(1, math.ceil(n / samples_per_shard))
    index_digits = len(str(samples_per_shard - 1))  # img2dataset: shard digits + index digits
    images = samples.images.permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    keys: list[str] = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for shard in range(num_shards):
            start = time.time()
            rows = []
            name = f"{shard:0{SHARD_DIGITS}d}"
            with wds.TarWriter(str(tmp / f"{name}.tar")) as tar:
                for i in range(shard * samples_per_shard, min(n, (shard + 1) * samples_per_shard)):
                    key = f"{key_prefix}{name}{i - shard * samples_per_shard:0{index_digits}d}"
                    encoded = io.BytesIO()
                    Image.fromarray(images[i]).save(encoded, format=IMAGE_FORMATS[image_format])
                    height, width = images[i].shape[:2]
                    row = {
                        "key": key,
                        "caption": samples.captions[i],
                        "status": "success",
                        "error_message": None,
                        "width": width,
                        "height": height,
                        "original_width": width,
                        "original_height": height,
                        **({"label": int(samples.labels[i])} if samples.labels[i] >= 0 else {}),
                        **(metadata[i] if metadata is not None else {}),
                    }
                    tar.write(
                        {
                            "__key__": key,
                            image_format: encoded.getvalue(),
                            "txt": samples.captions[i],
                            "json": row,
                        }
                    )
                    rows.append(row)
                    keys.append(key)
            pd.DataFrame(rows).to_parquet(tmp / f"{name}.parquet", index=False)
            stats = {
                "count": len(rows),
                "successes": len(rows),
                "failed_to_download": 0,
                "failed_to_resize": 0,
                "duration": time.time() - start,
                "status_dict": {"success": len(rows)},
            }
            (tmp / f"{name}_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return ShardSet(brace_url(out_dir, num_shards), num_shards, keys)


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
    sample: dict, image_size: int | None, label_key: str | None
) -> tuple[np.ndarray, str, str | None]:
    """(image uint8 [H, W, 3], caption, label cell) of a raw sample; raises ValueError with the fault.

    The label cell is the JSON's ``label_key`` value as text (an index or a class name, as
    img2dataset's ``--save_additional_columns`` stores it), ``None`` without one; the JSON is not
    read at all when ``label_key`` is ``None`` (poisoning and training need no labels)."""
    caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    if not caption:
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
    return image, caption, label


def read_shard_dataset(
    urls: str | Sequence[str],
    image_size: int | None = None,
    keys: set[str] | None = None,
    progress: bool = True,
    label_key: str | None = "label",
    classnames: Sequence[str] | None = None,
    classnames_source: str = "the class names",
) -> ImageTextDataset:
    """Decode shards into memory, in shard order (or only the samples whose key is in ``keys``).

    Faults are skipped and listed in ``dataset.skipped`` as ``(sample key or shard URL, reason)``:
    undecodable or truncated images, samples without caption or image, unreadable shards, and
    requested ``keys`` that are not in the shards. A warning reports the count. The ``label_key``
    of each sample's JSON (an index or a class name; ``None``: labels ignored) is resolved as in
    ``read_csv_dataset``. Without ``image_size`` all images must already share one size.
    """
    shard_urls = expand_urls(urls)
    wanted = None if keys is None else (lambda fname: _member_key(fname) in keys)
    out_keys, arrays, captions, cells = [], [], [], []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    bar = progress_bar(shard_urls, desc="reading shards", unit="shard", disable=not progress)
    for url in bar:
        for sample in _iter_shard(url, skipped, wanted):
            key = sample["__key__"]
            seen.add(key)
            try:
                array, caption, label = _decode(sample, image_size, label_key)
            except ValueError as err:
                skipped.append((key, f"{err} (in {Path(url).name})"))
                continue
            if arrays and array.shape != arrays[0].shape:
                raise UsageError(
                    f"{key}: image shape {array.shape} differs from {arrays[0].shape}: images of "
                    "several sizes need a size to resize them to (the model's input size: --image-size, "
                    "or image_size in Python)"
                )
            out_keys.append(key)
            arrays.append(array)
            captions.append(caption)
            cells.append(label)
    if keys is not None:
        skipped += [(key, "not found in the shards") for key in sorted(keys - seen)]
    if skipped:
        warnings.warn(
            f"{' '.join([urls] if isinstance(urls, str) else urls)}: skipped {len(skipped)} "
            f"(first: {skipped[0][0]}: {skipped[0][1]})",
            stacklevel=2,
        )
    if not out_keys:
        if keys is not None:  # every requested sample failed: the caller decides what that means
            empty = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
            return ImageTextDataset([], empty, [], torch.empty(0, dtype=torch.long), skipped)
        raise UsageError(f"{urls}: no readable samples")
    where = " ".join([urls] if isinstance(urls, str) else urls)
    labels, names = resolve_labels(cells, out_keys, where, classnames, classnames_source)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageTextDataset(out_keys, images, captions, labels, skipped, names)


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
    for index, url in enumerate(bar):
        parquet = Path(url).with_suffix(".parquet")
        if not Path(url).is_file():  # its parquet alone would count samples nobody can read
            skipped.append((url, "FileNotFoundError: no such shard"))
            continue
        if use_parquet and parquet.is_file():
            shard_keys, captions = _parquet_captions(parquet, skipped)
            parquet_shards += 1
        else:
            shard_keys, captions = _tar_captions(url, skipped)
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


def csv_to_shards(
    csv_path: str | Path,
    out_dir: str | Path,
    samples_per_shard: int = 10_000,
    image_format: str = "png",
    progress: bool = True,
) -> ShardSet:
    """Convert an open_clip CSV dataset (e.g. ``poisonclip data synth``'s) into img2dataset shards.

    Each sample's JSON keeps its CSV image path as ``url`` and its label when known.
    """
    from poisonclip.data.dataset import read_csv_dataset

    dataset = read_csv_dataset(csv_path, progress=progress)
    metadata = [{"url": key} for key in dataset.keys]
    return write_shards(out_dir, dataset, samples_per_shard, image_format, metadata)
