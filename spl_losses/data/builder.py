"""The common base of every SPML dataset builder, and ``build_dataset``.

A benchmark builder subclasses :class:`SPMLBuilder` (a ``datasets.GeneratorBasedBuilder``) and only
reads its raw files: it implements ``_load_raw_split(split)`` returning a :class:`RawSplit` (class
names, per-example image paths or feature rows, positive class indices). The base does the rest of
SPEC §6, identically for every benchmark:

- checks: the raw root exists, every listed image file exists, class indices are in range, the class
  lists of all splits agree (errors name the file);
- drops examples without any positive label (as the reference does) and counts them in the report;
- carves validation = ``val_fraction`` (20%) of the official train set (``split_seed`` 1200, sorted
  indices) unless the builder has its own validation split; the official val/test set is ``test``;
- draws the observed single positives (:func:`spl_losses.data.sampling.sample_single_positive`,
  ``seed`` 1200) for every split, salted per split (train 1, validation 2, test 3);
- writes the columns ``image`` (datasets ``Image(mode="RGB")``, stored as a path or encoded bytes,
  never decoded during the build) or ``features`` (``List(Value("float32"))``), ``labels``,
  ``observed_labels`` (``List(ClassLabel)``; test rows carry a draw too, for "observed" evaluation
  only: test metrics use ``labels``), optionally ``observed_negatives``, and ``index`` (int64 row
  position within the split).

Every config parameter (``root``, ``seed``, ...) is part of the ``datasets`` config id and the hash
of the builder's source code is the builder hash, so a cached build is reused only for the same root,
parameters and code.

Example::

    >>> from spl_losses.data import build_dataset
    >>> ds = build_dataset("digits_mosaic", seed=1200)  # doctest: +SKIP
    >>> ds["train"].features["labels"].feature.names  # doctest: +SKIP
"""
import collections
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from .registry import get_dataset_class
from .sampling import sample_single_positive, split_train_validation

__all__ = ["RawSplit", "SPMLConfig", "SPMLBuilder", "create_builder", "build_dataset", "SPLIT_NAMES",
           "REPORT_FILENAME"]

SPLIT_NAMES = ("train", "validation", "test")
REPORT_FILENAME = "spml_build_report.json"
_SAMPLING_SALTS = {"train": 1, "validation": 2, "test": 3}


@dataclass
class RawSplit:
    """One split as read from the raw files, before any SPML processing.

    Args:
        class_names: The class names in label-index order, as found in this split's source.
        labels: One sequence of positive class indices per example (empty when it has none).
        images: Per-example image file paths (absolute, checked to exist) or encoded image bytes;
            None for feature datasets.
        features: (N, D) array of pre-extracted features; None for image datasets.
        source: The file (or folder) the split was read from, named in error messages.
    """

    class_names: Sequence[str]
    labels: Sequence[Sequence[int]]
    images: Optional[Sequence[Union[str, bytes]]] = None
    features: Optional[np.ndarray] = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SPMLConfig(datasets.BuilderConfig):
    """Configuration shared by all SPML builders; every field is part of the cache id.

    Args:
        root: Folder holding the raw download (None for builders that need none).
        seed: Seed of the observed single positives (1200 in the reference protocol).
        split_seed: Seed of the train/validation split (1200).
        val_fraction: Fraction of the official train set that becomes validation (0.2).
        num_positives: Observed positives per row (1 for SPML).
        num_negatives: Observed negatives per row (0 for SPML); > 0 adds ``observed_negatives``.
        drop_without_positive: Drop examples with no positive label, as the reference does.
    """

    root: Optional[str] = None
    seed: int = 1200
    split_seed: int = 1200
    val_fraction: float = 0.2
    num_positives: int = 1
    num_negatives: int = 0
    drop_without_positive: bool = True


@dataclass
class _PreparedSplit:
    """A final split ready to write (kept as one object so ``datasets`` never shards it)."""

    name: str
    raw: RawSplit
    rows: np.ndarray  # rows of ``raw`` in this split, in order
    labels: List[List[int]]
    observed: List[List[int]]
    negatives: Optional[List[List[int]]]
    report: Dict[str, Any] = field(default_factory=dict)


class SPMLBuilder(datasets.GeneratorBasedBuilder):
    """Base ``datasets.GeneratorBasedBuilder`` of the SPML benchmarks (see the module docstring).

    Subclasses set the class attributes below and implement ``_load_raw_split``; they may override
    ``_load_class_names`` when the class list is cheaper to read than a whole split.

    Class attributes:
        input_kind: ``"image"`` or ``"features"``.
        needs_root: Whether ``root`` is required.
        has_validation: Whether ``_load_raw_split("validation")`` returns the validation split
            (otherwise it is carved from train).
        expected_num_pos: k of EPR/ROLE for this benchmark, or None.
        num_classes: Class count when fixed by the benchmark, or None.
        source_description, source_license, source_citation, source_homepage: for the dataset card.
        class_list_note: Which class list the dataset is built from (shown on the card).

    Args:
        cache_dir: Where ``datasets`` keeps the prepared Arrow files (its default cache if None).
        **kwargs: ``DatasetBuilder`` arguments and the :class:`SPMLConfig` fields (``root``, ``seed``, ...).
    """

    BUILDER_CONFIG_CLASS = SPMLConfig
    VERSION = datasets.Version("1.0.0")

    dataset_key: str = ""  # set by register_dataset
    input_kind: str = "image"
    needs_root: bool = True
    has_validation: bool = False
    expected_num_pos: Optional[float] = None
    num_classes: Optional[int] = None
    source_description: str = ""
    source_license: str = "unknown"
    source_citation: str = ""
    source_homepage: str = ""
    class_list_note: str = ""

    def __init__(self, *args, **kwargs):
        self._raw_splits: Dict[str, Optional[RawSplit]] = {}
        self._report: Dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    # ----------------------------------------------------------------- hooks for subclasses
    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        """Read one official split from ``self.config.root``.

        Args:
            split: ``"train"`` (official train), ``"test"`` (official val/test) or ``"validation"``
                (only called when ``has_validation``; may return None to carve it from train).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _load_raw_split(split)")

    def _load_class_names(self) -> List[str]:
        """Class names in label-index order; by default those of the train split."""
        return list(self.raw_split("train").class_names)

    def _feature_dim(self) -> Optional[int]:
        """Length D of the ``features`` vectors when known before the build (a fixed-length list column)."""
        return None

    # ----------------------------------------------------------------- helpers for subclasses
    @property
    def root(self) -> str:
        """The checked raw root folder (raises ValueError when missing)."""
        root = self.config.root
        if root is None:
            raise ValueError(f"dataset {self.dataset_key or self.name!r} needs root=<folder of the raw download>, "
                             f"got root=None")
        if not os.path.isdir(root):
            raise ValueError(f"raw data folder {root!r} of dataset {self.dataset_key or self.name!r} does not exist")
        return root

    def require_file(self, *parts: str, what: str = "file") -> str:
        """Join ``parts`` under the root and return the path, raising ValueError naming it if absent.

        Args:
            *parts: Path components relative to ``root``.
            what: What the file is, for the message (``"annotation file"``).
        """
        path = os.path.join(self.root, *parts)
        if not os.path.isfile(path):
            raise ValueError(f"missing {what}: {path} (dataset {self.dataset_key or self.name!r}, root {self.root})")
        return path

    def raw_split(self, split: str) -> Optional[RawSplit]:
        """``_load_raw_split(split)``, read once per builder instance and checked.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
        """
        if split not in self._raw_splits:
            raw = self._load_raw_split(split)
            if raw is not None:
                self._check_raw_split(split, raw)
            self._raw_splits[split] = raw
        return self._raw_splits[split]

    # ----------------------------------------------------------------- datasets API
    def _features(self, class_names: Sequence[str]) -> datasets.Features:
        label_list = datasets.List(datasets.ClassLabel(names=list(class_names)))
        if self.input_kind == "image":
            columns = {"image": datasets.Image(mode="RGB")}
        elif self.input_kind == "features":
            dim = self._feature_dim()
            columns = {"features": datasets.List(datasets.Value("float32"), length=-1 if dim is None else int(dim))}
        else:
            raise ValueError(f"input_kind must be 'image' or 'features', got {self.input_kind!r}")
        columns.update(labels=label_list, observed_labels=label_list)
        if self.config.num_negatives:
            columns["observed_negatives"] = label_list
        columns["index"] = datasets.Value("int64")
        return datasets.Features(columns)

    def _info(self) -> datasets.DatasetInfo:
        self._check_config()
        names = self._load_class_names()
        if len(set(names)) != len(names):
            dup = sorted(n for n, count in collections.Counter(names).items() if count > 1)
            raise ValueError(f"class names of dataset {self.dataset_key or self.name!r} are not unique: {dup[:5]}")
        return datasets.DatasetInfo(
            description=self.source_description,
            features=self._features(names),
            homepage=self.source_homepage,
            citation=self.source_citation,
            license=self.source_license,
        )

    def _split_generators(self, dl_manager) -> List[datasets.SplitGenerator]:
        prepared = self._prepare_splits()
        self._report = {
            "dataset": self.dataset_key or self.name,
            "root": self.config.root,
            "seed": self.config.seed,
            "split_seed": self.config.split_seed,
            "val_fraction": self.config.val_fraction,
            "num_positives": self.config.num_positives,
            "num_negatives": self.config.num_negatives,
            "drop_without_positive": self.config.drop_without_positive,
            "num_classes": len(self.info.features["labels"].feature.names),
            "splits": {p.name: p.report for p in prepared},
        }
        self._write_report()
        generators = []
        for p in prepared:
            generator = datasets.SplitGenerator(name=p.name, gen_kwargs={"prepared": p})
            generator.split_info.num_examples = len(p.labels)  # progress-bar total
            generators.append(generator)
        return generators

    def _generate_examples(self, prepared: _PreparedSplit):
        raw, rows = prepared.raw, prepared.rows
        data_key = "image" if raw.images is not None else "features"
        for i in range(len(prepared.labels)):
            if raw.images is not None:
                item = raw.images[rows[i]]
                data = {"path": item, "bytes": None} if isinstance(item, str) else {"path": None, "bytes": item}
            else:  # one row at a time, so memory-mapped feature files are never loaded whole
                data = np.asarray(raw.features[rows[i]], dtype=np.float32)
            example = {data_key: data, "labels": prepared.labels[i], "observed_labels": prepared.observed[i]}
            if prepared.negatives is not None:
                example["observed_negatives"] = prepared.negatives[i]
            example["index"] = i
            yield i, example

    # ----------------------------------------------------------------- build report
    @property
    def build_report(self) -> Dict[str, Any]:
        """What the build did: per split ``num_examples``, ``dropped_without_positive``,
        ``kept_without_positive``, plus seeds and class count (read back from the cache when reused)."""
        if not self._report:
            path = os.path.join(self.cache_dir, REPORT_FILENAME)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    self._report = json.load(f)
        return dict(self._report)

    def _write_report(self) -> None:
        out = getattr(self, "_output_dir", None)
        if out and os.path.isdir(out):  # the in-progress folder, renamed to cache_dir on success
            with open(os.path.join(out, REPORT_FILENAME), "w", encoding="utf-8") as f:
                json.dump(self._report, f, indent=2)

    # ----------------------------------------------------------------- the protocol
    def _check_config(self) -> None:
        cfg = self.config
        if self.needs_root:
            _ = self.root
        if not 0.0 <= float(cfg.val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction!r}")
        for name in ("seed", "split_seed", "num_positives", "num_negatives"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    def _check_raw_split(self, split: str, raw: RawSplit) -> None:
        where = raw.source or f"the {split} split"
        n = len(raw.labels)
        if (raw.images is None) == (raw.features is None):
            raise ValueError(f"{type(self).__name__}: a RawSplit needs exactly one of images or features ({where})")
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
        if raw.images is not None:
            missing = [p for p in raw.images if isinstance(p, str) and not os.path.isfile(p)]
            if missing:
                raise ValueError(f"{where}: {len(missing)} listed image(s) are missing, first: {missing[0]}")

    def _check_class_lists(self, splits: Dict[str, RawSplit]) -> List[str]:
        reference = list(self._load_class_names())
        for split, raw in splits.items():
            if list(raw.class_names) != reference:
                diff = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(raw.class_names, reference)) if a != b]
                raise ValueError(
                    f"class list mismatch: {raw.source or split} has {len(raw.class_names)} classes, the dataset "
                    f"has {len(reference)}; first differences: {diff[:3] or 'lengths differ'}")
        return reference

    def _prepare_splits(self) -> List[_PreparedSplit]:
        cfg = self.config
        raws = {"train": self.raw_split("train"), "test": self.raw_split("test")}
        for split in ("train", "test"):
            if raws[split] is None:
                raise ValueError(f"{type(self).__name__}._load_raw_split({split!r}) returned None")
        validation = self.raw_split("validation") if self.has_validation else None
        if validation is not None:
            raws["validation"] = validation
        class_names = self._check_class_lists(raws)
        kept, dropped = {}, {}
        for split, raw in raws.items():
            has_positive = np.fromiter((len(r) > 0 for r in raw.labels), dtype=bool, count=len(raw))
            rows = np.flatnonzero(has_positive) if cfg.drop_without_positive else np.arange(len(raw))
            kept[split] = (raw, rows)
            dropped[split] = int(len(raw) - rows.size)
        final = {}
        train_raw, train_rows = kept["train"]
        if validation is None:
            train_idx, val_idx = split_train_validation(len(train_rows), cfg.val_fraction, cfg.split_seed)
            final["train"] = (train_raw, train_rows[train_idx])
            final["validation"] = (train_raw, train_rows[val_idx])
        else:
            final["train"] = kept["train"]
            final["validation"] = kept["validation"]
        final["test"] = kept["test"]
        prepared = []
        for split in SPLIT_NAMES:
            raw, rows = final[split]
            labels = [sorted({int(c) for c in raw.labels[r]}) for r in rows]
            drawn = sample_single_positive(labels, num_positives=cfg.num_positives, seed=cfg.seed,
                                           num_negatives=cfg.num_negatives, num_classes=len(class_names),
                                           salt=_SAMPLING_SALTS[split])
            source_split = "train" if split == "validation" and validation is None else split
            prepared.append(_PreparedSplit(
                name=split,
                raw=raw,
                rows=rows,
                labels=labels,
                observed=drawn.positives,
                negatives=drawn.negatives if cfg.num_negatives else None,
                report={
                    "num_examples": int(len(rows)),
                    "source": raws[source_split].source,
                    # examples dropped from the official split this one comes from (train counts for
                    # the carved validation split too, reported once, under train)
                    "dropped_without_positive": dropped[split] if split in dropped else 0,
                    "kept_without_positive": int(sum(1 for row in labels if not row)),
                },
            ))
        return prepared


def _code_hash(cls: type) -> str:
    """Hash of the source of the builder's module and of this base, so code changes invalidate caches."""
    texts = []
    for module_name in {cls.__module__, __name__, sample_single_positive.__module__, "spl_losses.data.raw_files"}:
        module = sys.modules.get(module_name)
        try:
            texts.append(inspect.getsource(module))
        except (OSError, TypeError):
            texts.append(module_name)
    return Hasher.hash(sorted(texts))


def create_builder(name: str, root: Optional[str] = None, seed: int = 1200, cache_dir: Optional[str] = None,
                   **kwargs) -> SPMLBuilder:
    """Instantiate a registered builder (nothing is built yet; call ``download_and_prepare``).

    Args:
        name: Registered dataset name, see :func:`spl_losses.data.list_datasets`.
        root: Folder of the raw download (made absolute, so the cache id does not depend on the cwd).
        seed: Seed of the observed single positives.
        cache_dir: Cache folder for the prepared Arrow files (``datasets``' default cache if None).
        **kwargs: Further :class:`SPMLConfig` fields of that builder (``split_seed``, ``num_negatives``, ...).
    """
    cls = get_dataset_class(name)
    if root is not None:
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    config = {"seed": seed, **kwargs}
    if root is not None:
        config["root"] = root
    return cls(cache_dir=cache_dir, dataset_name=name, hash=_code_hash(cls), **config)


def build_dataset(name: str, root: Optional[str] = None, seed: int = 1200, cache_dir: Optional[str] = None,
                  force_rebuild: bool = False, **kwargs) -> datasets.DatasetDict:
    """Build (or reuse the cached build of) a registered SPML dataset.

    Args:
        name: Registered dataset name (``voc2012``, ``coco2014``, ``nuswide``, ``cub200``,
            ``digits_mosaic``, ``multilabel_files``, ``multilabel_features``).
        root: Folder of the raw download (None for ``digits_mosaic``).
        seed: Seed of the observed single positives (1200 in the reference protocol).
        cache_dir: Cache folder for the prepared Arrow files (``datasets``' default cache if None).
        force_rebuild: Rebuild even when a cached build with the same parameters exists (use it when the
            raw files changed in place).
        **kwargs: Further builder config fields (``split_seed``, ``val_fraction``, ``num_negatives``, ...).

    Returns:
        A ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test``.
    """
    builder = create_builder(name, root=root, seed=seed, cache_dir=cache_dir, **kwargs)
    mode = datasets.DownloadMode.FORCE_REDOWNLOAD if force_rebuild else None
    builder.download_and_prepare(download_mode=mode)
    return builder.as_dataset()
