"""Evaluation metrics of multi-label classification against full labels.

- mAP in percent, in two conventions for a class without positives in the evaluated set: AP 0 (Cole
  et al.'s reference) or left out; per-class AP (sklearn's definition);
- per-image precision@k, recall@k and top-k hit rate (reported by Cole et al.);
- the per-class and overall precision, recall and F1 of thresholded predictions (CP, CR, CF1, OP, OR,
  OF1) that multi-label papers report, at a probability threshold and for each image's top-k classes.

Every function takes scores and full (multi-hot) labels as numpy arrays or torch tensors of shape
(N, C). For the ranking metrics scores may be logits or probabilities (only their order matters); the
thresholded ones say which they expect.
"""
import warnings
from typing import Dict, Iterable, Optional, Union

import numpy as np
import torch

__all__ = [
    "per_class_average_precision",
    "mean_average_precision",
    "precision_at_k",
    "recall_at_k",
    "top_k_hit_rate",
    "precision_recall_f1",
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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function (``scipy.special.expit``), 1 / (1 + exp(-x)); exp's overflow gives 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


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


_AP_BLOCK_ELEMENTS = 1 << 22  # classes per pass bounded so the sort's temporaries stay ~100 MB


def _average_precision_block(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of every row of a (c, N) block (one class per row) in one vectorised pass.

    sklearn sorts by decreasing score and sums ``(R_k - R_{k-1}) P_k`` over the distinct scores k;
    a tie group's precision is taken at its last example. Hence AP = mean, over the positives, of the
    precision at the end of the positive's tie group.
    """
    n = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    hits = np.take_along_axis(labels, order, axis=1)
    true_pos = np.cumsum(hits, axis=1)
    group_end = np.ones(ranked.shape, dtype=bool)
    group_end[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    last = np.where(group_end, np.arange(n), n - 1)
    last = np.minimum.accumulate(last[:, ::-1], axis=1)[:, ::-1]  # each example's tie-group end
    precision = np.take_along_axis(true_pos, last, axis=1) / (last + 1.0)
    total = true_pos[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (precision * hits).sum(axis=1) / total, np.nan)


def per_class_average_precision(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Average precision of each class (sklearn's definition), as a fraction in [0, 1].

    All classes are scored in one vectorised pass (blocks of classes for large inputs), equal to
    ``sklearn.metrics.average_precision_score`` per class, ties included.

    Args:
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.

    Returns:
        A (C,) float array; classes with no positive example are NaN.
    """
    scores, labels = _prepare(scores, labels)
    num_classes = labels.shape[1]
    if labels.shape[0] == 0:
        return np.full(num_classes, np.nan)
    width = max(1, _AP_BLOCK_ELEMENTS // labels.shape[0])
    scores, labels = np.ascontiguousarray(scores.T), np.ascontiguousarray(labels.T)
    return np.concatenate([_average_precision_block(scores[c:c + width], labels[c:c + width])
                           for c in range(0, num_classes, width)]) if num_classes else np.full(0, np.nan)


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
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.
        k: Number of top-scored classes per image.
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
        scores: (N, C) scores.
        labels: (N, C) full multi-hot labels.
        k: Number of top-scored classes per image.
    """
    hits, _, _ = _hits_at_k(scores, labels, k)
    return float(100.0 * (hits > 0).mean())


def precision_recall_f1(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5,
                        top_k: Optional[int] = None) -> Dict[str, float]:
    """Per-class (CP, CR, CF1) and overall (OP, OR, OF1) precision, recall and F1 of thresholded predictions.

    A class is predicted for an image when its probability is at least ``threshold``; with ``top_k``, only
    among the image's ``top_k`` highest-scoring classes (the "top-3" protocol of multi-label papers such
    as ML-GCN). CP and CR average the per-class precision and recall (a class never predicted has
    precision 0, a class without positives recall 0); OP and OR pool all (image, class) pairs; each F1 is
    the harmonic mean of its precision and recall.

    Args:
        probs: (N, C) probabilities (sigmoid of the logits).
        labels: (N, C) full multi-hot labels.
        threshold: Probability threshold.
        top_k: Predict only among each image's top-k classes (None: all classes).

    Returns:
        ``{"CP", "CR", "CF1", "OP", "OR", "OF1"}`` in percent.
    """
    probs, labels = _prepare(probs, labels)
    predicted = probs >= threshold
    if top_k is not None:
        in_top = np.zeros_like(predicted)
        np.put_along_axis(in_top, _top_k(probs, top_k), True, axis=1)
        predicted &= in_top
    true_pos = (predicted & (labels == 1)).sum(axis=0).astype(np.float64)
    num_predicted, num_positive = predicted.sum(axis=0), labels.sum(axis=0)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    def f1(p, r):
        return float(2 * p * r / (p + r)) if p + r > 0 else 0.0

    cp, cr = float(ratio(true_pos, num_predicted).mean()), float(ratio(true_pos, num_positive).mean())
    op = float(ratio(true_pos.sum(), np.float64(num_predicted.sum())))
    o_r = float(ratio(true_pos.sum(), np.float64(num_positive.sum())))
    return {k: 100.0 * v for k, v in (("CP", cp), ("CR", cr), ("CF1", f1(cp, cr)), ("OP", op), ("OR", o_r),
                                      ("OF1", f1(op, o_r)))}


def compute_metrics(scores: ArrayLike, labels: ArrayLike, ks: Iterable[int] = (1, 3, 5),
                    threshold: Optional[float] = 0.5, top_k_prf: Optional[int] = 3,
                    scores_are_logits: bool = True) -> Dict[str, float]:
    """All metrics of this module in one dict.

    Args:
        scores: (N, C) scores (logits, or probabilities with ``scores_are_logits=False``).
        labels: (N, C) full multi-hot labels.
        ks: The k values for precision@k, recall@k and top-k hit rate.
        threshold: Probability threshold of CP ... OF1 (None leaves them out).
        top_k_prf: Also CP ... OF1 among each image's top-k classes, keys suffixed ``_top{k}`` (None: not).
        scores_are_logits: Whether ``scores`` are logits (the thresholded metrics take their sigmoid).

    Returns:
        ``{"map": ..., "map_skip_empty": ..., "precision@1": ..., "recall@1": ..., "top1_hit": ..., "CP": ...,
        "CF1_top3": ...}``.
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
    if threshold is not None:
        probs = _sigmoid(scores) if scores_are_logits else scores
        out.update(precision_recall_f1(probs, labels, threshold))
        if top_k_prf is not None:
            out.update({f"{k}_top{top_k_prf}": v for k, v in
                        precision_recall_f1(probs, labels, threshold, top_k=top_k_prf).items()})
    return out
