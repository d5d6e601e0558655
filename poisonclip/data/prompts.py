"""Prompt text for zero-shot classification: template sets and class names (no model involved).

Attacks build poison captions from the same templates the evaluation classifies with (the paper's
second caption method), so they live here, below both. open_clip's 80 ImageNet templates and 1,000
class names are reused, not re-typed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from poisonclip.errors import UsageError

__all__ = [
    "IMAGENET_CLASSNAMES",
    "SYNTHETIC_TEMPLATES",
    "TEMPLATE_SETS",
    "check_templates",
    "resolve_templates",
]

# Prompts for the synthetic shapes. Unlike the training captions they never name a colour, as
# CLIP's ImageNet prompts never describe the photo's content beyond the class.
SYNTHETIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "a {} shape.",
    "an image of a {}.",
    "a picture of the {}.",
    "a small {}.",
    "a large {}.",
    "a {} icon.",
    "clip art of a {}.",
    "a {} on a dark background.",
)

TEMPLATE_SETS: dict[str, Sequence[str | Callable[[str], str]]] = {
    "synthetic": SYNTHETIC_TEMPLATES,
    "openai": OPENAI_IMAGENET_TEMPLATES,  # CLIP's 80 ImageNet prompts
}


def resolve_templates(spec: str) -> Sequence[str | Callable[[str], str]]:
    """Prompt templates from a set name (``TEMPLATE_SETS``) or a file: one template per line with
    ``{}`` for the class name (CLIP_benchmark's convention; blank lines ignored)."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"unknown template set {spec!r}: not one of {sorted(TEMPLATE_SETS)} nor a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read templates file {spec}: {err}") from err
    templates = [line.strip() for line in lines if line.strip()]
    if not templates:
        raise UsageError(f"templates file {spec} holds no template")
    for number, template in enumerate(templates, 1):
        try:
            ok = "{}" in template and template.format("x") != template
        except (IndexError, KeyError, ValueError):  # other braces: str.format cannot fill them
            ok = False
        if not ok:
            raise UsageError(
                f"templates file {spec}: template {number} ({template!r}) needs exactly the field {{}} "
                "for the class name"
            )
    return templates


def check_templates(name: str, spec: str) -> None:
    """A parameter ``name`` naming prompts must be a template set or a readable templates file."""
    try:
        resolve_templates(spec)
    except UsageError as err:
        raise UsageError(f"{name}: {err}") from err
