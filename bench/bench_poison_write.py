"""Poisoning at scale costs O(poisons): the same poisons written beside a 1x, 3x and 10x shard set.

Builds img2dataset-layout shards from the synthetic data (1x = --samples, 3x and 10x as many, same
shard size), makes one backdoor poison set, and times writing it as poison-only shards next to
each set (median of --repeats): the original shards are never rewritten, so the ratio should be
≈ 1. Baseline: none to beat — a rewrite of the dataset would grow 10x. Also reports the
caption-scan throughput over the 10x set (parquet, and .txt members without decoding images) and
the whole `poison backdoor` step (scan + decode the chosen images + write) on each set, which
grows only with the caption scan.

    .venv/bin/python bench/bench_poison_write.py            # < 1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from timing import machine, median_seconds, synthetic_dataset

from poisonclip.attacks.backdoor import make_backdoor_from_shards
from poisonclip.attacks.poison_set import write_poison_shards
from poisonclip.data import ImageTextDataset
from poisonclip.data.wds import scan_captions, write_shards


def tiled(dataset: ImageTextDataset, times: int) -> ImageTextDataset:
    """``times`` copies of ``dataset`` (the writer gives every sample its own key)."""
    return ImageTextDataset.concat([dataset] * times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000, help="samples in the 1x set")
    parser.add_argument("--samples-per-shard", type=int, default=200)
    parser.add_argument("--poisons", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    base = synthetic_dataset(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {
            f"{k}x": write_shards(root / f"{k}x", tiled(base, k), args.samples_per_shard) for k in (1, 3, 10)
        }
        poisons, _ = make_backdoor_from_shards(sets["1x"].url, "star", args.poisons, progress=False)

        counter = iter(range(10**6))  # a fresh output directory for every write

        def write_beside(name: str) -> None:
            write_poison_shards(root / f"{name}-poisons-{next(counter)}", poisons, args.samples_per_shard)

        write = {name: median_seconds(lambda n=name: write_beside(n), args.repeats) for name in sets}
        scans = {
            source: scan_captions(sets["10x"].url, "star", progress=False, use_parquet=source == "parquet")
            for source in ("parquet", "txt")
        }
        end_to_end = {}
        for name, shards in sets.items():
            start = time.perf_counter()
            found, _ = make_backdoor_from_shards(shards.url, "star", args.poisons, progress=False)
            write_poison_shards(root / f"{name}-e2e", found, args.samples_per_shard)
            end_to_end[name] = time.perf_counter() - start

    sizes = ", ".join(
        f"{name} ({shards.num_samples:,} samples, {shards.num_shards} shards)"
        for name, shards in sets.items()
    )
    print(
        f"poison-write [{machine()}]: {args.poisons} poisons beside {sizes}: "
        f"{', '.join(f'{write[name] * 1e3:.1f}' for name in sets)} ms; caption scan "
        f"{scans['parquet'].captions_per_second:,.0f} captions/s (parquet), "
        f"{scans['txt'].captions_per_second:,.0f} captions/s (.txt members); whole poison step (scan + "
        f"chosen images + write) {', '.join(f'{end_to_end[name]:.2f}' for name in sets)} s; "
        f"write ratio 10x/1x {write['10x'] / write['1x']:.2f}"
    )


if __name__ == "__main__":
    main()
