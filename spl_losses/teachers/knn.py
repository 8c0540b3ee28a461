"""The feature-kNN teacher: label propagation of the observed positives over a neighbour graph.

Label propagation (Zhou et al., NeurIPS 2003, "Learning with Local and Global Consistency"), with the
graph of Iscen et al. (CVPR 2019): each example links to its k most cosine-similar examples with weight
``max(cos, 0)^gamma``; ``W`` is symmetrised (``W + Wᵀ``) and normalised, ``S = D^{-1/2} W D^{-1/2}``; the
observed positives ``Y`` (N, C) spread as ``F_{t+1} = alpha·S·F_t + Y`` from ``F_0 = Y`` (``iterations``
steps; the limit is ``(I - alpha·S)^{-1} Y``). Scores are ``F`` divided by its row maximum (an example's
own observed class usually scores 1) or by its column maximum.
"""
from typing import Any, Dict, Optional

import datasets
import torch
import torch.nn.functional as F

from .base import Teacher, observed_label_matrix
from .cache import tensor_fingerprint
from .model import split_features

__all__ = ["KNNTeacher", "knn_graph", "propagate_labels", "NORMALIZATIONS"]

#: How propagated scores are brought to [0, 1].
NORMALIZATIONS = ("row_max", "column_max")


def knn_graph(features: torch.Tensor, num_neighbors: int, gamma: float = 3.0, chunk_size: int = 4096) -> torch.Tensor:
    """The symmetric sparse affinity ``W + Wᵀ`` of the cosine k-nearest-neighbour graph (self excluded).

    Args:
        features: (N, D) features.
        num_neighbors: k.
        gamma: Exponent of the (non-negative) cosine similarity.
        chunk_size: Rows per similarity block (memory: chunk_size × N floats).

    Returns:
        A coalesced sparse (N, N) float32 tensor.
    """
    n = features.shape[0]
    if not 0 < num_neighbors < n:
        raise ValueError(f"num_neighbors must lie in [1, {n - 1}] for {n} examples, got {num_neighbors}")
    x = F.normalize(features.float(), dim=1)
    rows, cols, values = [], [], []
    for start in range(0, n, chunk_size):
        sims = x[start:start + chunk_size] @ x.T
        own = torch.arange(start, start + sims.shape[0])
        sims[torch.arange(sims.shape[0]), own] = -float("inf")
        top, idx = sims.topk(num_neighbors, dim=1)
        rows.append(own.repeat_interleave(num_neighbors))
        cols.append(idx.reshape(-1))
        values.append(top.reshape(-1).clamp_min(0.0) ** gamma)
    rows, cols, values = torch.cat(rows), torch.cat(cols), torch.cat(values)
    both = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    return torch.sparse_coo_tensor(both, torch.cat([values, values]), (n, n), check_invariants=False).coalesce()


def propagate_labels(
        features: torch.Tensor,
        labels: torch.Tensor,
        num_neighbors: int = 10,
        alpha: float = 0.99,
        gamma: float = 3.0,
        iterations: int = 20,
        chunk_size: int = 4096,
) -> torch.Tensor:
    """Label propagation of ``labels`` over the kNN graph of ``features`` (see the module docstring).

    Args:
        features: (N, D) features.
        labels: (N, C) seeds, 1 at observed positives.
        num_neighbors: k of the graph.
        alpha: Propagation weight in [0, 1).
        gamma: Exponent of the cosine similarity.
        iterations: Steps of ``F <- alpha·S·F + Y``.
        chunk_size: Rows per similarity block.

    Returns:
        The (N, C) propagated scores ``F`` (non-negative, unnormalised).
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
    w = knn_graph(features, num_neighbors, gamma, chunk_size)
    degree = torch.sparse.sum(w, dim=1).to_dense()
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    i, j = w.indices()
    s = torch.sparse_coo_tensor(w.indices(), w.values() * inv_sqrt[i] * inv_sqrt[j], w.shape,
                                check_invariants=False).coalesce()
    y = labels.float()
    out = y.clone()
    for _ in range(iterations):
        out = alpha * torch.sparse.mm(s, out) + y
    return out


class KNNTeacher(Teacher):
    """Label propagation of the observed positives over the frozen features' kNN graph.

    Args:
        features: Optional (N, D) features of the split (default: its ``features`` column).
        num_neighbors: k of the graph (10).
        alpha: Propagation weight (0.99).
        gamma: Exponent of the cosine similarity (3).
        iterations: Propagation steps (20).
        normalize: ``"row_max"`` (each row divided by its maximum) or ``"column_max"`` (each class by its maximum).
        chunk_size: Rows per similarity block.
    """

    kind = "knn"

    def __init__(
            self,
            features: Optional[torch.Tensor] = None,
            num_neighbors: int = 10,
            alpha: float = 0.99,
            gamma: float = 3.0,
            iterations: int = 20,
            normalize: str = "row_max",
            chunk_size: int = 4096,
    ):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, int) or num_neighbors <= 0:
            raise ValueError(f"num_neighbors must be a positive int, got {num_neighbors!r}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
        self.features = features
        self.num_neighbors = num_neighbors
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.iterations = int(iterations)
        self.normalize = normalize
        self.chunk_size = int(chunk_size)

    def describe(self) -> Dict[str, Any]:
        """Features (fingerprint or the split's column) and the graph/propagation options."""
        source = "column:features" if self.features is None else \
            tensor_fingerprint({"features": torch.as_tensor(self.features)})
        return {"features": source, "num_neighbors": self.num_neighbors, "alpha": self.alpha, "gamma": self.gamma,
                "iterations": self.iterations}

    def compute_raw(self, split: datasets.Dataset) -> torch.Tensor:
        """(N, C) propagated scores of the split's observed positives.

        Args:
            split: A split with ``observed_labels`` (and ``features`` unless given).
        """
        return propagate_labels(split_features(split, self.features), observed_label_matrix(split),
                                self.num_neighbors, self.alpha, self.gamma, self.iterations, self.chunk_size)

    def scores_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """``F`` divided by its row (or column) maximum; all-zero rows (columns) stay 0.

        Args:
            raw: (N, C) propagated scores.
        """
        top = raw.amax(dim=1 if self.normalize == "row_max" else 0, keepdim=True)
        return torch.where(top > 0, raw / top.clamp_min(1e-12), torch.zeros_like(raw))
