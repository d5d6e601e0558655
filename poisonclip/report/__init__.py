"""Reports and figures, read from results on disk."""

from poisonclip.experiments.demo import plot_similarity_histograms  # drawn by the demo; kept importable here
from poisonclip.report import (
    defense_figures,  # noqa: F401  (registers the attack × defense figures)
    trigger_figures,  # noqa: F401  (registers the trigger sweep's figures)
)

__all__ = ["plot_similarity_histograms"]
