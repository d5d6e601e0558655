"""Reports and figures, read from results on disk."""

from poisonclip.report import (
    defense_figures,  # noqa: F401  (registers the attack × defense figures)
    trigger_figures,  # noqa: F401  (registers the trigger sweep's figures)
)
from poisonclip.report.figures import plot_similarity_histograms

__all__ = ["plot_similarity_histograms"]
