"""The data of one run: the dataset's splits, their label matrices and fingerprints, checked once.

The data of one run: the dataset's splits, their label matrices and fingerprints, checked once.

``load_data`` loads anything ``spl_losses.data.load_spml_dataset`` takes and checks the contract the
recipe needs (train / validation / test splits, an ``index`` column equal to the row position,
single positives on train and validation, full labels on test, images or features), before any
training: a missing split or column is named in the error.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import datasets
import torch

from ..data import dataset_fingerprint, load_spml_dataset
from .label_matrices import check_index_column, dense_labels, has_full_labels, label_names

__all__ = ["RunData", "load_data", "SPLITS"]


SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RunData:
    """A loaded, checked SPML dataset and its dense label matrices (rows in ``index`` order).

    Args:
        name: What ``--dataset`` named (builder name, folder or Hub id).
        splits: The ``DatasetDict`` (train, validation, test).
        class_names: The C class names.
        kind: ``"image"`` or ``"features"``.
        train_observed: (N, C) {0, 1} single positives of train.
        train_full: (N, C) full train labels, or None when train holds single positives only.
        val_observed: Single positives of validation.
        val_full: Full validation labels, or None.
        test_full: Full test labels.
        fingerprints: Content fingerprint of each split (``spl_losses.data.dataset_fingerprint``).
        train_pseudo: (N, C) pseudo-labels of train from a teacher (``--teacher``), or None.
    """

    name: str
    splits: datasets.DatasetDict
    class_names: List[str]
    kind: str
    train_observed: torch.Tensor
    train_full: Optional[torch.Tensor]
    val_observed: torch.Tensor
    val_full: Optional[torch.Tensor]
    test_full: torch.Tensor
    fingerprints: Mapping[str, str]
    train_pseudo: Optional[torch.Tensor] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return len(self.splits["train"])

    def split_size(self, split: str) -> int:
        """Rows of ``split``.

        Args:
            split: ``train``, ``validation`` or ``test``.
        """
        return len(self.splits[split])


def load_data(dataset: str, data_dir: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
              observed_seed: int = 1200, force_rebuild: bool = False) -> RunData:
    """Load and check a dataset for training; every label matrix is built here, once.

    Args:
        dataset: Builder name, ``save_to_disk`` folder, Parquet folder or Hub dataset id.
        data_dir: Raw data root of a builder.
        options: Builder options (``--dataset-option``).
        observed_seed: Seed of the single positives.
        force_rebuild: Build the dataset again even where a cached build of the same inputs exists.

    Returns:
        The :class:`RunData`.

    Raises:
        ValueError: a split, an ``index``/``observed_labels``/``labels`` column or the image/features column
            is missing (named).
    """
    ds = load_spml_dataset(dataset, data_dir=data_dir, seed=observed_seed, force_rebuild=force_rebuild,
                           **dict(options or {}))
    for split in SPLITS:
        if split not in ds:
            raise ValueError(f"dataset {dataset!r} has no {split!r} split (splits: {list(ds)})")
        check_index_column(ds[split], split)
        if split != "test" and "observed_labels" not in ds[split].column_names:
            raise ValueError(f"dataset {dataset!r}: split {split!r} has no 'observed_labels' column (the single "
                             "positive per row); build it with spl_losses.data")
    train, val, test = ds["train"], ds["validation"], ds["test"]
    kind = "features" if "features" in train.column_names else "image"
    if kind == "image" and "image" not in train.column_names:
        raise ValueError(f"dataset {dataset!r} has neither an 'image' nor a 'features' column")
    if "labels" not in test.column_names:
        raise ValueError(f"dataset {dataset!r}: the test split needs full 'labels' to be scored")
    names = label_names(train)
    num_classes = len(names)
    return RunData(
        name=dataset, splits=ds, class_names=names, kind=kind,
        train_observed=dense_labels(train, "observed_labels", num_classes),
        train_full=dense_labels(train, "labels", num_classes) if has_full_labels(train) else None,
        val_observed=dense_labels(val, "observed_labels", num_classes),
        val_full=dense_labels(val, "labels", num_classes) if has_full_labels(val) else None,
        test_full=dense_labels(test, "labels", num_classes),
        fingerprints={split: dataset_fingerprint(ds[split]) for split in SPLITS},
    )
