"""The data of one run: the dataset's splits, their label matrices and fingerprints, checked once.

The data of one run: the dataset's splits, their label matrices and fingerprints, checked once.

``load_data`` loads anything ``spl_losses.data.load_spml_dataset`` takes and checks the contract the
recipe needs (train / validation / test splits, an ``index`` column equal to the row position,
observed labels on train and validation, images or features), before any training: a missing split or
column is named in the error. Full labels are optional on every split (partial labels as a user has them:
observed positives and observed negatives, ``observed_negatives``): without them on train the full-label
losses are refused, on validation the observed labels validate, on test there is no clean test.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import datasets
import torch

from ..data import dataset_fingerprint, is_dataset, load_spml_dataset
from ..data.builder import GIVEN_OBSERVED_NOTE
from .label_matrices import check_index_column, dense_labels, has_full_labels, label_names, observed_matrix

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
        train_observed: (N, C) observed labels of train: 1 observed positive, 0 unobserved, -1 observed
            negative (negatives only where the dataset gives ``observed_negatives``).
        train_full: (N, C) full train labels, or None when train holds observed labels only.
        val_observed: Observed labels of validation, {-1, 0, 1} likewise.
        val_full: Full validation labels, or None.
        test_full: Full test labels, or None (no clean test: the run records no test metrics).
        fingerprints: Content fingerprint of each split (``spl_losses.data.dataset_fingerprint``).
        train_pseudo: (N, C) pseudo-labels of train from a teacher (``--teacher``), or None.
        labels_origin: Where the observed labels of train come from: ``"simulated"`` (drawn from full labels by
            a registered builder), ``"given"`` (given by the dataset: partial labels, or train without full
            labels) or ``"stored"`` (stored with full labels in a saved or Hub dataset, how they were drawn not
            recorded).
    """

    name: str
    splits: datasets.DatasetDict
    class_names: List[str]
    kind: str
    train_observed: torch.Tensor
    train_full: Optional[torch.Tensor]
    val_observed: torch.Tensor
    val_full: Optional[torch.Tensor]
    test_full: Optional[torch.Tensor]
    fingerprints: Mapping[str, str]
    train_pseudo: Optional[torch.Tensor] = None
    labels_origin: str = "simulated"

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

    def labels_summary(self, rule: Optional[str] = None, seed: Optional[int] = None) -> Dict[str, Any]:
        """What labels the run trains on, for ``results.json`` and the model card.

        Args:
            rule: The rule the builder drew single positives by (``observed_sampling``), for simulated labels.
            seed: Their seed.

        Returns:
            ``kind`` (:attr:`labels_origin`: ``"simulated"`` with the rule and seed, ``"given"`` or ``"stored"``),
            the mean observed positives and negatives per training image, and which splits have full labels.
        """
        observed = self.train_observed
        rows = max(int(observed.shape[0]), 1)
        summary: Dict[str, Any] = {
            "kind": self.labels_origin,
            "positives_per_image": float((observed > 0).sum()) / rows,
            "negatives_per_image": float((observed < 0).sum()) / rows,
        }
        if self.labels_origin == "simulated":
            summary.update(rule=rule or "uniform", seed=seed)
        summary["full_labels"] = {"train": self.train_full is not None, "validation": self.val_full is not None,
                                  "test": self.test_full is not None}
        return summary


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
            raise ValueError(f"dataset {dataset!r}: split {split!r} has no 'observed_labels' column (the observed "
                             "positives of each row); build it with spl_losses.data")
    train, val, test = ds["train"], ds["validation"], ds["test"]
    kind = "features" if "features" in train.column_names else "image"
    if kind == "image" and "image" not in train.column_names:
        raise ValueError(f"dataset {dataset!r} has neither an 'image' nor a 'features' column")
    names = label_names(train)
    num_classes = len(names)
    observed = {}
    for split in ("train", "validation"):
        try:
            observed[split] = observed_matrix(ds[split], num_classes)
        except ValueError as err:
            raise ValueError(f"dataset {dataset!r}, split {split!r}: {err}") from None
    train_full = dense_labels(train, "labels", num_classes) if has_full_labels(train) else None
    if train_full is None or any(GIVEN_OBSERVED_NOTE in (ds[s].info.description or "") for s in ("train", "validation")):
        origin = "given"
    else:
        origin = "simulated" if is_dataset(dataset) else "stored"
    return RunData(
        name=dataset, splits=ds, class_names=names, kind=kind,
        train_observed=observed["train"],
        train_full=train_full,
        val_observed=observed["validation"],
        val_full=dense_labels(val, "labels", num_classes) if has_full_labels(val) else None,
        test_full=dense_labels(test, "labels", num_classes) if has_full_labels(test, compare_observed=False) else None,
        fingerprints={split: dataset_fingerprint(ds[split]) for split in SPLITS},
        labels_origin=origin,
    )
