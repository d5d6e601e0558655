"""Reports and figures, read from results on disk. Importing this package registers every figure."""

from poisonclip.experiments.demo import plot_similarity_histograms  # drawn by the demo; kept importable here
from poisonclip.report import (  # noqa: F401  (each registers its figures)
    backdoor_figures,
    defense_figures,
    scale_figures,
    similarity_figures,
    targeted_figures,
    trigger_figures,
)

__all__ = ["plot_similarity_histograms"]
