"""The targeted attack's poison options, declared once (torch-free: the CLI builds ``--help`` from them).

``TargetedOptions`` holds how the poisons of one target are built: where their captions come from,
the dedup evasion, how captions are searched. Every consumer derives from it rather than re-typing
the options: ``make_targeted``, ``make_targeted_from_shards``, ``make_targeted_many`` and
``poison_targets`` take one; ``poisonclip poison targeted`` gets its options from
``add_targeted_options``; the sweep's ``[targeted]`` keys and the defense matrix's ``[defense]``
keys are its fields (their parameter classes inherit from it).

Each field's metadata holds its ``help``, its ``choices`` (if a fixed set), and its command-line
``flag`` where that is not ``--field-name`` (a boolean whose default is True becomes a flag that
turns it off: ``--substring`` sets ``word_boundary`` to False).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from poisonclip.errors import UsageError

CAPTION_SOURCES: tuple[str, ...] = ("search", "templates", "both")
# std 1.0 on 8-bit pixels: MSE ≈ 1.1 after rounding, PSNR ≈ 48 dB (40 dB would need std ≈ 2.5),
# yet with ≥ 192 pixels two copies coincide with negligible probability.
DEFAULT_NOISE_STD = 1.0


@dataclass(frozen=True)
class TargetedOptions:
    """How the poisons of a targeted attack are built (see the module docstring)."""

    captions: str = field(
        default="search",
        metadata={
            "choices": CAPTION_SOURCES,
            "help": "caption set: training captions containing y' (search), prompt templates "
            "formatted with y' (templates), or half of each (both); subsampled or repeated to the "
            "poison count",
        },
    )
    noise_std: float = field(
        default=DEFAULT_NOISE_STD,
        metadata={
            "help": "dedup evasion: Gaussian pixel noise per copy, in 8-bit levels, so no two copies "
            "are identical (default 1.0: PSNR about 48 dB; 0 = exact copies)"
        },
    )
    perturb_captions: bool = field(
        default=False,
        metadata={
            "help": "dedup evasion: synonym substitution and an inserted irrelevant word in each "
            "caption (the label is never touched)"
        },
    )
    template_set: str = field(
        default="openai",
        metadata={
            "flag": "--templates",
            "metavar": "SET_OR_FILE",
            "help": "prompt set for templates: openai (CLIP's 80, the default), synthetic (the "
            "synthetic shapes' prompts), or a file with one template per line, {} standing for y'",
        },
    )
    word_boundary: bool = field(
        default=True,
        metadata={
            "flag": "--substring",
            "help": "plain substring caption search (default: the label as a whole word)",
        },
    )

    def __post_init__(self) -> None:
        if self.captions not in CAPTION_SOURCES:
            raise UsageError(f"captions must be one of {CAPTION_SOURCES}, got {self.captions!r}")
        if isinstance(self.noise_std, int) and not isinstance(self.noise_std, bool):
            object.__setattr__(self, "noise_std", float(self.noise_std))  # 1 and 1.0: one option
        if not isinstance(self.noise_std, float):
            raise UsageError(f"noise_std must be a number, got {self.noise_std!r}")
        if not math.isfinite(self.noise_std) or self.noise_std < 0:
            raise UsageError(f"noise_std must be a finite number >= 0, got {self.noise_std}")
        for name in ("perturb_captions", "word_boundary"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false, got {getattr(self, name)!r}")
        from poisonclip.data.prompts import check_templates  # loads open_clip's templates

        check_templates("template_set", self.template_set)

    def options(self) -> TargetedOptions:
        """These options alone (from a parameter class that inherits them)."""
        return TargetedOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TargetedOptions)})


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def add_targeted_options(parser: argparse._ActionsContainer, only: tuple[str, ...] | None = None) -> None:
    """One option per ``TargetedOptions`` field (or per field named in ``only``), each defaulting to
    the field's default; ``targeted_options_from_args`` reads them back."""
    for f in dataclasses.fields(TargetedOptions):
        if only is not None and f.name not in only:
            continue
        help = f.metadata["help"].replace("%", "%%")
        if f.type in ("bool", bool):
            action = "store_false" if f.default else "store_true"
            parser.add_argument(_flag(f), dest=f.name, action=action, help=help)
        else:
            kind = {"str": str, "float": float, "int": int}[f.type]
            choices = f.metadata.get("choices")
            parser.add_argument(
                _flag(f), dest=f.name, type=kind, default=f.default, choices=choices,
                metavar=f.metadata.get("metavar"), help=help,
            )  # fmt: skip


def targeted_options_from_args(args: argparse.Namespace) -> TargetedOptions:
    """The options ``add_targeted_options`` parsed (an error names the option, not the field)."""
    fields = dataclasses.fields(TargetedOptions)
    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields}
    try:
        return TargetedOptions(**values)
    except UsageError as err:
        message = str(err)
        for f in fields:
            if message.startswith(f.name):
                message = _flag(f) + message[len(f.name) :]
        raise UsageError(message) from err
