"""Poison sets from the data a user names and back to disk: the steps around an attack.

The data is a CSV (decoded into memory) or webdataset shards (captions scanned, only the chosen
images decoded); the poison set is written as ``poisons.csv`` + PNGs, or as shards to join the
original ones, with the sources to train on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poisonclip.attacks.backdoor import make_backdoor, make_backdoor_from_shards
from poisonclip.attacks.poison_set import PoisonSet, write_poison_set, write_poison_shards
from poisonclip.attacks.targeted import Target, make_targeted, make_targeted_from_shards
from poisonclip.attacks.targeted_spec import TargetedOptions
from poisonclip.attacks.targets import TargetSource, load_target
from poisonclip.data.csv_format import DEFAULT_CSV, CsvFormat
from poisonclip.data.dataset import ImageTextDataset
from poisonclip.data.manifest import POISON_CSV_NAME
from poisonclip.data.reading import read_data
from poisonclip.data.shard_urls import is_shard_url, shard_ranges
from poisonclip.errors import UsageError

if TYPE_CHECKING:
    from poisonclip.data.wds import CaptionScan


@dataclass(frozen=True)
class BuiltPoisons:
    """A poison set and the data it was built from."""

    poisons: PoisonSet
    num_clean: int  # the training pairs the poisons join
    faults: list[tuple[str, str]]  # (sample key or shard, reason) skipped on the way, never fatal
    scan: CaptionScan | None = None  # shards: their caption scan; None for a CSV

    @property
    def poison_rate(self) -> float:
        """The poisons' share of the poisoned training set."""
        return len(self.poisons) / (self.num_clean + len(self.poisons))


@dataclass(frozen=True)
class WrittenPoisons:
    """Where a poison set went, and the sources that train on the data with the poisons."""

    location: str  # the poison set's directory
    train_data: list[str]  # CSVs or shard patterns, in order: the clean data, then the poisons


def poison_output_format(data: str, output_format: str | None, merged_csv: str | None) -> str:
    """The output format (``csv`` or ``wds``): ``output_format``, or by default the kind of ``data``
    (shards or a CSV), after checking that the two fit together."""
    shards = is_shard_url(data)
    output_format = output_format or ("wds" if shards else "csv")
    if output_format == "wds" and not shards:
        raise UsageError("--format wds needs shards as --data: open_clip_train cannot join a CSV and shards")
    if merged_csv and (shards or output_format != "csv"):
        raise UsageError("--merged-csv needs a CSV as --data and --format csv")
    return output_format


def _build(
    data: str,
    image_size: int | None,
    csv: CsvFormat,
    progress: bool,
    from_shards: Callable[[], tuple[PoisonSet, CaptionScan]],
    from_dataset: Callable[[ImageTextDataset], PoisonSet],
) -> BuiltPoisons:
    if is_shard_url(data):
        poisons, scan = from_shards()
        return BuiltPoisons(poisons, len(scan), scan.skipped + poisons.samples.skipped, scan)
    dataset = read_data(data, image_size, csv, progress=progress)
    return BuiltPoisons(from_dataset(dataset), len(dataset), dataset.skipped)


def backdoor_from_data(
    data: str, image_size: int | None, csv: CsvFormat = DEFAULT_CSV, progress: bool = True, **attack: Any
) -> BuiltPoisons:
    """``make_backdoor`` (its keyword arguments: ``attack``) on a CSV or shards, source images
    resized and centre-cropped to ``image_size`` when given."""
    return _build(
        data,
        image_size,
        csv,
        progress,
        lambda: make_backdoor_from_shards(data, **attack, image_size=image_size, progress=progress),
        lambda dataset: make_backdoor(dataset, **attack),
    )


def targeted_from_data(
    data: str,
    source: TargetSource,
    poison_count: int,
    seed: int = 0,
    options: TargetedOptions | None = None,
    image_size: int | None = None,
    csv: CsvFormat = DEFAULT_CSV,
    progress: bool = True,
) -> tuple[BuiltPoisons, Target]:
    """``make_targeted`` on a CSV or shards, and the x′ it copies: resized to ``image_size``, or for
    a CSV without it to the CSV's image size."""
    targets: list[Target] = []

    def from_shards() -> tuple[PoisonSet, CaptionScan]:
        targets.append(load_target(source, image_size, csv, progress))
        return make_targeted_from_shards(data, targets[0], poison_count, seed, options, image_size, progress)

    def from_dataset(dataset: ImageTextDataset) -> PoisonSet:
        targets.append(load_target(source, dataset.images.shape[-1], csv, progress))
        return make_targeted(dataset, targets[0], poison_count, seed, options)

    return _build(data, image_size, csv, progress, from_shards, from_dataset), targets[0]


def write_poisons(
    out: str,
    built: BuiltPoisons,
    output_format: str,
    data: str,
    merged_csv: str | None = None,
    samples_per_shard: int = 10_000,
    image_format: str = "png",
) -> WrittenPoisons:
    """Write ``built`` to ``out`` in ``output_format`` (``csv`` or ``wds``). Shards are trained on
    with ``data``'s shards that exist (a missing one was reported by the scan); a CSV poison set
    with ``data``, or alone when both go into ``merged_csv`` (written by ``write_merged_csv``)."""
    if output_format == "wds":
        written = write_poison_shards(out, built.poisons, samples_per_shard, image_format)
        existing = [url for url in built.scan.urls if Path(url).is_file()] if built.scan else []
        return WrittenPoisons(out, shard_ranges(existing) + [written.url])
    location = write_poison_set(out, built.poisons)
    train_data = [merged_csv] if merged_csv else [data, str(location / POISON_CSV_NAME)]
    return WrittenPoisons(str(location), train_data)
