"""Generic builders for users' own data: ``multilabel_files`` and ``multilabel_features``.

``multilabel_files`` reads listings of images, CSV (header ``path,labels``) or JSON lines
(``{"path": ..., "labels": [...]}``), labels given by class name: either one listing of all images
(``listing=``; ``test_fraction``, default 20%, becomes the test set, then ``val_fraction`` of the rest
validation, both drawn with ``split_seed``), or one listing per split, found under ``root`` as
``train.{csv,jsonl}``, ``test.{csv,jsonl}`` and optionally ``validation.{csv,jsonl}`` (else 20% of
train becomes validation), or passed explicitly (``train_file=``, ...). In CSV the names of one row are
joined by ``label_separator`` (default ``|``, so names may contain spaces and commas need no quoting
beyond CSV's)::

    path,labels
    images/0001.jpg,cat|dog
    images/0002.jpg,traffic light

Partial labels as a user has them: an ``observed`` field (CSV column, or JSON key with a list or a
``|``-joined string) instead of, or besides, ``labels``: its names are the observed positives, a name
marked ``-`` an observed negative (``cat|-dog``), every other class unobserved; nothing is drawn for such
rows. Full ``labels`` are optional per listing (given for all its rows or none): a split without them is
written with null ``labels`` (no clean labels, not "no positive"), and the dataset gets an
``observed_negatives`` column. Refused, naming the listing and the row: a row without an observed
positive, a class both observed positive and negative, an observed positive missing from the row's full
labels or a negative among them, and (pinned class list) a class outside the class list::

    path,observed
    images/0001.jpg,cat|-dog
    images/0002.jpg,traffic light

Image paths are relative to the listing's folder and must stay inside it (``../x`` is refused);
absolute paths are accepted as they are. An image listed twice (in one listing, or in two split
listings) is refused, naming both rows: merge them into one row with the union of the labels.
Classes: ``class_names`` or ``classes_file`` (one per line),
or else the sorted union of all names in the listings. A pinned class list (either option) refuses a
row naming any other class, so a typo cannot become a class; an unpinned one is checked once the splits
are made, and the build warns (:class:`ClassListWarning`) about each class seen in fewer than
:data:`MIN_CLASS_ROWS` rows, missing from validation or test, present only in test, or whose name differs
from another's only in case, naming the class, its rows per split and the closest other class name.

``multilabel_features`` reads pre-extracted features, as the reference distributes its ResNet-50
features: ``{split}_features.npy`` (N, D) and ``{split}_labels.npy`` (N, C) multi-hot {0, 1} under
``root`` (or explicit ``train_features=``, ``train_labels=``, ...), class names from ``class_names`` /
``classes_file`` / ``class_names.txt`` under root, else ``"0"`` … ``"C-1"``. Features must be finite
numbers once stored as float32 (a NaN or infinite value, or a float64 beyond float32's range, is refused,
naming the row and the file), and every split must have the train split's width. Rare classes, and
classes missing from a split, are warned about as for ``multilabel_files``.
"""
import difflib
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from .builder import SPMLBuilder, SPMLConfig
from .protocol import PreparedSplit
from .image_checks import join_inside
from .listing import SPLIT_ALIASES, read_class_file, read_listing_rows, refuse_duplicate_images, resolve_file
from .raw_files import RawSplit, index_lists
from .registry import register_dataset
from .sampling import split_train_validation

__all__ = ["MultilabelFilesConfig", "MultilabelFiles", "MultilabelFeaturesConfig", "MultilabelFeatures",
           "ClassListWarning", "class_usage_problems", "MIN_CLASS_ROWS"]

_LISTING_EXTENSIONS = (".csv", ".jsonl", ".json")
_TEST_SALT = 0x544553  # "TES": the salt of the test carve of a single listing
_FINITE_CHECK_ROWS = 65_536
#: A class in fewer rows than this (all splits together) is warned about.
MIN_CLASS_ROWS = 3
#: At most this many classes are named one by one; the rest are counted in one more warning.
_MAX_CLASS_WARNINGS = 10
_PIN_HINT = ("if it is a typo, fix the listing; to pin the class list, give the option classes_file=PATH (one "
             "name a line) or class_names=[a, b, ...] (--dataset-option KEY=VALUE on the command line): rows "
             "naming any other class are then refused")


class ClassListWarning(UserWarning):
    """A class of a user's dataset looks like a mistake: a typo, or too rare to train on or to score."""


def _closest(name: str, others: Sequence[str]) -> Optional[str]:
    """The other class name closest to ``name`` (the same name in another case first), or None."""
    folded = [o for o in others if o.casefold() == name.casefold()]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(name, list(others), n=1, cutoff=0.6)
    return close[0] if close else None


def class_usage_problems(counts: Dict[str, np.ndarray], class_names: Sequence[str],
                         suggest_names: bool = True) -> List[str]:
    """What looks wrong in how the splits use the classes, one sentence per suspicious class.

    A class is suspicious when it has fewer than :data:`MIN_CLASS_ROWS` rows in all, is missing from
    validation or test (it cannot be validated or scored there), is present only in test (nothing trains
    it), or its name differs from another's only in case.

    Args:
        counts: Per split (``train``, ``validation``, ``test``), the number of rows of each class (length C).
        class_names: The class names, in label-index order.
        suggest_names: Name the closest other class (off for names such as ``"0"`` ... ``"C-1"``).

    Returns:
        The sentences, in class order (empty when nothing looks wrong).
    """
    splits = [s for s in ("train", "validation", "test") if s in counts]
    by_fold: Dict[str, List[str]] = {}
    for name in class_names:
        by_fold.setdefault(name.casefold(), []).append(name)
    problems = []
    for c, name in enumerate(class_names):
        per_split = {s: int(counts[s][c]) for s in splits}
        total = sum(per_split.values())
        issues = []
        if total < MIN_CLASS_ROWS:
            issues.append(f"is in only {total} row{'s' if total != 1 else ''}")
        trained = per_split.get("train", 0) + per_split.get("validation", 0)
        if trained == 0 and per_split.get("test", 0) > 0:
            issues.append("is only in test (no example trains it)")
        elif trained > 0:
            missing = [s for s in ("validation", "test") if s in per_split and per_split[s] == 0]
            if missing:
                cannot = {("validation",): "validated", ("test",): "scored"}.get(tuple(missing), "validated or scored")
                issues.append(f"is missing from {' and '.join(missing)} (it cannot be {cannot})")
        twins = [n for n in by_fold[name.casefold()] if n != name]
        if twins:
            issues.append(f"differs only in case from {', '.join(repr(t) for t in twins)}")
        if not issues:
            continue
        rows = ", ".join(f"{s} {n}" for s, n in per_split.items())
        sentence = f"class {name!r} (rows: {rows}) {', '.join(issues)}"
        if suggest_names:
            others = [n for n in class_names if n != name]
            closest = _closest(name, others)
            sentence += f"; closest other class: {closest!r}" if closest is not None else "; no other class is close"
        problems.append(sentence)
    return problems


def _class_counts(prepared: Sequence[PreparedSplit], num_classes: int) -> Dict[str, np.ndarray]:
    counts = {}
    for split in prepared:
        flat = [c for row in split.labels for c in row]
        counts[split.name] = np.bincount(np.asarray(flat, dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts


def _warn_class_usage(dataset: str, prepared: Sequence[PreparedSplit], class_names: Sequence[str],
                      hint: str, suggest_names: bool = True) -> None:
    problems = class_usage_problems(_class_counts(prepared, len(class_names)), class_names, suggest_names)
    for sentence in problems[:_MAX_CLASS_WARNINGS]:
        warnings.warn(f"{dataset}: {sentence}; {hint}", ClassListWarning, stacklevel=3)
    if len(problems) > _MAX_CLASS_WARNINGS:
        warnings.warn(f"{dataset}: {len(problems) - _MAX_CLASS_WARNINGS} more classes look suspicious (rare, "
                      f"missing from a split, or differing only in case); {hint}", ClassListWarning, stacklevel=3)


def _open_npy(path: str) -> np.ndarray:
    """Memory-map a .npy file read-only (``np.load(mmap_mode=...)`` is unusable here: ``datasets`` patches
    ``numpy.load`` in builder modules to open file handles, which cannot be memory-mapped)."""
    try:
        return np.lib.format.open_memmap(path, mode="r")
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npy array file ({err})") from err


@dataclass
class MultilabelFilesConfig(SPMLConfig):
    """Configuration of ``multilabel_files`` (the :class:`SPMLConfig` fields plus the listings).

    Args:
        train_file: Train listing (CSV or JSON lines), relative to root or absolute.
        validation_file: Optional validation listing; if absent, 20% of train.
        test_file: Test listing.
        listing: A single listing of all images instead of per-split listings: ``test_fraction`` of its
            rows become the test set (``split_seed``), then ``val_fraction`` of the rest validation.
        test_fraction: Fraction of ``listing`` that becomes the test set (default 0.2; only with ``listing``).
            The test rows are those with the smallest hash keys for ``split_seed`` (whatever
            ``sampling_rng``: the reference code has no such carve).
        label_separator: Separator of class names within a CSV labels field.
        class_names: Class names in label-index order (tuple), or None.
        classes_file: Text file with one class name per line, or None.
    """

    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    test_file: Optional[str] = None
    listing: Optional[str] = None
    test_fraction: Optional[float] = None
    label_separator: str = "|"
    class_names: Optional[Tuple[str, ...]] = None
    classes_file: Optional[str] = None


class _Listing(NamedTuple):
    """A read listing: its file, the image paths (absolute), each row's full labels, observed positives and
    observed negatives by class name (each None when the listing does not give it) and entry names."""

    path: str
    images: List[str]
    names: Optional[List[List[str]]]
    entries: List[str]
    positives: Optional[List[List[str]]] = None
    negatives: Optional[List[List[str]]] = None

    def subset(self, rows: np.ndarray) -> "_Listing":
        def pick(values):
            return None if values is None else [values[i] for i in rows]

        return _Listing(self.path, pick(self.images), pick(self.names), pick(self.entries), pick(self.positives),
                        pick(self.negatives))

    def all_names(self):
        """Every class name the listing uses (full labels, observed positives and negatives)."""
        for part in (self.names, self.positives, self.negatives):
            for row in part or ():
                yield from row


@register_dataset("multilabel_files")
class MultilabelFiles(SPMLBuilder):
    """Images listed in CSV / JSON-lines files with class-name labels (see the module docstring).

    Relative image paths must stay inside the listing's folder (``../x`` is refused, naming the row);
    absolute paths are taken as they are. Listed files are checked to be images (``verify_images``:
    by default every image of a split listing at most 20,000 of them, and above that the rows with
    absolute paths and the symbolic links, which may point anywhere). A relative row whose real path
    (links resolved) leaves the listing's folder is refused whatever the split size.

    Args:
        cache_dir: Cache folder of the prepared Arrow files.
        **kwargs: :class:`MultilabelFilesConfig` fields (``root``, ``train_file``, ``listing``, ``seed``, ...).
    """

    BUILDER_CONFIG_CLASS = MultilabelFilesConfig
    needs_root = False
    has_validation = True
    path_options = ("class_weights_file", "train_file", "validation_file", "test_file", "listing", "classes_file")
    root_path_options = ("train_file", "validation_file", "test_file", "listing", "classes_file")
    source_description = "A multi-label image dataset listed in CSV / JSON-lines files."
    class_list_note = "the classes given by the user, else the sorted names found in the listings"

    def __init__(self, *args, **kwargs):
        self._listings: Optional[Dict[str, Optional[_Listing]]] = None
        self._absolute_rows: Set[str] = set()
        super().__init__(*args, **kwargs)

    def _check_config(self) -> None:
        super()._check_config()
        cfg = self.config
        if cfg.listing is not None:
            given = [f for f in ("train_file", "validation_file", "test_file") if getattr(cfg, f) is not None]
            if given:
                raise ValueError(f"listing={cfg.listing!r} replaces the per-split listings; drop {given}")
            fraction = 0.2 if cfg.test_fraction is None else cfg.test_fraction
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
                raise ValueError(f"test_fraction must be in (0, 1), got {cfg.test_fraction!r}")
        elif cfg.test_fraction is not None:
            raise ValueError(f"test_fraction={cfg.test_fraction!r} carves the test set out of listing=<file>; "
                             "give listing, or drop test_fraction")
        if not isinstance(cfg.label_separator, str) or not cfg.label_separator:
            raise ValueError(f"label_separator must be a non-empty string, got {cfg.label_separator!r}")

    def _listing_path(self, split: str) -> Optional[str]:
        cfg = self.config
        value = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}[split]
        candidates = [a + ext for a in SPLIT_ALIASES[split] for ext in _LISTING_EXTENSIONS]
        root = self.root if cfg.root is not None else None
        return resolve_file(root, value, candidates, f"{split} listing", required=split != "validation")

    def _read_listing(self, path: str) -> _Listing:
        rows, entries = read_listing_rows(path, self.config.label_separator)
        paths = join_inside(os.path.dirname(os.path.abspath(path)), [r.path for r in rows], path, allow_absolute=True,
                            entry_name=entries.__getitem__)
        self._absolute_rows.update(p for p, row in zip(paths, rows) if os.path.isabs(row.path))
        first = rows[0] if rows else None

        def column(field: str):
            return None if first is None or getattr(first, field) is None else [getattr(r, field) for r in rows]

        return _Listing(path, paths, column("labels"), entries, column("positives"), column("negatives"))

    def _gives_observed_labels(self) -> bool:
        return any(listing is not None and listing.positives is not None for listing in self._all_listings().values())

    def _all_listings(self) -> Dict[str, Optional[_Listing]]:
        if self._listings is None:
            cfg = self.config
            if cfg.listing is not None:
                root = self.root if cfg.root is not None else None
                listing = self._read_listing(resolve_file(root, cfg.listing, [], "listing", required=True))
                fraction = 0.2 if cfg.test_fraction is None else float(cfg.test_fraction)
                rest, test = split_train_validation(len(listing.images), fraction, cfg.split_seed, salt=_TEST_SALT)
                refuse_duplicate_images([listing])
                self._listings = {"train": listing.subset(rest), "validation": None, "test": listing.subset(test)}
            else:
                listings = {}
                for split in ("train", "validation", "test"):
                    path = self._listing_path(split)
                    listings[split] = None if path is None else self._read_listing(path)
                refuse_duplicate_images([listing for listing in listings.values() if listing is not None])
                self._listings = listings
        return self._listings

    def _images_to_verify(self, split: str, paths: Sequence[str]) -> Sequence[str]:
        chosen = super()._images_to_verify(split, paths)
        if self.config.verify_images is None and len(chosen) < len(paths):  # a large split: links and absolute rows
            picked = set(chosen)
            return list(chosen) + [p for p in paths if p in self._absolute_rows and p not in picked]
        return chosen

    def _load_class_names(self) -> List[str]:
        cfg = self.config
        if cfg.class_names is not None:
            return [str(n) for n in cfg.class_names]
        if cfg.classes_file is not None:
            root = self.root if cfg.root is not None else None
            return read_class_file(resolve_file(root, cfg.classes_file, [], "classes file", required=True))
        found = set()
        for listing in self._all_listings().values():
            if listing is not None:
                found.update(listing.all_names())
        if not found:
            raise ValueError("the listings name no class; give class_names or classes_file")
        return sorted(found)

    def _check_class_usage(self, prepared: Sequence[PreparedSplit], class_names: Sequence[str]) -> None:
        cfg = self.config
        pinned = cfg.class_names is not None or cfg.classes_file is not None
        hint = ("the class list is pinned (class_names / classes_file): check the listing's rows" if pinned
                else _PIN_HINT)
        _warn_class_usage(self.name_for_messages, prepared, class_names, hint)

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        listing = self._all_listings()[split]
        if listing is None:
            return None
        class_names = self._load_class_names()
        position = {n: i for i, n in enumerate(class_names)}

        def indices(rows: List[List[str]], field: str) -> List[List[int]]:
            out = []
            for entry, row in zip(listing.entries, rows):
                unknown = [n for n in row if n not in position]
                if unknown:
                    closest = _closest(unknown[0], class_names)
                    hint = f" (did you mean {closest!r}?)" if closest is not None else ""
                    within = "" if field == "labels" else f" in {field!r}"
                    raise ValueError(f"{listing.path}, {entry}: unknown class name(s) {unknown[:3]}{hint}{within}; "
                                     f"known: {class_names[:10]}{' ...' if len(class_names) > 10 else ''}")
                out.append([position[n] for n in row])
            return out

        observed = negatives = None
        if listing.positives is not None:
            observed = indices(listing.positives, "observed")
            negatives = indices(listing.negatives, "observed (negatives)")
        full = listing.names is not None
        labels = indices(listing.names, "labels") if full else observed
        return RawSplit(class_names=class_names, labels=labels, images=listing.images, source=listing.path,
                        observed=observed, observed_negatives=negatives, full_labels=full)


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
    path_options = ("class_weights_file", "classes_file") + tuple(
        f"{split}_{kind}" for split in ("train", "validation", "test") for kind in ("features", "labels"))
    root_path_options = path_options[1:]
    source_description = "Pre-extracted image features with multi-label annotations."
    class_list_note = "the classes given by the user, else '0' ... 'C-1'"

    def _check_class_usage(self, prepared: Sequence[PreparedSplit], class_names: Sequence[str]) -> None:
        default_names = list(class_names) == [str(i) for i in range(len(class_names))]
        _warn_class_usage(self.name_for_messages, prepared, class_names,
                          "check the labels arrays (a class without rows in a split cannot be trained or scored "
                          "there)", suggest_names=not default_names)

    def _arrays(self, split: str) -> Optional[Tuple[str, str]]:
        cfg = self.config
        root = self.root if cfg.root is not None else None
        names = SPLIT_ALIASES[split]
        features = resolve_file(root, getattr(cfg, f"{split}_features"), [f"{n}_features.npy" for n in names],
                            f"{split} features file", required=split != "validation")
        labels = resolve_file(root, getattr(cfg, f"{split}_labels"), [f"{n}_labels.npy" for n in names],
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
        path = resolve_file(root, cfg.classes_file, ["class_names.txt"], "classes file", required=False)
        if path is not None:
            return read_class_file(path)
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
        if split != "train":
            train_path = self._arrays("train")[0]
            width = _open_npy(train_path).shape[1]
            if features.shape[1] != width:
                raise ValueError(f"{features_path} has {features.shape[1]} features per row but {train_path} has "
                                 f"{width}: every split needs the same feature width")
        _check_finite_features(features, features_path)
        return RawSplit(class_names=class_names, labels=index_lists(labels), features=features, source=labels_path)


def _check_finite_features(features: np.ndarray, path: str) -> None:
    """Refuse non-numeric features and NaN / infinite values, naming the first bad row and the file
    (read in blocks, so a memory-mapped file is never loaded whole)."""
    if features.dtype.kind not in "fiu":
        raise ValueError(f"{path}: features must be real numbers, got dtype {features.dtype}")
    if features.dtype.kind != "f":
        return
    for start in range(0, features.shape[0], _FINITE_CHECK_ROWS):
        with np.errstate(over="ignore", invalid="ignore"):  # checked after the cast to float32, as stored
            stored = np.asarray(features[start:start + _FINITE_CHECK_ROWS]).astype(np.float32)
        finite = np.isfinite(stored).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            values = np.asarray(features[row])
            column = int(np.flatnonzero(~np.isfinite(stored[row - start]))[0])
            beyond = " (beyond float32's range: features are stored as float32)" if np.isfinite(values[column]) else ""
            raise ValueError(f"{path}, row {row}, column {column}: features must be finite numbers, "
                             f"found {values[column]}{beyond}")
