"""The ``poisonclip`` command line: one module a command, each only parsing, calling the library
and printing.

Every subcommand is ``main([...])``-callable from tests. Bad input (a ``UsageError``, or an
argparse error) prints one line and exits with code 2; outputs are written atomically, so a
failed command leaves nothing half-written. Building the parser imports no torch: each command
imports the library when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from poisonclip.cli import data, defend, demo, detect, evaluate, listing, poison, report, sweep, train
from poisonclip.data.csv_format import check_separator
from poisonclip.errors import UsageError

EXIT_USAGE = 2

# In the order of ``poisonclip --help``; report adds ``report`` and ``reproduce``.
COMMANDS = (demo, data, poison, train, detect, defend, evaluate, sweep, report, listing)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poisonclip",
        description="Poison and backdoor CLIP-style models and measure the attacks "
        "(Carlini & Terzis, ICLR 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


# Options naming a command's inputs: an output replaced with --overwrite must not hold any of them.
INPUT_OPTIONS = (
    "data",
    "checkpoint",
    "test",
    "imagefolder",
    "classnames",
    "probe_train",
    "target_image",
    "target_split",
    "manifest",
    "loss_record",
    "init_checkpoint",
    "pretrained",
    "clean_data",
    "db",
)


def _check_outputs(args: argparse.Namespace) -> list[str]:
    """Refuse bad output paths before any work (see ``check_output``); the outputs given."""
    from poisonclip.data.io import check_output

    inputs = []
    for dest in INPUT_OPTIONS:
        values = getattr(args, dest, None) or ()
        for value in [values] if isinstance(values, str) else values:
            # shard URLs ('dir/{00000..00009}.tar', 'a::b'): the directory before the brace
            inputs += [
                os.path.dirname(part.split("{")[0]) if "{" in part else part for part in value.split("::")
            ]
    if getattr(args, "dry_run", False):  # train --dry-run only prints a command: it writes nothing
        return []
    outputs = []
    for dest, directory in getattr(args, "outputs", {}).items():
        if (path := getattr(args, dest)) is not None:
            name = f"--{dest.replace('_', '-')}"
            check_output(path, overwrite=args.overwrite, inputs=inputs, directory=directory, name=name)
            outputs.append(path)
    return outputs


# Options that several commands share, with their smallest sensible value: checked before any work.
MINIMUMS = {"image_size": 1, "k": 1, "lid_k": 2}  # LID from a single neighbour is constant


def _check_shared_options(args: argparse.Namespace) -> None:
    if (sep := getattr(args, "csv_separator", None)) is not None:
        check_separator(sep, "--csv-separator")
    label = getattr(args, "target_label", None)
    if label is not None and not label.strip():
        raise UsageError("--target-label is empty")
    for dest, least in MINIMUMS.items():
        if (value := getattr(args, dest, None)) is not None and value < least:
            raise UsageError(f"--{dest.replace('_', '-')} must be at least {least}, got {value}")


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings printed as one line each, as errors are: no source file, line number or code line.
    (warnings.catch_warnings does not restore formatwarning; recording warnings is unaffected.)"""
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"poisonclip: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    from poisonclip.data.io import overwrite_allowed

    args = build_parser().parse_args(argv)
    try:
        _check_shared_options(args)
        outputs = _check_outputs(args)
        with _one_line_warnings(), overwrite_allowed(outputs if getattr(args, "overwrite", False) else ()):
            return args.run(args)
    except UsageError as err:
        print(f"poisonclip: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader left (`poisonclip list triggers | head -1`): no traceback, and stdout pointed at
        # devnull so that the interpreter's flush at exit does not raise again (Python's docs' recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
