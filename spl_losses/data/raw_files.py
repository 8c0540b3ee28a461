"""What the four benchmark readers share: the parsed form of a raw benchmark and cheap file checks.

A reader turns an official raw download into a :class:`RawBenchmark`: the class names and, per
official split, every listed image path with its dense {0, 1} label matrix (images without any
positive label included, as all-zero rows: the builder drops or keeps them and counts them in its
build report). Readers never decode images.
"""
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence

import numpy as np

from .builder import RawSplit

__all__ = ["DenseSplit", "RawBenchmark", "require_file", "require_dir", "find_missing_files",
           "check_images_exist"]


@dataclass
class DenseSplit:
    """One official split of a raw benchmark, labels as a dense matrix.

    Args:
        image_paths: Absolute path of each listed image, in the reference's row order.
        labels: (N, C) uint8 full labels, 1 = present; all-zero rows for images without a positive.
        source_files: The annotation files this split was read from (named in messages and reports).
    """

    image_paths: List[str]
    labels: np.ndarray
    source_files: List[str] = field(default_factory=list)

    def __post_init__(self):
        if self.labels.ndim != 2 or self.labels.shape[0] != len(self.image_paths):
            raise ValueError(
                f"labels must have shape ({len(self.image_paths)}, C), one row per image, "
                f"got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_without_positive(self) -> int:
        """Rows with no positive label."""
        return int((self.labels.sum(axis=1) == 0).sum())

    def to_raw_split(self, class_names: Sequence[str]) -> RawSplit:
        """Convert to the builder's :class:`~spl_losses.data.builder.RawSplit` (class-index lists).

        Args:
            class_names: The class names of the label columns.
        """
        if len(class_names) != self.labels.shape[1]:
            raise ValueError(f"{len(class_names)} class names for {self.labels.shape[1]} label columns "
                             f"({', '.join(self.source_files)})")
        rows, columns = np.nonzero(self.labels)
        counts = np.bincount(rows, minlength=len(self))
        labels = [chunk.tolist() for chunk in np.split(columns, np.cumsum(counts)[:-1])] if len(self) else []
        return RawSplit(class_names=list(class_names), labels=labels, images=list(self.image_paths),
                        source=", ".join(self.source_files))


@dataclass
class RawBenchmark:
    """A raw benchmark read from disk: class names and the official splits.

    Args:
        class_names: The C class names, in label-column order.
        splits: ``{"train": DenseSplit, "test": DenseSplit}``; ``train`` is the official training set
            (validation is carved out of it later), ``test`` the official val/test set.
    """

    class_names: List[str]
    splits: Dict[str, DenseSplit]

    def __post_init__(self):
        for name, split in self.splits.items():
            if split.labels.shape[1] != len(self.class_names):
                raise ValueError(
                    f"split {name!r} has {split.labels.shape[1]} label columns but there are "
                    f"{len(self.class_names)} class names")


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
        raise ValueError(
            f"Incomplete raw tree: {len(missing)} image(s) listed in {listed_in} are absent, "
            f"first: {missing[0]!r}")
