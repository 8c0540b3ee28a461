"""Generic builders for users' own data: ``multilabel_files`` and ``multilabel_features``.

``multilabel_files`` reads one listing per split, CSV (header ``path,labels``) or JSON lines
(``{"path": ..., "labels": [...]}``), labels given by class name. Found under ``root`` as
``train.{csv,jsonl}``, ``test.{csv,jsonl}`` and optionally ``validation.{csv,jsonl}`` (else 20% of
train becomes validation), or passed explicitly (``train_file=``, ...). In CSV the names of one row are
joined by ``label_separator`` (default ``|``, so names may contain spaces); image paths are relative to
the listing's folder unless absolute. Classes: ``class_names`` or ``classes_file`` (one per line), or
else the sorted union of all names in the listings.

``multilabel_features`` reads pre-extracted features, as the reference distributes its ResNet-50
features: ``{split}_features.npy`` (N, D) and ``{split}_labels.npy`` (N, C) multi-hot {0, 1} under
``root`` (or explicit ``train_features=``, ``train_labels=``, ...), class names from ``class_names`` /
``classes_file`` / ``class_names.txt`` under root, else ``"0"`` … ``"C-1"``.
"""
import csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .builder import RawSplit, SPMLBuilder, SPMLConfig
from .registry import register_dataset

__all__ = ["MultilabelFilesConfig", "MultilabelFiles", "MultilabelFeaturesConfig", "MultilabelFeatures"]

_LISTING_EXTENSIONS = (".csv", ".jsonl", ".json")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


def _read_class_file(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise ValueError(f"missing classes file: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"classes file {path} lists no class")
    return names


def _open_npy(path: str) -> np.ndarray:
    """Memory-map a .npy file read-only (``np.load(mmap_mode=...)`` is unusable here: ``datasets`` patches
    ``numpy.load`` in builder modules to open file handles, which cannot be memory-mapped)."""
    try:
        return np.lib.format.open_memmap(path, mode="r")
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npy array file ({err})") from err


def _resolve(root: Optional[str], value: Optional[str], candidates: Sequence[str], what: str,
             required: bool) -> Optional[str]:
    """Return the path of a configured or default file, or raise naming the expected path."""
    if value is not None:
        path = value if os.path.isabs(value) or root is None else os.path.join(root, value)
        if not os.path.isfile(path):
            raise ValueError(f"missing {what}: {path}")
        return path
    if root is not None:
        for name in candidates:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                return path
    if required:
        where = f"under {root}" if root is not None else "(no root given)"
        raise ValueError(f"missing {what}: none of {list(candidates)} found {where}; pass it explicitly")
    return None


@dataclass
class MultilabelFilesConfig(SPMLConfig):
    """Configuration of ``multilabel_files`` (the :class:`SPMLConfig` fields plus the listings).

    Args:
        train_file: Train listing (CSV or JSON lines), relative to root or absolute.
        validation_file: Optional validation listing; if absent, 20% of train.
        test_file: Test listing.
        label_separator: Separator of class names within a CSV labels field.
        class_names: Class names in label-index order (tuple), or None.
        classes_file: Text file with one class name per line, or None.
    """

    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    test_file: Optional[str] = None
    label_separator: str = "|"
    class_names: Optional[Tuple[str, ...]] = None
    classes_file: Optional[str] = None


@register_dataset("multilabel_files")
class MultilabelFiles(SPMLBuilder):
    """Images listed in CSV / JSON-lines files with class-name labels (see the module docstring).

    Args:
        cache_dir: Cache folder of the prepared Arrow files.
        **kwargs: :class:`MultilabelFilesConfig` fields (``root``, ``train_file``, ``seed``, ...).
    """

    BUILDER_CONFIG_CLASS = MultilabelFilesConfig
    needs_root = False
    has_validation = True
    source_description = "A multi-label image dataset listed in CSV / JSON-lines files."
    class_list_note = "the classes given by the user, else the sorted names found in the listings"

    def __init__(self, *args, **kwargs):
        self._listings: Optional[Dict[str, Optional[Tuple[str, List[str], List[List[str]]]]]] = None
        super().__init__(*args, **kwargs)

    def _listing_path(self, split: str) -> Optional[str]:
        cfg = self.config
        value = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}[split]
        candidates = [a + ext for a in _SPLIT_ALIASES[split] for ext in _LISTING_EXTENSIONS]
        root = self.root if cfg.root is not None else None
        return _resolve(root, value, candidates, f"{split} listing", required=split != "validation")

    def _read_listing(self, path: str) -> Tuple[List[str], List[List[str]]]:
        folder = os.path.dirname(os.path.abspath(path))
        sep = self.config.label_separator
        paths, names = [], []
        if path.endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"path", "labels"} - set(reader.fieldnames or [])
                if missing:
                    raise ValueError(f"{path}: the CSV header must have columns 'path' and 'labels', "
                                     f"got {reader.fieldnames}")
                for row in reader:
                    paths.append(row["path"])
                    text = (row["labels"] or "").strip()
                    names.append([n.strip() for n in text.split(sep) if n.strip()] if text else [])
        else:
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}, line {line_no}: not valid JSON ({err})") from err
                    if not isinstance(record, dict) or "path" not in record or "labels" not in record:
                        raise ValueError(f"{path}, line {line_no}: expected an object with 'path' and 'labels'")
                    labels = record["labels"]
                    if isinstance(labels, str):
                        labels = [n.strip() for n in labels.split(sep) if n.strip()]
                    paths.append(record["path"])
                    names.append([str(n) for n in labels])
        paths = [p if os.path.isabs(p) else os.path.join(folder, p) for p in paths]
        return paths, names

    def _all_listings(self):
        if self._listings is None:
            self._listings = {}
            for split in ("train", "validation", "test"):
                path = self._listing_path(split)
                self._listings[split] = None if path is None else (path, *self._read_listing(path))
        return self._listings

    def _load_class_names(self) -> List[str]:
        cfg = self.config
        if cfg.class_names is not None:
            return [str(n) for n in cfg.class_names]
        if cfg.classes_file is not None:
            path = cfg.classes_file
            if not os.path.isabs(path) and cfg.root is not None:
                path = os.path.join(self.root, path)
            return _read_class_file(path)
        found = set()
        for listing in self._all_listings().values():
            if listing is not None:
                found.update(n for row in listing[2] for n in row)
        if not found:
            raise ValueError("the listings name no class; give class_names or classes_file")
        return sorted(found)

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        listing = self._all_listings()[split]
        if listing is None:
            return None
        path, images, names = listing
        class_names = self._load_class_names()
        position = {n: i for i, n in enumerate(class_names)}
        labels = []
        for row_no, row in enumerate(names):
            unknown = [n for n in row if n not in position]
            if unknown:
                raise ValueError(f"{path}, row {row_no + 1}: unknown class name(s) {unknown[:3]}; "
                                 f"known: {class_names[:10]}{' ...' if len(class_names) > 10 else ''}")
            labels.append([position[n] for n in row])
        return RawSplit(class_names=class_names, labels=labels, images=images, source=path)


@dataclass
class MultilabelFeaturesConfig(SPMLConfig):
    """Configuration of ``multilabel_features`` (the :class:`SPMLConfig` fields plus the array files).

    Args:
        train_features, train_labels: (N, D) features and (N, C) multi-hot labels (.npy) of the train set.
        validation_features, validation_labels: Optional validation arrays (else 20% of train).
        test_features, test_labels: Test arrays.
        class_names: Class names (tuple), or None.
        classes_file: Text file with one class name per line, or None (``class_names.txt`` under root
            is used when present).
    """

    train_features: Optional[str] = None
    train_labels: Optional[str] = None
    validation_features: Optional[str] = None
    validation_labels: Optional[str] = None
    test_features: Optional[str] = None
    test_labels: Optional[str] = None
    class_names: Optional[Tuple[str, ...]] = None
    classes_file: Optional[str] = None


@register_dataset("multilabel_features")
class MultilabelFeatures(SPMLBuilder):
    """Pre-extracted (N, D) features with (N, C) multi-hot labels (see the module docstring).

    Args:
        cache_dir: Cache folder of the prepared Arrow files.
        **kwargs: :class:`MultilabelFeaturesConfig` fields (``root``, ``train_features``, ``seed``, ...).
    """

    BUILDER_CONFIG_CLASS = MultilabelFeaturesConfig
    input_kind = "features"
    needs_root = False
    has_validation = True
    source_description = "Pre-extracted image features with multi-label annotations."
    class_list_note = "the classes given by the user, else '0' ... 'C-1'"

    def _arrays(self, split: str) -> Optional[Tuple[str, str]]:
        cfg = self.config
        root = self.root if cfg.root is not None else None
        names = _SPLIT_ALIASES[split]
        features = _resolve(root, getattr(cfg, f"{split}_features"), [f"{n}_features.npy" for n in names],
                            f"{split} features file", required=split != "validation")
        labels = _resolve(root, getattr(cfg, f"{split}_labels"), [f"{n}_labels.npy" for n in names],
                          f"{split} labels file", required=split != "validation" or features is not None)
        if features is None:
            if labels is not None:
                raise ValueError(f"{labels} has no matching validation features file")
            return None
        return features, labels

    def _feature_dim(self) -> Optional[int]:
        features_path, _ = self._arrays("train")
        shape = _open_npy(features_path).shape
        return int(shape[1]) if len(shape) == 2 else None

    def _load_class_names(self) -> List[str]:
        cfg = self.config
        if cfg.class_names is not None:
            return [str(n) for n in cfg.class_names]
        root = self.root if cfg.root is not None else None
        path = _resolve(root, cfg.classes_file, ["class_names.txt"], "classes file", required=False)
        if path is not None:
            return _read_class_file(path)
        _, labels_path = self._arrays("train")
        shape = _open_npy(labels_path).shape
        if len(shape) != 2:
            raise ValueError(f"{labels_path}: labels must be a 2-D (N, C) array, got shape {shape}")
        return [str(i) for i in range(shape[1])]

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        paths = self._arrays(split)
        if paths is None:
            return None
        features_path, labels_path = paths
        features = _open_npy(features_path)
        labels = np.asarray(_open_npy(labels_path))
        if features.ndim != 2:
            raise ValueError(f"{features_path}: features must be a 2-D (N, D) array, got shape {features.shape}")
        if labels.ndim != 2:
            raise ValueError(f"{labels_path}: labels must be a 2-D (N, C) array, got shape {labels.shape}")
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"{features_path} has {features.shape[0]} rows but {labels_path} has {labels.shape[0]}")
        class_names = self._load_class_names()
        if labels.shape[1] != len(class_names):
            raise ValueError(f"class list mismatch: {labels_path} has {labels.shape[1]} classes, the class list "
                             f"has {len(class_names)}")
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            raise ValueError(f"{labels_path}: labels must be multi-hot {{0, 1}}, found {np.unique(labels[bad])[:5]}")
        rows, classes = np.nonzero(labels)
        counts = np.bincount(rows, minlength=labels.shape[0])
        label_lists = [chunk.tolist() for chunk in np.split(classes, np.cumsum(counts)[:-1])]
        return RawSplit(class_names=class_names, labels=label_lists, features=features, source=labels_path)
