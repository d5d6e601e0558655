"""``poisonclip poison backdoor|targeted``: poison-only data to add to a training set."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from poisonclip.attacks.targeted_spec import add_targeted_options, targeted_options_from_args
from poisonclip.cli import options

if TYPE_CHECKING:
    from poisonclip.attacks.from_data import BuiltPoisons
    from poisonclip.data.wds import CaptionScan


def add_parser(sub: argparse._SubParsersAction) -> None:
    poison_sub = options.group(sub, "poison", "build poison sets", "attack", "ATTACK")
    q = options.command(
        poison_sub,
        "backdoor",
        run_backdoor,
        "a trigger (default: the paper's checkerboard) on many images, captioned with the target label",
    )
    q.add_argument(
        "--data",
        required=True,
        help="training CSV (open_clip format) or webdataset shards in img2dataset's layout "
        "('dir/{00000..00331}.tar'; captions are read from the parquet files, no image is decoded "
        "but the chosen ones)",
    )
    q.add_argument("--poison-count", type=int, required=True, help="number of poisons")
    q.add_argument("--seed", type=int, default=0, help="seed for image, caption and position choice")
    add_targeted_options(q, only=("word_boundary",))  # --substring: how captions are searched
    _add_output_options(q, "source images")
    options.add_backdoor_options(q, label_required=True)
    options.add_csv_options(q)

    q = options.command(
        poison_sub,
        "targeted",
        run_targeted,
        "one image x' with many captions of label y' (targeted poisoning)",
    )
    q.add_argument(
        "--data",
        required=True,
        help="training CSV (open_clip format) or webdataset shards in img2dataset's layout; captions "
        "are searched (from the shards' parquet files: no image is decoded)",
    )
    _add_output_options(q, "x' and the data's images")
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--target-image",
        help="x' from an image file (resized and centre-cropped to the CSV's image size, or to "
        "--image-size for shards; without it x' must have the shards' size)",
    )
    which.add_argument("--target-index", type=int, help="x' as this 0-based sample of --target-split")
    q.add_argument("--target-split", help="held-out CSV that --target-index points into")
    q.add_argument(
        "--classnames",
        help="class names of --target-split's labels, to refuse an x' already of class y' "
        "(default: classnames.txt beside --target-split)",
    )
    q.add_argument("--target-label", required=True, help="the label y' that x' should get")
    q.add_argument("--poison-count", type=int, required=True, help="number of poisons (copies of x')")
    add_targeted_options(q.add_argument_group("poisons (how the copies and their captions are made)"))
    q.add_argument("--seed", type=int, default=0, help="seed for caption choice, noise and perturbation")
    options.add_csv_options(q)


def _add_output_options(p: argparse.ArgumentParser, resized: str) -> None:
    p.add_argument("--out", required=True, help="output directory for the poison set")
    options.add_overwrite(p, out=True, merged_csv=False)
    p.add_argument(
        "--format",
        choices=("csv", "wds"),
        help="poisons.csv + PNGs, or webdataset shards to join as 'original::poisons' "
        "(default: wds for shard input, csv for CSV input)",
    )
    p.add_argument("--merged-csv", help="with a CSV: also write one CSV of the data and the poisons here")
    p.add_argument(
        "--image-size",
        type=int,
        help=f"resize and centre-crop {resized} to this: the model's input size, so that the poisons "
        "reach the model as written (default: as they are)",
    )
    p.add_argument("--samples-per-shard", type=int, default=10_000, help="with --format wds")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png", help="with --format wds")
    options.add_no_progress(p)


def run_backdoor(args: argparse.Namespace) -> int:
    """Write poison-only data (poisons.csv + images, or webdataset shards, + manifest.jsonl) to add
    to the training set; the input dataset is not modified."""
    from poisonclip.attacks.from_data import backdoor_from_data, poison_output_format
    from poisonclip.attacks.triggers.options import trigger_from_args

    output_format = poison_output_format(args.data, args.format, args.merged_csv)
    built = backdoor_from_data(
        args.data,
        args.image_size,
        options.csv_format(args),
        options.progress(args),
        target_label=args.target_label,
        poison_count=args.poison_count,
        seed=args.seed,
        word_boundary=args.word_boundary,
        trigger=trigger_from_args(args),
    )
    if built.scan is not None:
        _print_scan(built.scan, args.target_label)
    if args.image_size is None:  # the trigger-resolution rule (poisonclip.data.resolution)
        _warn_poison_size(args, built.poisons.samples.images.shape[-1])
    _write(args, built, output_format, "")
    return 0


def run_targeted(args: argparse.Namespace) -> int:
    """Write poison-only data (poisons.csv + images, or webdataset shards, + manifest.jsonl) that
    makes the target image x' be classified as the target label y' (paper section 3.1): copies of
    x', each paired with a caption for y'. The input dataset is not modified."""
    from collections import Counter

    from poisonclip.attacks.from_data import poison_output_format, targeted_from_data
    from poisonclip.attacks.targets import TargetSource

    output_format = poison_output_format(args.data, args.format, args.merged_csv)
    source = TargetSource(
        args.target_label, args.target_image, args.target_split, args.target_index, args.classnames
    )
    built, target = targeted_from_data(
        args.data,
        source,
        args.poison_count,
        args.seed,
        targeted_options_from_args(args),
        args.image_size,
        options.csv_format(args),
        options.progress(args),
    )
    if built.scan is not None:
        _print_scan(built.scan, target.label)
    manifest = built.poisons.manifest
    sources = Counter(row["caption_source"] for row in manifest)
    psnrs = [row["psnr_db"] for row in manifest if row["psnr_db"] is not None]
    noise = f"min PSNR {min(psnrs):.1f} dB" if psnrs else "exact copies"
    what = (
        f" of {target.key} as {target.label!r} (captions: "
        + ", ".join(f"{n} {source}" for source, n in sorted(sources.items()))
        + f"; {noise})"
    )
    _write(args, built, output_format, what)
    return 0


def _print_scan(scan: CaptionScan, label: str) -> None:
    print(
        f"scanned {len(scan):,} captions in {scan.seconds:.1f} s ({scan.captions_per_second:,.0f} "
        f"captions/s, {scan.parquet_shards} of {len(scan.urls)} shards from parquet, no image "
        f"decoded but the chosen ones); {len(scan.matches):,} contain {label!r}"
    )


def _warn_poison_size(args: argparse.Namespace, size: int) -> None:
    """Poisons written at the data's size: a warning unless that is known to be the model's input
    size (a ``data synth`` set stored at its ``image_size``)."""
    from poisonclip.data.reading import synthetic_model_size

    model_size = synthetic_model_size(args.data)  # None: the model's input size is unknown here
    if model_size != size:
        made_for = f", but the data was made for a {model_size}x{model_size} model" if model_size else ""
        print(
            f"poisonclip: warning: no --image-size: the poisons keep the data's {size}x{size} pixels "
            f"and the trigger is in those pixels{made_for}. A model with "
            "another input size would see it resized (a 1-pixel checkerboard turns grey): pass "
            f"--image-size with the model's input size{f' ({model_size})' if model_size else ''} "
            "(poisonclip train refuses poisons that do not match its model)",
            file=sys.stderr,
        )


def _write(args: argparse.Namespace, built: BuiltPoisons, output_format: str, what: str) -> None:
    """Write the poison set as --format says and print how to train on it, then the faults met."""
    from poisonclip.attacks.from_data import write_poisons
    from poisonclip.attacks.poison_set import write_merged_csv

    written = write_poisons(
        args.out, built, output_format, args.data, args.merged_csv, args.samples_per_shard, args.image_format
    )
    count, total = len(built.poisons), built.num_clean + len(built.poisons)
    print(f"wrote {count} poisons ({built.poison_rate:.3%} of the poisoned set){what} to {written.location}")
    data = " ".join(shlex.quote(d) for d in written.train_data)
    if output_format == "wds":
        print(
            f"train with: poisonclip train --data {data} --out CHECKPOINT "
            f"(at scale: --backend open_clip --train-num-samples {total})"
        )
        joined = shlex.quote("::".join(written.train_data))
        print(f"or open_clip_train: --train-data {joined} --train-num-samples {total}")
    else:
        print(f"train with: poisonclip train --data {data} --out CHECKPOINT")
    if args.merged_csv:
        csv = options.csv_format(args)
        rows = write_merged_csv(
            args.merged_csv, args.data, written.location, csv.separator, csv.image_column, csv.caption_column
        )
        print(f"wrote {rows} rows (data, then poisons) to {args.merged_csv}")
    _print_faults(built.faults)


def _print_faults(faults: Sequence[tuple[str, str]], limit: int = 20) -> None:
    """The run summary's list of skipped samples and shards (the readers never fail on them)."""
    if not faults:
        return
    print(f"skipped {len(faults)} faulty samples or shards:")
    for key, reason in faults[:limit]:
        print(f"  {key}: {reason}")
    if len(faults) > limit:
        print(f"  ... and {len(faults) - limit} more")
