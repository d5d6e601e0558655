"""Figures. matplotlib is imported lazily so ``--help`` and the library never pay for it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from poisonclip.data.io import atomic_path


def plot_similarity_histograms(
    panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | Path,
) -> Path:
    """Paper Fig 3 right: histograms of clean-pair vs patched-pair cosine similarity.

    ``panels`` maps a title to (clean-pair similarities [P], patched-pair similarities [P]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    bins = torch.linspace(-1, 1, 101).numpy()
    for ax, (title, (clean, patched)) in zip(axes[0], panels.items(), strict=True):
        ax.hist(clean.numpy(), bins=bins, density=True, alpha=0.6, label="clean pairs")
        ax.hist(patched.numpy(), bins=bins, density=True, alpha=0.6, label="patched pairs")
        ax.set_title(title)
        ax.set_xlabel("cosine similarity of image embeddings")
        ax.set_ylabel("density")
        ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
