"""Label encodings of single-positive multi-label learning and the conversions between them.

- Full ("clean") labels: multi-hot {0, 1}.
- Observed labels: {-1, 0, +1}: observed negative, unobserved, observed positive.
- Datasets store labels as lists of class indices; losses take dense (B, C) tensors.
"""
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "POSITIVE",
    "UNOBSERVED",
    "NEGATIVE",
    "indices_to_dense",
    "dense_to_indices",
    "check_observed_labels",
    "check_multi_hot",
]

POSITIVE = 1
UNOBSERVED = 0
NEGATIVE = -1


def _as_index_rows(indices) -> list:
    """Per-row lists of ints; a row given as a single int (SPML: one index per row) becomes ``[i]``."""
    if isinstance(indices, (torch.Tensor, np.ndarray)) and indices.ndim == 1:
        return [[int(i)] for i in indices.tolist()]
    rows = []
    for row in indices:
        if isinstance(row, (int, np.integer)) or (isinstance(row, (torch.Tensor, np.ndarray)) and row.ndim == 0):
            rows.append([int(row)])
        else:
            rows.append(list(row))
    return rows


def indices_to_dense(
        indices: Iterable[Union[int, Sequence[int]]],
        num_classes: int,
        negatives: Optional[Iterable[Union[int, Sequence[int]]]] = None,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn per-row lists of class indices into a dense (N, C) label tensor.

    Args:
        indices: One sequence of positive class indices per row, or one int per row (the SPML
            layout of a single positive per example).
        num_classes: C, the number of classes.
        negatives: Optional per-row sequences (or ints) of observed negative class indices (encoded -1).
        dtype: Output dtype.

    Returns:
        A (N, C) tensor with 1 at positives, -1 at observed negatives and 0 elsewhere.

    Raises:
        ValueError: a class index outside [0, C), a row count mismatch, or an entry listed both as
            positive and as negative.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    num_classes = int(num_classes)
    rows = _as_index_rows(indices)
    out = torch.zeros(len(rows), num_classes, dtype=dtype)
    for value, lists in ((POSITIVE, rows), (NEGATIVE, None if negatives is None else _as_index_rows(negatives))):
        if lists is None:
            continue
        if len(lists) != len(rows):
            raise ValueError(f"negatives has {len(lists)} rows, expected {len(rows)}")
        row_idx = torch.from_numpy(np.repeat(np.arange(len(lists)), [len(r) for r in lists]))
        col_idx = np.fromiter((c for r in lists for c in r), dtype=np.int64, count=len(row_idx))
        if col_idx.size and (col_idx.min() < 0 or col_idx.max() >= num_classes):
            raise ValueError(
                f"class indices must lie in [0, {num_classes - 1}], got values in [{col_idx.min()}, {col_idx.max()}]")
        col_idx = torch.from_numpy(col_idx)
        if value == NEGATIVE and bool((out[row_idx, col_idx] == POSITIVE).any()):
            both = (out[row_idx, col_idx] == POSITIVE).nonzero()[0, 0]
            raise ValueError(
                f"row {int(row_idx[both])} lists class {int(col_idx[both])} both as positive and as negative")
        out[row_idx, col_idx] = value
    return out


def dense_to_indices(labels: Union[torch.Tensor, np.ndarray], value: int = POSITIVE) -> list:
    """Turn a dense (N, C) label matrix into per-row lists of the class indices equal to ``value``.

    Args:
        labels: (N, C) dense labels.
        value: The entry value to collect (1 for positives, -1 for observed negatives).

    Returns:
        A list of N lists of ints.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be 2-D (N, C), got shape {tuple(arr.shape)}")
    return [np.flatnonzero(row == value).tolist() for row in arr]


def _check_2d(name: str, labels, expected_shape=None) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, num_classes), got shape {tuple(labels.shape)}")
    if expected_shape is not None and tuple(labels.shape) != tuple(expected_shape):
        raise ValueError(f"{name} shape {tuple(labels.shape)} does not match logits shape {tuple(expected_shape)}")


_CHECK_CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 temporaries at most


def _value_range(labels: torch.Tensor, fractional: bool = False):
    """Min and max of ``labels`` (NaN anywhere makes them NaN), read back in one device sync.

    With ``fractional`` the min and max of ``labels.frac()`` follow (float tensors only). Returns
    None for empty tensors.
    """
    if labels.numel() == 0:
        return None
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    stats = [v.float() for v in torch.aminmax(labels)]
    if fractional and labels.numel() <= _CHECK_CHUNK_ELEMENTS:
        stats += list(torch.aminmax(labels.frac()))
    elif fractional:
        # frac() makes a temporary: bound it for large label matrices (e.g. a whole training split)
        rows_per_chunk = max(1, _CHECK_CHUNK_ELEMENTS // max(1, labels.shape[-1]))
        chunk_stats = torch.stack([torch.stack(torch.aminmax(chunk.frac())) for chunk in labels.split(rows_per_chunk)])
        stats += [chunk_stats[:, 0].min().float(), chunk_stats[:, 1].max().float()]
    return torch.stack(stats).tolist()


def _raise_if_not_finite(name: str, labels: torch.Tensor) -> None:
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise ValueError(f"{name} contain NaN or inf values")


def check_observed_labels(labels: torch.Tensor, expected_shape=None, name: str = "targets") -> None:
    """Check that ``labels`` is a dense (B, C) tensor in the observed encoding {-1, 0, 1}.

    The check costs a few cheap passes (min/max, then no fractional part for float tensors); the
    slower diagnosis that names the bad values runs only when the check fails.

    Args:
        labels: The tensor to check.
        expected_shape: Shape it must have (usually the logits' shape), or None.
        name: Name used in error messages.

    Raises:
        ValueError: wrong shape, NaN/inf, or values outside {-1, 0, 1}.
    """
    _check_2d(name, labels, expected_shape)
    # within [-1, 1] the only values with a zero fractional part are -1, 0 and 1 (min/max are
    # one cheap pass each, several times faster than ``.any()`` on CPU)
    stats = _value_range(labels, fractional=labels.is_floating_point())
    if stats is None:
        return
    lo, hi = stats[:2]
    valid = -1.0 <= lo and hi <= 1.0 and all(v == 0.0 for v in stats[2:])  # False when NaN is present
    if valid:
        return
    _raise_if_not_finite(name, labels)
    bad = (labels != 0) & (labels != 1) & (labels != -1)
    found = torch.unique(labels[bad])[:5].tolist()
    raise ValueError(f"{name} must be in the observed encoding {{-1, 0, 1}}, found values {found}")


def check_multi_hot(labels: torch.Tensor, expected_shape=None, name: str = "targets") -> None:
    """Check that ``labels`` is a dense (B, C) full-label tensor with values in [0, 1].

    Soft targets in [0, 1] (mixup, label smoothing) are accepted; -1 (an observed negative of the
    single-positive encoding) is not, since full-label losses read 0 as a true negative.

    Args:
        labels: The tensor to check.
        expected_shape: Shape it must have (usually the logits' shape), or None.
        name: Name used in error messages.

    Raises:
        ValueError: wrong shape, NaN/inf, or values outside [0, 1].
    """
    _check_2d(name, labels, expected_shape)
    value_range = _value_range(labels)
    if value_range is None:
        return
    lo, hi = value_range
    if 0.0 <= lo and hi <= 1.0:  # False when NaN is present
        return
    _raise_if_not_finite(name, labels)
    if bool((labels == -1).any()):
        raise ValueError(
            f"{name} contain -1 (observed negative), but this loss takes full multi-hot labels in {{0, 1}}; "
            "use a single-positive loss such as 'an' for the {-1, 0, 1} encoding")
    raise ValueError(f"{name} must be multi-hot in [0, 1], found values in [{lo}, {hi}]")
