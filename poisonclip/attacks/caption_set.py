"""The caption set of a targeted attack (paper §3.1): captions for label y′ built from y′ alone.

* ``search``: training captions that contain y′ (the paper's naive method: reads captions only, and
  keeps the misleading matches — "basketball hoop" — it finds);
* ``templates``: the zero-shot prompt templates formatted with y′ (the paper's second method, which
  assumes knowledge of the 80 OpenAI prompts);
* ``both``: half of the poisons from each.

Either pool is subsampled without replacement, or repeated as evenly as possible, to reach the
requested poison count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from poisonclip.attacks.targeted_spec import CAPTION_SOURCES
from poisonclip.data.captions import search_captions
from poisonclip.data.prompts import resolve_templates
from poisonclip.errors import UsageError


class CaptionPool(Protocol):
    """Where the ``search`` captions come from: an ``ImageTextDataset``, or a shard scan's matches."""

    keys: Sequence[str]
    captions: Sequence[str]


@dataclass(frozen=True)
class ScannedCaptions:
    """The captions of a shard scan that matched the label, with their sample keys."""

    keys: Sequence[str]
    captions: Sequence[str]


@dataclass(frozen=True)
class CaptionChoice:
    """One caption of the caption set and where it came from."""

    text: str
    source: str  # "search" or "template"
    ref: str  # the training sample's key, or "<template set>#<template index>"


def format_templates(template_set: str, label: str) -> list[str]:
    """The prompts of ``template_set`` (a ``TEMPLATE_SETS`` name or a templates file) with ``label``
    filled in.

    The "openai" set holds open_clip's callables, "synthetic" and files hold format strings.
    """
    templates: Sequence[str | Callable[[str], str]] = resolve_templates(template_set)
    return [t(label) if callable(t) else t.format(label) for t in templates]


def subset_or_repeat(pool_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` indices int64 into a pool of ``pool_size``: a random subset if the pool is large
    enough, else whole shuffled passes over the pool plus a random subset, so that every entry is
    used ⌊count / pool_size⌋ or ⌈count / pool_size⌉ times (the paper's "subset or repeat")."""
    passes = -(-count // pool_size)
    return torch.cat([torch.randperm(pool_size, generator=generator) for _ in range(passes)])[:count]


def check_caption_request(source: str, count: int, template_set: str) -> None:
    """The checks of ``build_caption_set`` that need no captions (run before a long scan)."""
    if source not in CAPTION_SOURCES:
        raise UsageError(f"caption source must be one of {CAPTION_SOURCES}, got {source!r}")
    if count < 1:
        raise UsageError(f"poison count must be at least 1, got {count}")
    if source != "search":
        resolve_templates(template_set)


def build_caption_set(
    dataset: CaptionPool,
    label: str,
    count: int,
    source: str,
    generator: torch.Generator,
    template_set: str = "openai",
    word_boundary: bool = True,
) -> list[CaptionChoice]:
    """``count`` captions for label ``label`` from ``source`` (search, templates or both; see module).

    With ``both``, ⌈count/2⌉ come from the templates and the rest from the search.
    """
    check_caption_request(source, count, template_set)
    num_templates = {"search": 0, "templates": count, "both": -(-count // 2)}[source]
    chosen = []
    if num_templates:
        prompts = format_templates(template_set, label)
        for i in subset_or_repeat(len(prompts), num_templates, generator).tolist():
            chosen.append(CaptionChoice(prompts[i], "template", f"{template_set}#{i}"))
    if source != "templates":
        hits = search_captions(dataset.captions, label, word_boundary=word_boundary)
        if not hits:
            raise UsageError(
                f"target label {label!r} appears in no training caption; "
                "use the templates caption source instead"
            )
        num_search = count - num_templates  # 0 for "both" with a single poison
        if num_search:
            for i in subset_or_repeat(len(hits), num_search, generator).tolist():
                chosen.append(CaptionChoice(dataset.captions[hits[i]], "search", dataset.keys[hits[i]]))
    return chosen
