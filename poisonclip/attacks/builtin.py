"""The attack registry with every built-in attack in it: each registers itself when its module is
imported, and the package's names load lazily, so ``list_attacks`` and ``get_attack`` come from here."""

from poisonclip.attacks import backdoor, targeted  # noqa: F401  (registers the attacks)
from poisonclip.attacks.registry import get_attack, list_attacks

__all__ = ["get_attack", "list_attacks"]
