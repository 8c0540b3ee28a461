"""The raw form of a split, as every builder reads it, and the cheap checks of raw files.

A builder turns its raw download into one :class:`RawSplit` per official split: the class names,
per-example class-index lists (images without any positive label included, as empty lists: the
builder drops or keeps them and counts them in its build report) and the image paths or feature
rows. Readers never decode images.
"""
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = ["RawSplit", "index_lists", "check_raw_split", "require_file", "require_dir", "find_missing_files",
           "check_images_exist"]


@dataclass
class RawSplit:
    """One split as read from the raw files, before any single-positive processing.

    Args:
        class_names: The class names in label-index order, as found in this split's source.
        labels: One sequence of positive class indices per example (empty when it has none).
        images: Per-example image file paths (absolute) or encoded image bytes; None for feature datasets.
        features: (N, D) array of pre-extracted features; None for image datasets.
        source: The file (or files) the split was read from, named in error messages.
        label_weights: Optional per-example weights aligned with ``labels`` (one non-negative weight per
            listed class), used by weighted observed-label draws (``observed_sampling``).
        observed: Optional per-example observed positives given by the source (partial labels as a user
            has them): then nothing is drawn for this split's rows. None: drawn from ``labels``.
        observed_negatives: Optional per-example observed negatives given with ``observed``.
        full_labels: Whether ``labels`` are full labels; False when the source gives observed labels only
            (``labels`` then repeats ``observed`` for the checks and counts, and is not written as full labels).
    """

    class_names: Sequence[str]
    labels: Sequence[Sequence[int]]
    images: Optional[Sequence[Union[str, bytes]]] = None
    features: Optional[np.ndarray] = None
    source: str = ""
    label_weights: Optional[Sequence[Sequence[float]]] = None
    observed: Optional[Sequence[Sequence[int]]] = None
    observed_negatives: Optional[Sequence[Sequence[int]]] = None
    full_labels: bool = True

    def __len__(self) -> int:
        return len(self.labels)


def index_lists(labels: np.ndarray) -> List[List[int]]:
    """Per-row ascending lists of the nonzero columns of a dense (N, C) label matrix.

    Args:
        labels: (N, C) array, nonzero = positive.
    """
    rows, columns = np.nonzero(labels)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=labels.shape[0]))]).tolist()
    flat = columns.tolist()
    return [flat[bounds[i]:bounds[i + 1]] for i in range(labels.shape[0])]


def require_file(path: str, what: str) -> str:
    """Return ``path`` if it is a file, else raise a ValueError naming it.

    Args:
        path: The file that must exist.
        what: What the file is, for the message (``"VOC class list file"``).
    """
    if not os.path.isfile(path):
        raise ValueError(f"Incomplete raw tree: missing {what} {path!r}")
    return path


def require_dir(path: str, what: str) -> str:
    """Return ``path`` if it is a directory, else raise a ValueError naming it.

    Args:
        path: The directory that must exist.
        what: What the directory is, for the message.
    """
    if not os.path.isdir(path):
        raise ValueError(f"Incomplete raw tree: missing {what} directory {path!r}")
    return path


def find_missing_files(paths: Iterable[str]) -> List[str]:
    """Return the paths that are not existing files, in input order.

    Each parent directory is listed once with ``os.scandir`` instead of one ``stat`` per file, which
    keeps the check cheap for hundreds of thousands of images.

    Args:
        paths: File paths.
    """
    paths = list(paths)
    by_dir = defaultdict(list)
    for position, path in enumerate(paths):
        directory, name = os.path.split(path)
        by_dir[directory].append((position, name))
    missing = []
    for directory, entries in by_dir.items():
        try:
            with os.scandir(directory or ".") as it:
                present = {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing.extend(position for position, name in entries if name not in present)
    return [paths[i] for i in sorted(missing)]


def check_images_exist(paths: Sequence[str], listed_in: str) -> None:
    """Raise a ValueError naming the first missing image if any listed image is absent.

    Args:
        paths: Image paths that the annotations list.
        listed_in: The annotation file (or files) that list them, for the message.
    """
    missing = find_missing_files(paths)
    if missing:
        raise ValueError(f"{len(missing)} image(s) listed in {listed_in} are missing, first: {missing[0]!r}")


def check_raw_split(raw: RawSplit, where: str) -> None:
    """Check a split's structure: one kind of data, one data row per label row, class indices in range,
    weights (if any) aligned with the labels, finite and non-negative, and every listed image present.

    Args:
        raw: The split.
        where: What it was read from, for messages.
    """
    n = len(raw.labels)
    if (raw.images is None) == (raw.features is None):
        raise ValueError(f"a RawSplit needs exactly one of images or features ({where})")
    data_len = len(raw.images) if raw.images is not None else len(raw.features)
    if data_len != n:
        raise ValueError(f"{where}: {data_len} {'images' if raw.images is not None else 'feature rows'} "
                         f"but {n} label rows")
    if raw.features is not None and np.ndim(raw.features) != 2:
        raise ValueError(f"{where}: features must be a 2-D (N, D) array, got shape {np.shape(raw.features)}")
    num_classes = len(raw.class_names)
    lengths = np.fromiter((len(r) for r in raw.labels), dtype=np.int64, count=n)
    flat = np.fromiter((int(c) for r in raw.labels for c in r), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        bad_row = int(np.repeat(np.arange(n), lengths)[(flat < 0) | (flat >= num_classes)][0])
        raise ValueError(f"{where}: example {bad_row} has class indices outside [0, {num_classes - 1}]: "
                         f"{list(raw.labels[bad_row])}")
    if raw.label_weights is not None:
        _check_label_weights(raw.label_weights, lengths, where)
    if not raw.full_labels and raw.observed is None:
        raise ValueError(f"{where}: a split without full labels needs its observed labels")
    for part in (raw.observed, raw.observed_negatives):
        if part is not None and len(part) != n:
            raise ValueError(f"{where}: {len(part)} rows of observed labels but {n} label rows")
    if raw.images is not None:
        check_images_exist([p for p in raw.images if isinstance(p, str)], where)


def _check_label_weights(label_weights: Sequence[Sequence[float]], lengths: np.ndarray, where: str) -> None:
    if len(label_weights) != lengths.size:
        raise ValueError(f"{where}: {len(label_weights)} rows of label weights for {lengths.size} label rows")
    for row, (weights, n) in enumerate(zip(label_weights, lengths.tolist())):
        if len(weights) != n:
            raise ValueError(f"{where}: example {row} has {len(weights)} label weights for {n} labels")
        if n and not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"{where}: example {row} has label weights that are not finite and >= 0: {list(weights)}")
