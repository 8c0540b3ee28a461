"""Single-positive sampling and the train/validation split, reproducible everywhere.

The protocol of Cole et al. (CVPR 2021): for every training image one positive is observed, chosen
uniformly at random among its true positives with seed 1200, and 20% of the official training set
(seed 1200, sorted indices) becomes the validation set.

Every random choice here comes from a counter-based hash, not from a random-number stream: the key
of an entry is the SplitMix64 finalizer chained over ``(seed, salt, row, class)``::

    mix(x)   = splitmix64 finalizer of (x + 0x9E3779B97F4A7C15) modulo 2**64
    key      = mix(mix(mix(mix(seed) + salt) + row) + class)

and a row's observed positives are its true positives with the smallest keys. Sorting by an
independent uniform key is a uniformly random permutation, so for one positive this is the uniform
rule of Cole et al. (each true positive equally likely); for ``num_positives > 1`` it is a uniform
subset without replacement. With per-entry weights ``w`` the key of an entry becomes
``-log(1 - u) / w`` (``u`` the hash key mapped to [0, 1)): the smallest of independent exponential
variables with rates ``w`` is entry ``c`` with probability ``w_c / sum(w)`` (an exponential race), and
keeping the ``k`` smallest is weighted sampling without replacement; equal weights give the same draws
as no weights. Why a hash and not numpy's generators: the result is a pure function of
integers, identical on every machine, numpy version and platform, it does not depend on the order in
which rows are visited (adding rows never changes the others' draws), it is vectorised, and a test
can recompute any draw by hand. The draws are distributed like the reference's but are not the same
draws as the reference's files; :mod:`spl_losses.data.reference_draws` reproduces those (opt-in).
"""
import itertools
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .columns import ListColumn, list_column

__all__ = [
    "ObservedLabels",
    "hash_keys",
    "sample_single_positive",
    "split_train_validation",
    "add_observed_labels",
]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_VALIDATION_SALT = 0x56414C  # "VAL": the salt of the train/validation split


class ObservedLabels(NamedTuple):
    """Per-row observed labels drawn by :func:`sample_single_positive`.

    Args:
        positives: One list of observed positive class indices per row, ascending (empty when the
            row has no true positive).
        negatives: One list of observed negative class indices per row, ascending (empty unless
            ``num_negatives > 0``).
    """

    positives: List[List[int]]
    negatives: List[List[int]]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 step on a uint64 array (wrapping arithmetic; the caller ignores overflow)."""
    z = x + _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def _as_uint64(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(arr.min())}")
    return arr.astype(np.uint64)


def hash_keys(seed: int, salt: int, rows, classes=0) -> np.ndarray:
    """Counter-based uniform 64-bit keys for (seed, salt, row, class), see the module docstring.

    Args:
        seed: Non-negative int seed.
        salt: Non-negative int separating independent uses of one seed (split, positives, negatives).
        rows: Row indices (int array-like).
        classes: Class indices, broadcast against ``rows``.

    Returns:
        A uint64 array of the broadcast shape.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0 or seed >= 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if isinstance(salt, bool) or not isinstance(salt, (int, np.integer)) or salt < 0 or salt >= 2 ** 64:
        raise ValueError(f"salt must be an int in [0, 2**64), got {salt!r}")
    rows_u = _as_uint64(rows, "rows")
    classes_u = _as_uint64(classes, "classes")
    with np.errstate(over="ignore"):
        base = _mix(_mix(np.array([seed], dtype=np.uint64)) + np.uint64(salt))
        return _mix(_mix(base + rows_u) + classes_u)


def _to_coordinates(labels, num_classes: Optional[int], weights=None):
    """Return (N, C, rows, classes, entry weights or None) of the positive entries of dense or
    index-list labels (a class listed twice in one row counts once, with the sum of its weights)."""
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 2:
            raise ValueError(f"dense labels must be 2-D (N, C), got shape {labels.shape}")
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            raise ValueError(
                f"dense labels must be multi-hot in {{0, 1}}, found values {np.unique(labels[bad])[:5].tolist()}")
        n, c = labels.shape
        if num_classes is not None and num_classes != c:
            raise ValueError(f"num_classes={num_classes} does not match the labels' {c} columns")
        rows, classes = np.nonzero(labels)
        entry_weights = None
        if weights is not None:
            dense = np.asarray(weights.detach().cpu().numpy() if hasattr(weights, "detach") else weights,
                               dtype=np.float64)
            if dense.shape != labels.shape:
                raise ValueError(f"weights must have the labels' shape {labels.shape}, got {dense.shape}")
            entry_weights = dense[rows, classes]
        return n, c, rows.astype(np.int64), classes.astype(np.int64), entry_weights
    if isinstance(labels, ListColumn):  # a dataset's column as Arrow holds it (offsets and values)
        lengths, classes = labels.lengths, labels.values.astype(np.int64)
        rows = labels.rows
        lists = labels
    elif isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise TypeError(f"labels must be a dense (N, C) array or a sequence of class-index lists, "
                        f"got {type(labels).__name__}")
    else:
        lists = labels if isinstance(labels, list) else list(labels)
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
        classes = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
    entry_weights = None if weights is None else _flat_weights(weights, lengths)
    if classes.size and classes.min() < 0:
        raise ValueError(f"class indices must be non-negative, got {int(classes.min())}")
    inferred = int(classes.max()) + 1 if classes.size else 0
    if num_classes is None:
        num_classes = inferred
    elif inferred > num_classes:
        raise ValueError(f"class index {inferred - 1} out of range for num_classes={num_classes}")
    if classes.size:  # a class listed twice in one row counts once
        width = max(num_classes, 1)
        pairs, inverse = np.unique(rows * width + classes, return_inverse=True)
        rows, classes = pairs // width, pairs % width
        if entry_weights is not None:
            entry_weights = np.bincount(inverse.reshape(-1), weights=entry_weights, minlength=pairs.size)
    return len(lists), num_classes, rows, classes, entry_weights


def _flat_weights(weights, lengths: np.ndarray) -> np.ndarray:
    """Flatten per-row weights that must align with the per-row class lists."""
    if isinstance(weights, ListColumn):
        if len(weights) != lengths.size:
            raise ValueError(f"weights has {len(weights)} rows but the labels have {lengths.size}")
        bad = np.flatnonzero(weights.lengths != lengths)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"weights row {i} has {int(weights.lengths[i])} entries for {int(lengths[i])} listed "
                             "classes (one weight per class)")
        return weights.values.astype(np.float64)
    rows = list(weights)
    if len(rows) != lengths.size:
        raise ValueError(f"weights has {len(rows)} rows but the labels have {lengths.size}")
    for i, (row, n) in enumerate(zip(rows, lengths.tolist())):
        if len(row) != n:
            raise ValueError(f"weights row {i} has {len(row)} entries for {n} listed classes (one weight per class)")
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=int(lengths.sum()))


def _check_weights(rows: np.ndarray, weights: np.ndarray) -> None:
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"weights must be finite and non-negative; row {int(rows[first])} has {float(weights[first])}")


def _weighted_keys(keys: np.ndarray, rows: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Exponential-race keys ``-log(1 - u) / w`` (see the module docstring); rows whose weights are all
    zero keep ``-log(1 - u)``, i.e. the uniform draw."""
    uniform = (keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    race = -np.log1p(-uniform)
    row_total = np.bincount(rows, weights=weights, minlength=n)
    use = row_total[rows] > 0
    with np.errstate(divide="ignore"):
        return np.where(use, np.where(weights > 0, race / np.where(weights > 0, weights, 1.0), np.inf), race)


def _smallest_keys_per_row(n: int, rows: np.ndarray, classes: np.ndarray, keys: np.ndarray, k: int) -> List[List[int]]:
    """For each row, the classes of its ``k`` smallest keys, ascending by class."""
    if k <= 0 or rows.size == 0:
        return [[] for _ in range(n)]
    order = np.lexsort((keys, rows))
    rows_s, classes_s = rows[order], classes[order]
    starts = np.searchsorted(rows_s, rows_s, side="left")
    keep = (np.arange(rows_s.size) - starts) < k
    rows_k, classes_k = rows_s[keep], classes_s[keep]
    order = np.lexsort((classes_k, rows_k))
    rows_k, classes_k = rows_k[order], classes_k[order]
    return _group_by_row(n, rows_k, classes_k)


def _group_by_row(n: int, rows: np.ndarray, classes: np.ndarray) -> List[List[int]]:
    """Per-row lists of ``classes`` for (row, class) pairs sorted by row."""
    flat = classes.tolist()
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).tolist()
    return [flat[bounds[i]:bounds[i + 1]] for i in range(n)]


def sample_single_positive(
        labels: Union[np.ndarray, Sequence[Sequence[int]]],
        num_positives: int = 1,
        seed: int = 1200,
        num_negatives: int = 0,
        num_classes: Optional[int] = None,
        salt: int = 0,
        weights=None,
) -> ObservedLabels:
    """Draw the observed labels of the single-positive setting from full labels.

    Each row keeps ``num_positives`` of its true positives chosen uniformly at random without
    replacement (all of them when it has fewer; none when it has no positive), and optionally
    ``num_negatives`` observed negatives chosen uniformly among its true negatives. The choice is the
    hash rule of this module's docstring: row ``r``'s positives are its true positives ``c`` with the
    smallest ``hash_keys(seed, 2 * salt, r, c)``; negatives use ``hash_keys(seed, 2 * salt + 1, r, c)``.

    With ``weights``, the observed positive of a row is class ``c`` with probability
    ``w_c / sum of the row's positive weights`` (``num_positives > 1``: weighted sampling without
    replacement), the exponential race of the module docstring; a row whose positive weights are all
    zero draws uniformly. This serves any rule that favours some positives: the size or centrality of
    objects (``observed_sampling="size"`` / ``"loc"`` of ``coco2014``), or fixed per-class weights.

    Args:
        labels: Full labels: a dense (N, C) {0, 1} array/tensor, N sequences of positive class indices, or
            a :class:`~spl_losses.data.columns.ListColumn` (a dataset's column read by ``list_column``).
        num_positives: Observed positives per row (1 for SPML).
        seed: Non-negative int seed (1200 in the reference protocol).
        num_negatives: Observed negatives per row (0 for SPML).
        num_classes: C; required with index lists when ``num_negatives > 0`` and not inferable.
        salt: Non-negative int separating independent draws with one seed (e.g. one salt per split).
        weights: Optional non-negative per-entry weights of the positives: a dense (N, C) array (read
            at the positive entries) with dense labels, or per-row lists aligned with index-list labels.
            Negatives are always drawn uniformly.

    Returns:
        :class:`ObservedLabels` with per-row ascending class-index lists.

    Example::

        >>> sample_single_positive([[0, 3], [1], []], seed=1200).positives  # doctest: +SKIP
        [[3], [1], []]
    """
    for name, value in (("num_positives", num_positives), ("num_negatives", num_negatives)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if isinstance(salt, bool) or not isinstance(salt, (int, np.integer)) or salt < 0:
        raise ValueError(f"salt must be a non-negative int, got {salt!r}")
    n, c, rows, classes, entry_weights = _to_coordinates(labels, num_classes, weights)
    keys = hash_keys(seed, 2 * salt, rows, classes)
    if entry_weights is not None:
        _check_weights(rows, entry_weights)
        keys = _weighted_keys(keys, rows, entry_weights, n)
    positives = _smallest_keys_per_row(n, rows, classes, keys, num_positives)
    if num_negatives == 0 or c == 0:
        return ObservedLabels(positives, [[] for _ in range(n)])
    is_negative = np.ones((n, c), dtype=bool)
    is_negative[rows, classes] = False
    neg_rows, neg_classes = np.nonzero(is_negative)
    negatives = _smallest_keys_per_row(
        n, neg_rows, neg_classes, hash_keys(seed, 2 * salt + 1, neg_rows, neg_classes), num_negatives)
    return ObservedLabels(positives, negatives)


def split_train_validation(num_examples: int, fraction: float = 0.2, seed: int = 1200,
                           salt: int = _VALIDATION_SALT) -> Tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_examples)`` into train and validation indices (Cole et al.: 20%, seed 1200, sorted).

    The validation set is the ``round(fraction * num_examples)`` rows with the smallest
    ``hash_keys(seed, salt=0x56414C, row)``: a uniformly random subset, reproducible everywhere.

    Args:
        num_examples: Size of the official training set.
        fraction: Fraction in [0, 1) that becomes validation.
        seed: Non-negative int seed.
        salt: Separates independent splits with one seed (another salt carves a test set, for instance).

    Returns:
        ``(train_indices, validation_indices)``, both sorted int64 arrays, disjoint, covering all rows.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}")
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    num_val = int(round(float(fraction) * num_examples))
    keys = hash_keys(seed, salt, np.arange(num_examples, dtype=np.int64))
    order = np.argsort(keys, kind="stable")
    return np.sort(order[num_val:]).astype(np.int64), np.sort(order[:num_val]).astype(np.int64)


def add_observed_labels(
        dataset,
        labels_column: str = "labels",
        column: str = "observed_labels",
        num_positives: int = 1,
        seed: int = 1200,
        num_negatives: int = 0,
        salt: int = 0,
        weights_column: Optional[str] = None,
):
    """Add single-positive observed labels to any multi-label ``datasets.Dataset``.

    Args:
        dataset: A ``datasets.Dataset`` whose ``labels_column`` is a ``List(ClassLabel)`` (or a list of ints).
        labels_column: Column of full labels (class-index lists).
        column: Name of the new column of observed positives (``List(ClassLabel)`` like the labels).
        num_positives: Observed positives per row.
        seed: Non-negative int seed.
        num_negatives: If > 0, also adds ``{column}_negatives`` with that many observed negatives per row.
        salt: See :func:`sample_single_positive`.
        weights_column: Optional column of per-row weight lists aligned with ``labels_column`` (one
            non-negative weight per listed class): the observed positive is drawn with probability
            proportional to its weight (see :func:`sample_single_positive`).

    Returns:
        A new dataset with the added column(s).
    """
    import datasets

    if labels_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {labels_column!r}; columns: {dataset.column_names}")
    feature = dataset.features[labels_column]
    inner = getattr(feature, "feature", None)
    num_classes = inner.num_classes if isinstance(inner, datasets.ClassLabel) else None
    if num_negatives and num_classes is None:
        raise ValueError(f"observed negatives need the class count: {labels_column!r} must be a List(ClassLabel), "
                         f"got {feature}")
    weights = None
    if weights_column is not None:
        if weights_column not in dataset.column_names:
            raise ValueError(f"dataset has no column {weights_column!r}; columns: {dataset.column_names}")
        weights = list_column(dataset, weights_column)
    drawn = sample_single_positive(list_column(dataset, labels_column), num_positives=num_positives, seed=seed,
                                   num_negatives=num_negatives, num_classes=num_classes, salt=salt,
                                   weights=weights)
    out = dataset.add_column(column, drawn.positives, feature=feature)
    if num_negatives:
        out = out.add_column(f"{column}_negatives", drawn.negatives, feature=feature)
    return out
