"""The k-nearest-neighbour family of detectors: k-distance, SLOF, DAO and LID (Huang et al., ICLR'25).

All four look at the local neighbourhood of each training pair in embedding space (Euclidean
distance). With dₖ(x) the distance from x to its k-th nearest neighbour and N(x) its k nearest
neighbours:

* **k-distance**: dₖ(x). Large where the neighbourhood is sparse.
* **SLOF** (simplified local outlier factor): mean over o ∈ N(x) of dₖ(x) / dₖ(o): sparser than
  its own neighbours.
* **DAO** (dimensionality-aware outlier): mean over o ∈ N(x) of LID(o) · log(dₖ(x) / dₖ(o)) — the
  log of the geometric mean of the ratios SLOF averages, each raised to the neighbour's local
  intrinsic dimensionality (Huang et al.'s implementation of Anderberg et al., SDM'24).
* **LID**, maximum-likelihood estimate from the k nearest distances. High where the neighbours sit
  at similar distances (a sparse neighbourhood seen from outside); *low* for a point whose nearest
  neighbours are near-duplicates of it.

Huang et al. found backdoor poisons to have *sparser* neighbourhoods than clean pairs, so all four
flag large values. Which neighbours count decides whether that holds, so the reference set is a
parameter:

``reference="batch"`` (the default) is their protocol (``backdoor_sample_detector/*.py``, run by
``extract_bd_scores.py``): the training set is shuffled into batches; in each, the query is a
pair's *image* embedding and its neighbour pool is the batch's other images *and* other captions
(``torch.cat([d_v, d_t])``: the query's own image and own caption are masked out); features are
raw (not normalised); dₖ(x) is the (k+1)-th smallest pool distance (``a[:, k]``); a neighbour o's
dₖ(o) and LID(o) come from the sorted distance rows of the whole 2B-point pool, in which o's own
row starts with its zero self-distance (``a_full_d[:, k]``, i.e. its k-th nearest other point);
LID is −k / Σᵢ₌₀..ₖ₋₁ log(aᵢ / aₖ + 10⁻⁴). At their poison rates a batch holds about one poison,
so a poison cluster never fills the k neighbours ("the randomly sampled batch reflects the real
poisoning rate"). Deviations, each named: batches are split evenly (theirs: a smaller last
batch); each sample's score is averaged over ``reshuffles`` seeded shuffles (theirs: one shuffled
pass, whose noise a single toy run cannot average away); a neighbour's row in the pool is found
at its true index (their ``idx`` indexes the distance matrix *after* the query's self-columns are
removed, so for every neighbour past the query's own column it reads the next point's row — an
off-by-one we do not copy); ``space="text"`` queries with the caption, as their DAO's
``modality="text"``.

``reference="all"`` is poisonclip's earlier variant: neighbours among *all* other training pairs
(one modality, ``space``), dₖ the k-th nearest, LID −k / Σᵢ₌₁..ₖ log(dᵢ / dₖ). With
``normalize=True`` and ``space="image"`` it reproduces the matrix measured before issue 16. At the
toy's poison rates every poison then has other poisons among its neighbours: a tight cluster
larger than k has the *smallest* dₖ, the opposite of the batch view.

Defaults k = 16 and, for LID, k = 64 (Huang et al.'s). Batches of 128: their detection batch is
twice the training batch (2 × 256 a GPU, gathered), and the toy trains in batches of 64; at the
toy's 0.25–0.5% poisons a batch then holds 0.3–0.6 poisons, as theirs at CC3M's 0.01–0.1%.
All-pairs neighbours are exact, found in chunks of queries so that memory stays bounded by
``max_elements`` floats (64 MB by default, whatever N).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from poisonclip.detect.registry import DetectorInputs, register_detector
from poisonclip.errors import UsageError

REFERENCES = ("batch", "all")
SPACES = ("image", "text", "joint")
BATCH_SPACES = ("image", "text")  # the query's modality in the batch protocol
MIN_DISTANCE = 1e-6  # all-pairs distance floor: exact duplicates must not make a log or a ratio infinite
LID_EPSILON = 1e-4  # Huang et al.'s guard inside the log of the batch protocol's LID
MAX_ELEMENTS = 2**24  # float32 elements of one chunk of the query × reference distance matrix


def embeddings_in(inputs: DetectorInputs, space: str, normalize: bool) -> torch.Tensor:
    """[N, D] (or [N, 2D] for ``joint``: image and caption side by side, each unit norm)."""
    if space not in SPACES:
        raise UsageError(f"space must be one of {SPACES}, got {space!r}")
    image, text = inputs.image.float(), inputs.text.float()
    if normalize or space == "joint":
        image, text = torch.nn.functional.normalize(image, dim=1), torch.nn.functional.normalize(text, dim=1)
    if space == "joint":
        return torch.cat([image, text], dim=1) / 2**0.5
    return image if space == "image" else text


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
    """All-pairs LID [N] from ascending neighbour distances [N, k]: −k / Σᵢ log(dᵢ / dₖ)."""
    k = distances.shape[1]
    log_ratios = torch.log(distances.double() / distances[:, -1:].double())  # [N, k], all ≤ 0
    return k / (-log_ratios.sum(dim=1)).clamp_min(1e-12)  # k equal distances: LID → ∞, capped


def batch_lid(sorted_distances: torch.Tensor, k: int) -> torch.Tensor:
    """Huang et al.'s LID [M] from ascending distance rows [M, ≥ k+1]: −k / Σᵢ₌₀..ₖ₋₁ log(aᵢ / aₖ + 10⁻⁴)."""
    a = sorted_distances
    return -k / torch.log(a[:, :k] / a[:, k : k + 1] + LID_EPSILON).sum(dim=1)


def batch_neighbourhood(
    query: torch.Tensor, image: torch.Tensor, text: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of Huang et al.'s protocol: B pairs, query ``query`` [B, D] (row i = pair i's
    image or caption), pool ``[image; text]`` [2B, D] minus pair i's own image and caption.

    Returns (the queries' ascending pool distances float64 [B, 2B−2]; the pool indices [B, k] of
    their k nearest, into ``[image; text]``; every pool point's ascending distances to the whole
    pool, self included, float64 [2B, 2B]).
    """
    b = query.shape[0]
    if 2 * b - 2 < k + 1:
        raise UsageError(f"a batch of {b} pairs has {2 * b - 2} neighbours, fewer than k + 1 = {k + 1}")
    pool = torch.cat([image, text]).double()
    d = torch.cdist(query.double(), pool, compute_mode="donot_use_mm_for_euclid_dist")  # [B, 2B]
    own = torch.arange(b)
    d[own, own] = d[own, b + own] = float("inf")  # the pair's own image and caption are not neighbours
    sorted_d, index = torch.sort(d, dim=1)
    pool_sorted = torch.sort(
        torch.cdist(pool, pool, compute_mode="donot_use_mm_for_euclid_dist"), dim=1
    ).values
    return sorted_d[:, : 2 * b - 2], index[:, :k], pool_sorted


def _finite(scores: torch.Tensor) -> torch.Tensor:
    """Huang et al.'s ``nan_to_num(nan=1000, posinf=1000, neginf=0)`` on ratio scores."""
    return torch.nan_to_num(scores, nan=1000.0, posinf=1000.0, neginf=0.0)


def batch_k_distance(query: torch.Tensor, image: torch.Tensor, text: torch.Tensor, k: int) -> torch.Tensor:
    """[B]: the (k+1)-th smallest distance from each query to its batch pool."""
    return batch_neighbourhood(query, image, text, k)[0][:, k]


def batch_slof(query: torch.Tensor, image: torch.Tensor, text: torch.Tensor, k: int) -> torch.Tensor:
    """[B]: mean over the k nearest pool points o of dₖ(query) / dₖ(o)."""
    a, index, pool_sorted = batch_neighbourhood(query, image, text, k)
    return _finite((a[:, k : k + 1] / pool_sorted[index, k]).mean(dim=1))


def batch_dao(query: torch.Tensor, image: torch.Tensor, text: torch.Tensor, k: int) -> torch.Tensor:
    """[B]: mean over the k nearest pool points o of LID(o) · log(dₖ(query) / dₖ(o))."""
    a, index, pool_sorted = batch_neighbourhood(query, image, text, k)
    pool_lid = batch_lid(pool_sorted, k)  # [2B]; each row starts with its own zero distance, as theirs
    return _finite((pool_lid[index] * torch.log(a[:, k : k + 1] / pool_sorted[index, k])).mean(dim=1))


def batch_lid_scores(query: torch.Tensor, image: torch.Tensor, text: torch.Tensor, k: int) -> torch.Tensor:
    """[B]: each query's LID from its k+1 nearest pool distances."""
    return batch_lid(batch_neighbourhood(query, image, text, k)[0], k)


def over_batches(
    n: int,
    score_batch: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    reshuffles: int,
    seed: int,
) -> torch.Tensor:
    """float64 [n]: each sample's score within its batch, averaged over ``reshuffles`` seeded
    shuffles of the n samples into ⌈n / batch_size⌉ batches of (nearly) equal size.
    ``score_batch(ids [B])`` scores the samples ``ids`` against each other: [B]."""
    if batch_size < 2 or reshuffles < 1:
        raise UsageError(f"need batch_size >= 2 and reshuffles >= 1, got {batch_size} and {reshuffles}")
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(reshuffles):
        for ids in torch.randperm(n, generator=generator).tensor_split(math.ceil(n / batch_size)):
            total[ids] += score_batch(ids).double()
    return total / reshuffles


def _knn_detector(
    inputs: DetectorInputs,
    k: int,
    reference: str,
    space: str,
    normalize: bool,
    batch_size: int,
    reshuffles: int,
    seed: int,
    per_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
    all_pairs: Callable[[torch.Tensor, int], torch.Tensor],
) -> torch.Tensor:
    """Dispatch one k-NN detector to the batch protocol or the all-pairs variant."""
    if reference not in REFERENCES:
        raise UsageError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if reference == "all":
        return all_pairs(embeddings_in(inputs, space, normalize), k)
    if space not in BATCH_SPACES:
        raise UsageError(f"the batch protocol queries with {BATCH_SPACES}, got space {space!r}")
    image, text = embeddings_in(inputs, "image", normalize), embeddings_in(inputs, "text", normalize)
    query = image if space == "image" else text
    return over_batches(
        len(inputs), lambda ids: per_batch(query[ids], image[ids], text[ids], k), batch_size, reshuffles, seed
    )


def _all_k_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    return nearest_neighbours(x, k)[0][:, -1].double()


def _all_slof(x: torch.Tensor, k: int) -> torch.Tensor:
    distances, indices = nearest_neighbours(x, k)
    k_dist = distances[:, -1].double()  # [N]
    return (k_dist[:, None] / k_dist[indices]).mean(dim=1)


def _all_dao(x: torch.Tensor, k: int) -> torch.Tensor:
    distances, indices = nearest_neighbours(x, k)
    k_dist, lid = distances[:, -1].double(), lid_mle(distances)  # [N] each
    return (lid[indices] * torch.log(k_dist[:, None] / k_dist[indices])).mean(dim=1)


def _all_lid(x: torch.Tensor, k: int) -> torch.Tensor:
    return lid_mle(nearest_neighbours(x, k)[0])


def _register(
    name: str,
    per_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
    all_pairs: Callable[[torch.Tensor, int], torch.Tensor],
    default_k: int,
    doc: str,
) -> None:
    """Register one k-NN detector with the parameters every one of them takes."""

    def detector(
        inputs: DetectorInputs, k: int = default_k, reference: str = "batch", space: str = "image",
        normalize: bool = False, batch_size: int = 128, reshuffles: int = 3, seed: int = 0,
    ) -> torch.Tensor:  # fmt: skip
        return _knn_detector(
            inputs, k, reference, space, normalize, batch_size, reshuffles, seed, per_batch, all_pairs
        )

    detector.__doc__ = doc
    register_detector(name)(detector)


_register(
    "k-distance", batch_k_distance, _all_k_distance, 16,
    "dₖ(x): distance to the k-th nearest neighbour (the (k+1)-th pool point in the batch protocol).",
)  # fmt: skip
_register("slof", batch_slof, _all_slof, 16, "Mean over the k neighbours o of dₖ(x) / dₖ(o).")
_register(
    "dao", batch_dao, _all_dao, 16,
    "Mean over the k neighbours o of LID(o) · log(dₖ(x) / dₖ(o)); LID estimated with the same k.",
)  # fmt: skip
_register(
    "lid", batch_lid_scores, _all_lid, 64,
    "Local intrinsic dimensionality (maximum likelihood over the k nearest neighbours).",
)  # fmt: skip
