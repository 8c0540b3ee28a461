"""Evaluation metrics of Cole et al. (2021): mAP (two conventions), per-class AP, precision/recall@k, top-k hit rate.

Every function takes scores and full (multi-hot) labels as numpy arrays or torch tensors of shape
(N, C). Scores may be logits or probabilities (only their order matters).
"""
import warnings
from typing import Dict, Iterable, Union

import numpy as np
import torch
from sklearn.metrics import average_precision_score

__all__ = [
    "per_class_average_precision",
    "mean_average_precision",
    "precision_at_k",
    "recall_at_k",
    "top_k_hit_rate",
    "compute_metrics",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

NO_POSITIVE_CONVENTIONS = ("zero", "skip")


def _to_numpy(name: str, value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_examples, num_classes), got shape {arr.shape}")
    return arr


def _prepare(scores: ArrayLike, labels: ArrayLike):
    scores = _to_numpy("scores", scores).astype(np.float64)
    labels = _to_numpy("labels", labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores shape {scores.shape} does not match labels shape {labels.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf values")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be full multi-hot labels in {0, 1} (observed -1/0/1 labels are not full labels)")
    return scores, labels.astype(np.int64)


def per_class_average_precision(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Average precision of each class (sklearn's definition), as a fraction in [0, 1].

    Args:
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.

    Returns:
        A (C,) float array; classes with no positive example are NaN.
    """
    scores, labels = _prepare(scores, labels)
    ap = np.full(labels.shape[1], np.nan)
    has_pos = labels.sum(axis=0) > 0
    for c in np.flatnonzero(has_pos):
        ap[c] = average_precision_score(labels[:, c], scores[:, c])
    return ap


def mean_average_precision(scores: ArrayLike, labels: ArrayLike, no_positive: str = "zero") -> float:
    """Mean average precision in percent.

    Args:
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.
        no_positive: How a class with no positive example counts: ``"zero"`` (AP 0, as the reference
            implementation of Cole et al.) or ``"skip"`` (left out of the mean).

    Returns:
        mAP × 100.
    """
    if no_positive not in NO_POSITIVE_CONVENTIONS:
        raise ValueError(f"no_positive must be one of {NO_POSITIVE_CONVENTIONS}, got {no_positive!r}")
    ap = per_class_average_precision(scores, labels)
    if no_positive == "zero":
        return float(100.0 * np.nan_to_num(ap, nan=0.0).mean())
    if np.isnan(ap).all():
        warnings.warn("no class has a positive example: mAP (skip convention) is NaN")
        return float("nan")
    return float(100.0 * np.nanmean(ap))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(k, scores.shape[1])
    # stable ordering: highest score first, ties broken by class index
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _hits_at_k(scores: ArrayLike, labels: ArrayLike, k: int):
    scores, labels = _prepare(scores, labels)
    top = _top_k(scores, k)
    hits = np.take_along_axis(labels, top, axis=1).sum(axis=1)
    return hits, labels.sum(axis=1), top.shape[1]


def precision_at_k(scores: ArrayLike, labels: ArrayLike, k: int) -> float:
    """Per-image precision of the top-k predicted classes, averaged over images, in percent.

    Args:
        scores: (N, C) scores (logits or probabilities).
        labels: (N, C) full multi-hot labels.
        k: How many top-scored classes count as predicted.
    """
    hits, _, kk = _hits_at_k(scores, labels, k)
    return float(100.0 * (hits / kk).mean())


def recall_at_k(scores: ArrayLike, labels: ArrayLike, k: int) -> float:
    """Per-image recall of the top-k predicted classes, averaged over images with a positive, in percent.

    Args:
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.
        k: Number of top-scored classes per image.
    """
    hits, num_pos, _ = _hits_at_k(scores, labels, k)
    valid = num_pos > 0
    if not valid.any():
        return float("nan")
    return float(100.0 * (hits[valid] / num_pos[valid]).mean())


def top_k_hit_rate(scores: ArrayLike, labels: ArrayLike, k: int) -> float:
    """Share of images with at least one true label among the top-k predictions, in percent.

    Args:
        scores: (N, C) image scores; only their order per image matters.
        labels: (N, C) multi-hot ground truth.
        k: The number of predictions per image.
    """
    hits, _, _ = _hits_at_k(scores, labels, k)
    return float(100.0 * (hits > 0).mean())


def compute_metrics(scores: ArrayLike, labels: ArrayLike, ks: Iterable[int] = (1, 3, 5)) -> Dict[str, float]:
    """mAP (both conventions), precision@k, recall@k and the top-k hit rate in one dict.

    Args:
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.
        ks: The k values for precision@k, recall@k and top-k hit rate.

    Returns:
        ``{"map": ..., "map_skip_empty": ..., "precision@1": ..., "recall@1": ..., "top1_hit": ...}``.
    """
    scores, labels = _prepare(scores, labels)
    ap = per_class_average_precision(scores, labels)
    out = {
        "map": float(100.0 * np.nan_to_num(ap, nan=0.0).mean()),
        "map_skip_empty": float(100.0 * np.nanmean(ap)) if not np.isnan(ap).all() else float("nan"),
    }
    for k in ks:
        out[f"precision@{k}"] = precision_at_k(scores, labels, k)
        out[f"recall@{k}"] = recall_at_k(scores, labels, k)
        out[f"top{k}_hit"] = top_k_hit_rate(scores, labels, k)
    return out
