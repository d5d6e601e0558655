"""matplotlib for the report's figures, imported on first draw: a figure of panels, the legend's
place, and writing the PNG."""

from __future__ import annotations

from pathlib import Path

from poisonclip.data.io import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight", bbox_extra_artists=legends)
    pyplot().close(fig)


def place_legend(ax) -> None:
    """Inside the axes when short; to the right of them when it would cover the data."""
    if len(ax.get_legend_handles_labels()[1]) <= 4:
        ax.legend(fontsize=7)
    else:
        # Outside the layout, so the axes keep their size; save_figure widens the image to include it.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)).set_in_layout(False)


def subplots(count: int, width: float, height: float, columns: int = 4):
    """A figure with ``count`` panels, at most ``columns`` a row: (figure, list of axes)."""
    plt = pyplot()
    ncols = min(count, columns)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=True
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]
