"""``poisonclip data synth``: the synthetic shapes dataset as PNGs + open_clip CSVs."""

from __future__ import annotations

import argparse

from poisonclip.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    data_sub = options.group(sub, "data", "generate datasets", "data_command", "WHAT")
    q = options.command(data_sub, "synth", run, "write the synthetic shapes dataset as PNGs + open_clip CSVs")
    q.add_argument("out", help="output directory")
    options.add_overwrite(q, out=True)
    q.add_argument("--num-train", type=int, default=20_000, help="training pairs")
    q.add_argument("--num-test", type=int, default=2_000, help="labelled test images")
    q.add_argument("--image-size", type=int, default=32, help="pixels per side")
    q.add_argument(
        "--stored-size",
        type=int,
        help="store the images at this many pixels per side instead: the same scenes and captions "
        "at another resolution than the model's (data as users have it)",
    )
    q.add_argument("--num-shapes", type=int, default=20, help="number of classes (2-20)")
    q.add_argument("--seed", type=int, default=0, help="generator seed")


def run(args: argparse.Namespace) -> int:
    """Write train.csv, test.csv (both with labels), classnames.txt and images."""
    from poisonclip.data.synthetic import SyntheticConfig, write_synthetic

    config = SyntheticConfig(
        num_train=args.num_train,
        num_test=args.num_test,
        image_size=args.image_size,
        num_shapes=args.num_shapes,
        seed=args.seed,
        stored_size=args.stored_size,
    )
    root = write_synthetic(args.out, config)
    print(f"wrote {config.num_train} train / {config.num_test} test pairs to {root}")
    return 0
