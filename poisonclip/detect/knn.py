"""The k-nearest-neighbour family of detectors: k-distance, SLOF, DAO and LID (Huang et al., ICLR'25).

All four look at the local neighbourhood of each training pair in embedding space (Euclidean
distance between unit-norm embeddings, as in Huang et al.'s code); neighbours are searched among
all the other training pairs, i.e. in a large reference set that is mostly clean. With dₖ(x) the
distance from x to its k-th nearest neighbour and N(x) its k nearest neighbours:

* **k-distance**: dₖ(x). Large where the neighbourhood is sparse.
* **SLOF** (simplified local outlier factor): mean over o ∈ N(x) of dₖ(x) / dₖ(o): sparser than
  its own neighbours.
* **DAO** (dimensionality-aware outlier): mean over o ∈ N(x) of LID(o) · log(dₖ(x) / dₖ(o)) — the
  log of the geometric mean of the ratios SLOF averages, each raised to the neighbour's local
  intrinsic dimensionality (Huang et al.'s implementation of Anderberg et al., SDM'24).
* **LID**, maximum-likelihood estimate: −k / Σᵢ₌₁..ₖ log(dᵢ(x) / dₖ(x)). High where the k
  neighbours sit at similar distances (a sparse neighbourhood seen from outside); *low* for a point
  whose nearest neighbours are near-duplicates of it.

Huang et al. found backdoor poisons to have *sparser* neighbourhoods than clean pairs, so all four
flag large values. A tight cluster of poisons larger than k is the opposite geometry (small dₖ,
ratios near 1 inside it); the tests plant both and the sweep measures which one the toy shows.

Defaults k = 16 and, for LID, k = 64 (Huang et al. use 16 to 64). Neighbours are exact, found in
chunks of queries so that memory stays O(chunk · N), bounded by ``max_elements`` floats (64 MB by
default, whatever N; N ≈ 1e5 takes seconds).
"""

from __future__ import annotations

import torch

from poisonclip.detect.registry import DetectorInputs, register_detector
from poisonclip.errors import UsageError

SPACES = ("image", "text", "joint")
MIN_DISTANCE = 1e-6  # distance floor: exact duplicates must not make a log or a ratio infinite
MAX_ELEMENTS = 2**24  # float32 elements of one chunk of the query × reference distance matrix


def embeddings_in(inputs: DetectorInputs, space: str) -> torch.Tensor:
    """[N, D] (or [N, 2D] for ``joint``: image and caption side by side, unit norm)."""
    if space not in SPACES:
        raise UsageError(f"space must be one of {SPACES}, got {space!r}")
    if space == "joint":
        return torch.cat([inputs.image, inputs.text], dim=1) / 2**0.5
    return inputs.image if space == "image" else inputs.text


def nearest_neighbours(
    x: torch.Tensor, k: int, max_elements: int = MAX_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every row of ``x`` [N, D] among the *other* rows.

    Returns (distances float32 [N, k], ascending, floored at ``MIN_DISTANCE``; indices int64 [N, k]).
    """
    n = x.shape[0]
    if not 1 <= k < n:
        raise UsageError(f"k must be between 1 and {n - 1} (the other samples), got {k}")
    x = x.float()
    squared = (x * x).sum(dim=1)  # [N]
    chunk = max(1, max_elements // n)
    distances, indices = [], []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        d2 = squared[rows, None] + squared[None, :] - 2 * x[rows] @ x.T  # [c, N]
        d2[torch.arange(len(rows)), rows] = float("inf")  # a sample is not its own neighbour
        values, index = torch.topk(d2, k, dim=1, largest=False)  # sorted ascending
        distances.append(values.clamp_min(0).sqrt().clamp_min(MIN_DISTANCE))
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def lid_mle(distances: torch.Tensor) -> torch.Tensor:
    """LID [N] from ascending neighbour distances [N, k]: −k / Σᵢ log(dᵢ / dₖ)."""
    k = distances.shape[1]
    log_ratios = torch.log(distances.double() / distances[:, -1:].double())  # [N, k], all ≤ 0
    return k / (-log_ratios.sum(dim=1)).clamp_min(1e-12)  # k equal distances: LID → ∞, capped


@register_detector("k-distance")
def k_distance(inputs: DetectorInputs, k: int = 16, space: str = "image") -> torch.Tensor:
    """dₖ(x): distance to the k-th nearest other training pair."""
    distances, _ = nearest_neighbours(embeddings_in(inputs, space), k)
    return distances[:, -1].double()


@register_detector("slof")
def slof(inputs: DetectorInputs, k: int = 16, space: str = "image") -> torch.Tensor:
    """Mean over the k neighbours o of dₖ(x) / dₖ(o)."""
    distances, indices = nearest_neighbours(embeddings_in(inputs, space), k)
    k_dist = distances[:, -1].double()  # [N]
    return (k_dist[:, None] / k_dist[indices]).mean(dim=1)


@register_detector("dao")
def dao(inputs: DetectorInputs, k: int = 16, space: str = "image") -> torch.Tensor:
    """Mean over the k neighbours o of LID(o) · log(dₖ(x) / dₖ(o)); LID estimated with the same k."""
    distances, indices = nearest_neighbours(embeddings_in(inputs, space), k)
    k_dist, lid = distances[:, -1].double(), lid_mle(distances)  # [N] each
    return (lid[indices] * torch.log(k_dist[:, None] / k_dist[indices])).mean(dim=1)


@register_detector("lid")
def lid(inputs: DetectorInputs, k: int = 64, space: str = "image") -> torch.Tensor:
    """Local intrinsic dimensionality (maximum likelihood over the k nearest neighbours)."""
    distances, _ = nearest_neighbours(embeddings_in(inputs, space), k)
    return lid_mle(distances)
