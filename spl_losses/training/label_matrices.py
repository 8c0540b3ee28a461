"""Dense label matrices of a dataset split, and the checks the recipe makes on them.

Rows are in the split's ``index`` order (the contract: ``index`` is the row's position).
"""
from typing import TYPE_CHECKING, List, Optional

import numpy as np
import torch

from ..data.columns import equal_list_rows, index_column, label_matrix

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["label_names", "dense_labels", "observed_matrix", "has_full_labels", "estimate_expected_num_pos",
           "check_index_column"]


def label_names(split: "datasets.Dataset") -> List[str]:
    """Class names of a split (from the ``observed_labels`` or ``labels`` ClassLabel feature).

    Args:
        split: A dataset split of the SPML contract.
    """
    for column in ("observed_labels", "labels"):
        feature = split.features.get(column)
        inner = getattr(feature, "feature", None)
        names = getattr(inner, "names", None)
        if names:
            return list(names)
    raise ValueError(f"cannot find class names: expected 'labels' or 'observed_labels' to be "
                     f"List(ClassLabel(names=...)), got features {split.features}")


def check_index_column(split: "datasets.Dataset", split_name: str) -> None:
    """Check that the ``index`` column is the row position 0..N-1.

    Args:
        split: The split.
        split_name: Its name, for messages.
    """
    if "index" not in split.column_names:
        raise ValueError(f"split {split_name!r} has no 'index' column (expected int64 row positions)")
    try:
        index = index_column(split, "index")
    except ValueError as err:
        raise ValueError(f"split {split_name!r}: {err}") from None
    wrong = np.flatnonzero(index != np.arange(index.size))
    if wrong.size:
        raise ValueError(f"split {split_name!r}: the 'index' column must equal the row position 0..{len(split) - 1}; "
                         f"row {int(wrong[0])} has index {int(index[wrong[0]])}")


def dense_labels(split: "datasets.Dataset", column: str, num_classes: int) -> torch.Tensor:
    """The (N, C) {0, 1} float32 matrix of a list-of-class-indices column (read in bulk from Arrow).

    Args:
        split: The split.
        column: ``"labels"`` (full) or ``"observed_labels"`` (single positives).
        num_classes: C.
    """
    return label_matrix(split, column, num_classes)


def observed_matrix(split: "datasets.Dataset", num_classes: int) -> torch.Tensor:
    """The (N, C) {-1, 0, 1} float32 observed labels of a split: 1 at ``observed_labels``, -1 at
    ``observed_negatives`` (when the split has that column), 0 elsewhere (unobserved).

    Args:
        split: The split.
        num_classes: C.
    """
    observed = label_matrix(split, "observed_labels", num_classes)
    if "observed_negatives" in split.column_names:
        negatives = label_matrix(split, "observed_negatives", num_classes)
        both = torch.nonzero((observed > 0) & (negatives > 0))
        if both.numel():
            row, cls = (int(v) for v in both[0])
            raise ValueError(f"row {row}: class {cls} is both an observed positive and an observed negative")
        observed = observed - negatives
    return observed


def has_full_labels(split: "datasets.Dataset", compare_observed: bool = True) -> bool:
    """Whether a split carries full labels (that differ from its single positives).

    False when ``labels`` is missing or null on every row (observed labels only), or, with
    ``compare_observed``, when every row's ``labels`` equals its ``observed_labels`` (a dataset published
    with single positives only); rows are compared as multisets, vectorised.

    Args:
        split: The split.
        compare_observed: Count labels equal to the observed positives as no full labels.
    """
    from ..data.loading import has_labels_column

    if not has_labels_column(split, "labels"):
        return False
    if not compare_observed:
        return True
    if "observed_labels" not in split.column_names:
        return True
    return not bool(equal_list_rows(split, "labels", "observed_labels").all())


def estimate_expected_num_pos(full_labels: Optional[torch.Tensor]) -> Optional[float]:
    """k estimated as the mean number of positives per row of clean labels (None without rows).

    Args:
        full_labels: (N, C) multi-hot labels, or None.
    """
    if full_labels is None or full_labels.shape[0] == 0:
        return None
    return float(full_labels.sum(dim=1).mean())
