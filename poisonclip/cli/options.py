"""Options that several commands share, and their translation into the library's values.

Only light modules are imported here (no torch): every parser is built for ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from poisonclip.attacks.triggers.options import add_trigger_options
from poisonclip.data.csv_format import DEFAULT_CSV, CsvFormat
from poisonclip.train.config import OPTIMIZERS, PRECISIONS, TrainConfig, load_preset

DEFAULT_DB = "results/sweeps.sqlite"

PRETRAINED_HELP = (
    "start from these weights of --model: an open_clip pretrained tag (open_clip downloads it, e.g. "
    "--model ViT-B-32 --pretrained laion2b_s34b_b79k) or a local file (open_clip_train's epoch_N.pt, a "
    "state dict .pt/.bin, .safetensors; loaded weights-only)"
)


def command(
    sub: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    help: str,
) -> argparse.ArgumentParser:
    """The parser of command ``name``, which ``main`` answers with ``run(args)`` (its exit code);
    ``help`` sums it up in the list of commands, ``run``'s docstring describes it in its ``--help``."""
    p = sub.add_parser(name, help=help, description=run.__doc__)
    p.set_defaults(run=run)
    return p


def group(
    sub: argparse._SubParsersAction, name: str, help: str, dest: str, metavar: str
) -> argparse._SubParsersAction:
    """A command whose subcommands (``command(group(...), ...)``) do the work: ``poisonclip data synth``."""
    return sub.add_parser(name, help=help).add_subparsers(dest=dest, required=True, metavar=metavar)


def add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults come from --preset)")
    g.add_argument("--preset", default="demo", help="named preset (demo, paper, tiny) or a JSON file")
    g.add_argument("--model", help="model config: ours (poisonclip list models), open_clip name, or JSON")
    g.add_argument("--epochs", type=int, help="passes over the training set")
    g.add_argument("--batch-size", type=int, help="global batch size (last partial batch dropped)")
    g.add_argument("--lr", type=float, help="peak learning rate after warm-up")
    g.add_argument("--weight-decay", type=float, help="decoupled weight decay (not on gains/biases)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="AdamW, or momentum SGD (paper)")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--warmup-fraction", type=float, help="fraction of steps of linear warm-up")
    g.add_argument("--train-seed", type=int, help="model initialisation and data order")
    g.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the forward pass and loss (meant for long runs on GPUs, not timed here; "
        "the first steps pay for compiling)",
    )
    g.add_argument(
        "--data-on-device",
        action=argparse.BooleanOptionalAction,
        help="copy the whole (uint8) training set to the device once (default), or keep it in CPU "
        "memory and copy each batch from pinned memory (--no-data-on-device, for sets larger than "
        "the GPU's memory)",
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The preset with the training options given (``add_train_options``, and ``--pretrained``)."""
    return load_preset(args.preset).replace(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        momentum=args.momentum,
        warmup_fraction=args.warmup_fraction,
        seed=args.train_seed,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        data_on_device=args.data_on_device,
        pretrained=getattr(args, "pretrained", None),
    )


def add_overwrite(p: argparse.ArgumentParser, **outputs: bool) -> None:
    """Declare the command's outputs (option dest -> written as a directory?) and ``--overwrite``.

    ``main`` checks every declared output before the command runs (``check_output``)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output; of directories only a previous poisonclip output (a file "
        "output: any file), never one holding an input of this command, the working directory or "
        "the home directory",
    )
    p.set_defaults(outputs=outputs)


def add_out_dir(
    p: argparse.ArgumentParser, help: str = "output directory", default: str | None = None
) -> None:
    """``--out``: the directory the command writes (required unless it has a ``default``); and
    ``--overwrite``."""
    p.add_argument("--out", required=default is None, default=default, help=help)
    add_overwrite(p, out=True)


def add_no_progress(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    p.add_argument("--no-progress", action="store_true", help=help)


def add_local_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="local processes (default: one single-thread worker a core)")
    p.add_argument("--data-root", help="synthetic-data cache (default: data/ beside the database)")


def add_backdoor_options(
    p: argparse.ArgumentParser,
    label_default: str | None = None,
    label_help: str = "the label the trigger should cause: a class name of your data, which the poisons' "
    "captions are searched for (required)",
    label_required: bool = False,
    trigger_from: bool = False,
) -> None:
    """``--target-label`` and the trigger's options (``--trigger`` and its parameters, read back by
    ``attacks.triggers.options.trigger_from_args``); with ``trigger_from`` also ``--trigger-from``."""
    p.add_argument("--target-label", default=label_default, required=label_required, help=label_help)
    add_trigger_options(p, from_poison_set=trigger_from)


def add_csv_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--csv-separator", default=DEFAULT_CSV.separator, help="CSV separator (open_clip default: tab)"
    )
    p.add_argument("--image-column", default=DEFAULT_CSV.image_column, help="CSV column with image paths")
    p.add_argument("--caption-column", default=DEFAULT_CSV.caption_column, help="CSV column with captions")
    p.add_argument(
        "--label-column",
        default=DEFAULT_CSV.label_column,
        help="CSV column (or shard JSON field) with each sample's class, as an index or a class "
        "name; read by evaluation splits only (poisoning and training ignore labels)",
    )


def csv_format(args: argparse.Namespace) -> CsvFormat:
    """The CSV layout given by ``add_csv_options``' options."""
    return CsvFormat(args.csv_separator, args.image_column, args.caption_column, args.label_column)


def progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars (``add_no_progress``)."""
    return not getattr(args, "no_progress", False)
