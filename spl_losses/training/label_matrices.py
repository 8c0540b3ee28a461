"""Dense label matrices of a dataset split, and the checks the recipe makes on them.

Rows are in the split's ``index`` order (the contract: ``index`` is the row's position).
"""
from typing import TYPE_CHECKING, List, Optional

import numpy as np
import torch

from ..data.columns import equal_list_rows, index_column, label_matrix

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["label_names", "dense_labels", "has_full_labels", "estimate_expected_num_pos", "check_index_column"]


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


def has_full_labels(split: "datasets.Dataset") -> bool:
    """Whether a split carries full labels that differ from its single positives.

    False when ``labels`` is missing, or when every row's ``labels`` equals its ``observed_labels``
    (a dataset published with single positives only); rows are compared as multisets, vectorised.

    Args:
        split: The split.
    """
    if "labels" not in split.column_names:
        return False
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
