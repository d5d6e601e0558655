"""Writing shards in img2dataset's layout (``--output_format webdataset``)::

00000.tar          KEY.jpg|png|webp (image), KEY.txt (caption), KEY.json (metadata)
00000.parquet      one row per sample: key, caption, status, width, height, ...
00000_stats.json   counts for the shard
00001.tar ...
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image

from poisonclip.data.dataset import ImageTextDataset, read_csv_dataset
from poisonclip.data.io import atomic_path
from poisonclip.data.shard_urls import SHARD_DIGITS, brace_url
from poisonclip.errors import UsageError

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}


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
    dataset = read_csv_dataset(csv_path, progress=progress)
    metadata = [{"url": key} for key in dataset.keys]
    return write_shards(out_dir, dataset, samples_per_shard, image_format, metadata)
