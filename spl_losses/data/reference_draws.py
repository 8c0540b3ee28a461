"""Observed labels and the validation split drawn exactly as the reference code drew them (opt-in).

The builders' default draws use the counter-based hash of :mod:`spl_losses.data.sampling`: distributed
like the reference's, not the same draws. ``sampling_rng="reference"`` reproduces, bit for bit, the
random streams of the public code of Cole et al. (CVPR 2021) and of Arroyo, Perona & Cole
("Understanding Label Bias in Single Positive Multi-Label Learning", ICLR 2023 Tiny Papers), given
the same rows in the same order:

- uniform draws (their observed-label generation): for each official split (train, then val/test) a
  fresh ``numpy.random.RandomState(seed)``; for each row of the split's label matrix, in order, the
  ascending indices of its positives are shuffled in place (``RandomState.shuffle``) and the first
  ``num_positives`` kept, then the ascending indices of its negatives are shuffled the same way (this
  consumes random numbers even when ``num_negatives`` is 0) and the first ``num_negatives`` kept;
- the validation split (their dataset loader): ``perm = RandomState(split_seed).permutation(N)``,
  ``n_val = int(round(val_fraction * N))``, train = ``sort(perm[:N - n_val])``, validation =
  ``sort(perm[-n_val:])``; validation rows keep the draws made for the official train split (with
  ``n_val = 0`` the validation set is empty here, where the reference's ``perm[-0:]`` would be all rows);
- biased draws (Arroyo et al.): per official split ``random.seed(seed)`` (a fresh ``random.Random``
  here, leaving the global generator alone), then for each row with a positive, in order,
  ``random.choices(range(C), weights)[0]`` over the row's per-class weights (zero for its negatives);
  when all of its positives weigh zero, ``random.choice`` among them. They observe exactly one
  positive and no negative.

The legacy ``RandomState`` stream is frozen by numpy's policy (NEP 19), so these draws do not change
with the numpy version; Python's ``random`` module keeps its seeded sequences stable likewise.
"""
import random
from typing import List, Sequence, Tuple

import numpy as np

from .sampling import ObservedLabels

__all__ = ["reference_uniform_draws", "reference_weighted_draws", "reference_split"]


def reference_uniform_draws(labels: Sequence[Sequence[int]], num_classes: int, num_positives: int = 1,
                            num_negatives: int = 0, seed: int = 1200) -> ObservedLabels:
    """Uniform observed labels of one official split, drawn as the reference code drew them.

    Args:
        labels: Per row, the positive class indices, rows in the reference's order (the formatted
            label matrix of the split).
        num_classes: C.
        num_positives: Observed positives per row.
        num_negatives: Observed negatives per row.
        seed: Seed of the split's ``numpy.random.RandomState``.

    Returns:
        :class:`~spl_losses.data.sampling.ObservedLabels` (per-row ascending lists).
    """
    rng = np.random.RandomState(seed)
    scratch = np.arange(num_classes, dtype=np.int64)
    positives, negatives = [], []
    for row in labels:
        pos = np.array(sorted({int(c) for c in row}), dtype=np.int64)
        rng.shuffle(pos)
        positives.append(sorted(pos[:num_positives].tolist()))
        num_neg_entries = num_classes - pos.size
        if num_negatives == 0:
            rng.shuffle(scratch[:num_neg_entries])  # the same numbers consumed, the result unused
            negatives.append([])
            continue
        is_negative = np.ones(num_classes, dtype=bool)
        is_negative[pos] = False
        neg = np.flatnonzero(is_negative)
        rng.shuffle(neg)
        negatives.append(sorted(neg[:num_negatives].tolist()))
    return ObservedLabels(positives, negatives)


def reference_weighted_draws(labels: Sequence[Sequence[int]], weights: Sequence[Sequence[float]],
                             num_classes: int, seed: int = 1200) -> List[List[int]]:
    """One observed positive per row with probability proportional to its weight, drawn as Arroyo et al.

    Args:
        labels: Per row, the positive class indices (ascending), rows in the reference's order.
        weights: Per row, one weight per entry of ``labels``.
        num_classes: C.
        seed: Seed of the split's ``random.Random``.

    Returns:
        Per row a one-element list (empty for a row without positives, which consumes nothing).
    """
    rng = random.Random(seed)
    population = range(num_classes)
    drawn = []
    for row, row_weights in zip(labels, weights):
        if not len(row):
            drawn.append([])
            continue
        if not any(w > 0 for w in row_weights):
            drawn.append([rng.choice(list(row))])
            continue
        full: List[float] = [0] * num_classes
        for c, w in zip(row, row_weights):
            full[c] += w
        drawn.append([rng.choices(population, weights=full)[0]])
    return drawn


def reference_split(num_examples: int, fraction: float = 0.2, seed: int = 1200) -> Tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_examples)`` into train and validation as the reference's loader did.

    Args:
        num_examples: Rows of the official training split.
        fraction: Fraction that becomes validation.
        seed: Seed of ``numpy.random.RandomState``.

    Returns:
        ``(train_indices, validation_indices)``, sorted int64 arrays.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    num_val = int(round(float(fraction) * num_examples))
    perm = np.random.RandomState(seed).permutation(num_examples)
    num_train = num_examples - num_val
    return np.sort(perm[:num_train]).astype(np.int64), np.sort(perm[num_train:]).astype(np.int64)
