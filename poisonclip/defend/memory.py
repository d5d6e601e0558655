"""The nearest-neighbour memory bank that RoCLIP's and SafeCLIP's official code share.

Both use lightly's ``MemoryBankModule`` (via ``NNMemoryBankModule``): a FIFO of detached embeddings
that starts as random unit vectors, is queried for each query's most similar entry (cosine), and is
updated only when the caller says so. The random start matters: until the bank has been filled,
queries retrieve noise (RoCLIP fills its bank only on matching epochs, so its first matching
epoch starts from noise).
"""

from __future__ import annotations

import torch


class NearestNeighbourBank:
    """A FIFO of ``size`` detached embeddings [size, D], each remembered with the sample id it came
    from (-1 for the random start)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.next = size, 0
        self.embeddings: torch.Tensor | None = None  # float32 [size, D], on the queries' device
        self.ids: torch.Tensor | None = None  # int64 [size]
        self._generator = torch.Generator().manual_seed(seed)

    def _start(self, like: torch.Tensor) -> None:
        if self.embeddings is None:  # lightly: randn(dim, size), normalised along dim
            start = torch.randn(self.size, like.shape[1], generator=self._generator)
            self.embeddings = torch.nn.functional.normalize(start, dim=1).to(like.device)
            self.ids = torch.full((self.size,), -1, dtype=torch.long, device=like.device)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query [B, D]: the most similar entry [B, D] (float32, detached) and its id [B]."""
        self._start(queries)
        assert self.embeddings is not None and self.ids is not None
        similarity = torch.nn.functional.normalize(queries.detach().float(), dim=1) @ self.embeddings.T
        index = similarity.argmax(dim=1)
        return self.embeddings[index], self.ids[index]

    def push(self, embeddings: torch.Tensor, ids: torch.Tensor) -> None:
        """Enter ``embeddings`` [B, D] (unit norm) from samples ``ids`` [B], evicting the oldest."""
        self._start(embeddings)
        assert self.embeddings is not None and self.ids is not None
        rows = (self.next + torch.arange(len(embeddings), device=embeddings.device)) % self.size
        self.embeddings[rows] = embeddings.detach().float()
        self.ids[rows] = ids.to(self.ids.device)
        self.next = (self.next + len(embeddings)) % self.size
