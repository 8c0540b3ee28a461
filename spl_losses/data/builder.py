"""The common base of every SPML dataset builder, and ``build_dataset``.

A benchmark builder subclasses :class:`SPMLBuilder` (a ``datasets.GeneratorBasedBuilder``) and only
reads its raw files: it implements ``_load_raw_split(split)`` returning a
:class:`~spl_losses.data.raw_files.RawSplit` (class names, per-example image paths or feature rows,
positive class indices). The base does the rest, identically for every benchmark:

- checks, before any work: the configuration, the raw root, every listed image present (and, with
  ``verify_images``, decodable as an image: see :mod:`spl_losses.data.image_checks`), class indices
  in range, the class lists of all splits agree (errors name the file);
- the protocol of Cole et al. (CVPR 2021), :mod:`spl_losses.data.protocol`: drop (or keep) examples
  without a positive, carve validation out of the official train set, draw the observed labels
  (``observed_sampling``, ``sampling_rng``);
- writes the columns ``image`` (datasets ``Image(mode="RGB")``, stored as a path or encoded bytes,
  never decoded during the build) or ``features`` (``List(Value("float32"))``), ``labels``,
  ``observed_labels`` (``List(ClassLabel)``; test rows carry a draw too, for "observed" evaluation
  only: test metrics use ``labels``), optionally ``observed_negatives``, and ``index`` (int64 row
  position within the split), and a build report.

Every config parameter (``root``, ``seed``, ...) is part of the ``datasets`` config id; the builder hash
covers the source code and the input files (path, size, ``st_mtime_ns``: :mod:`.build_cache`), so a
cached build is reused only for the same parameters, code and unchanged listings / annotation files.
:func:`build_dataset` says on stderr when it reuses a build; ``force_rebuild=True`` rebuilds anyway.

Example::

    >>> from spl_losses.data import build_dataset
    >>> ds = build_dataset("digits_mosaic", seed=1200)  # doctest: +SKIP
    >>> ds["train"].features["labels"].feature.names  # doctest: +SKIP
"""
import collections
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from .build_cache import code_hash, input_files_signature, is_built
from .image_checks import images_to_verify, verify_images
from .protocol import SPLIT_NAMES, PreparedSplit, check_protocol_options, prepare_splits, read_class_weights
from .raw_files import RawSplit, check_raw_split
from .registry import get_dataset_class

__all__ = ["SPMLConfig", "SPMLBuilder", "create_builder", "build_dataset", "SPLIT_NAMES", "REPORT_FILENAME",
           "GIVEN_OBSERVED_NOTE"]

REPORT_FILENAME = "spml_build_report.json"
#: The sentence a dataset's description carries when its source gave the observed labels (partial labels
#: as a user has them) instead of the builder drawing them from full labels.
GIVEN_OBSERVED_NOTE = "Observed labels given by the source (not drawn from full labels)."
_PROTOCOL_MODULES = ("spl_losses.data.protocol", "spl_losses.data.sampling", "spl_losses.data.reference_draws",
                     "spl_losses.data.raw_files", "spl_losses.data.image_checks", "spl_losses.data.listing",
                     "spl_losses.data.coco_bias")


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
        observed_sampling: How the observed positive is chosen among a row's positives: ``"uniform"``
            (default, Cole et al.), ``"weights"`` (proportional to a per-class weight read from
            ``class_weights_file``), or, for ``coco2014``, ``"size"`` / ``"loc"`` (the biased draws of
            Arroyo, Perona & Cole, ICLR 2023 Tiny Papers: by the objects' area, or by their closeness to
            the image centre).
        sampling_rng: ``"hash"`` (default: the package's counter-based hash, identical everywhere) or
            ``"reference"`` (the reference code's own random streams, draw for draw; see
            :mod:`spl_losses.data.reference_draws`).
        class_weights_file: JSON object ``{"class name": weight}`` giving every class a weight >= 0, for
            ``observed_sampling="weights"`` (a relative path is taken from the current folder).
        verify_images: Open every listed image file with PIL (``verify``) so that no other kind of file
            enters the dataset: True, False, or None (default) for every split listing at most 20,000
            images. Paths that leave their folder are refused whatever this is.
    """

    root: Optional[str] = None
    seed: int = 1200
    split_seed: int = 1200
    val_fraction: float = 0.2
    num_positives: int = 1
    num_negatives: int = 0
    drop_without_positive: bool = True
    observed_sampling: str = "uniform"
    sampling_rng: str = "hash"
    class_weights_file: Optional[str] = None
    verify_images: Optional[bool] = None


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
        observed_sampling_rules: The ``observed_sampling`` values the builder supports.
        path_options: Config fields holding file paths that ``create_builder`` makes absolute (from the
            current folder, or from ``root`` for those also in ``root_path_options``).
        root_path_options: The ``path_options`` that are relative to ``root`` when one is given.
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
    observed_sampling_rules: Tuple[str, ...] = ("uniform", "weights")
    path_options: Tuple[str, ...] = ("class_weights_file",)
    root_path_options: Tuple[str, ...] = ()
    source_description: str = ""
    source_license: str = "unknown"
    source_citation: str = ""
    source_homepage: str = ""
    class_list_note: str = ""

    def __init__(self, *args, **kwargs):
        self._raw_splits: Dict[str, Optional[RawSplit]] = {}
        self._report: Dict[str, Any] = {}
        self._class_weights: Optional[np.ndarray] = None
        self._verified: Dict[str, int] = {}
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

    def _check_class_usage(self, prepared: Sequence[PreparedSplit], class_names: Sequence[str]) -> None:
        """Look at how the built splits use the classes, e.g. to warn about a class that is likely a typo.

        Called once per build, after the protocol made the final splits; nothing by default (a
        benchmark's class list is fixed). The generic builders warn (:mod:`spl_losses.data.generic`).

        Args:
            prepared: The final ``train``, ``validation`` and ``test`` splits.
            class_names: The dataset's class names, in label-index order.
        """

    def _images_to_verify(self, split: str, paths: Sequence[str]) -> Sequence[str]:
        """The image files of a split that ``verify_images`` opens (by default all of them, or above the
        automatic limit the symbolic links: :func:`~spl_losses.data.image_checks.images_to_verify`).

        Args:
            split: The official split.
            paths: Its listed image files.
        """
        return images_to_verify(self.config.verify_images, paths)

    def _gives_observed_labels(self) -> bool:
        """Whether the source gives observed labels (partial labels) for some split, instead of drawing them
        all: then the dataset has an ``observed_negatives`` column. Builders that read such sources override it."""
        return False

    # ----------------------------------------------------------------- helpers for subclasses
    @property
    def name_for_messages(self) -> str:
        """The registered name of the dataset (or the builder's name)."""
        return self.dataset_key or self.name

    @property
    def root(self) -> str:
        """The checked raw root folder (raises ValueError when missing)."""
        root = self.config.root
        if root is None:
            raise ValueError(f"dataset {self.name_for_messages!r} needs root=<folder of the raw download>, "
                             f"got root=None")
        if not os.path.isdir(root):
            raise ValueError(f"raw data folder {root!r} of dataset {self.name_for_messages!r} does not exist")
        return root

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
        if self.config.num_negatives or self._gives_observed_labels():
            columns["observed_negatives"] = label_list
        columns["index"] = datasets.Value("int64")
        return datasets.Features(columns)

    def _info(self) -> datasets.DatasetInfo:
        self._check_config()
        names = self._load_class_names()
        if len(set(names)) != len(names):
            dup = sorted(n for n, count in collections.Counter(names).items() if count > 1)
            raise ValueError(f"class names of dataset {self.name_for_messages!r} are not unique: {dup[:5]}")
        if self.config.observed_sampling == "weights":
            self._class_weights = read_class_weights(self.config.class_weights_file, names)
        description = self.source_description
        if self._gives_observed_labels():
            description = f"{description} {GIVEN_OBSERVED_NOTE}"
        return datasets.DatasetInfo(
            description=description,
            features=self._features(names),
            homepage=self.source_homepage,
            citation=self.source_citation,
            license=self.source_license,
        )

    def _split_generators(self, dl_manager) -> List[datasets.SplitGenerator]:
        prepared = self._prepare_splits()
        self._check_class_usage(prepared, self.info.features["labels"].feature.names)
        cfg = self.config
        self._report = {
            "dataset": self.name_for_messages,
            **{key: getattr(cfg, key) for key in (
                "root", "seed", "split_seed", "val_fraction", "num_positives", "num_negatives",
                "drop_without_positive", "observed_sampling", "sampling_rng", "class_weights_file")},
            "num_classes": len(self.info.features["labels"].feature.names),
            "images_verified": dict(self._verified),
            "splits": {p.name: p.report for p in prepared},
        }
        self._write_report()
        generators = []
        for p in prepared:
            generator = datasets.SplitGenerator(name=p.name, gen_kwargs={"prepared": p})
            generator.split_info.num_examples = len(p.labels)  # progress-bar total
            generators.append(generator)
        return generators

    def _generate_examples(self, prepared: PreparedSplit):
        raw, rows = prepared.raw, prepared.rows
        data_key = "image" if raw.images is not None else "features"
        for i in range(len(prepared.labels)):
            if raw.images is not None:
                item = raw.images[rows[i]]
                data = {"path": item, "bytes": None} if isinstance(item, str) else {"path": None, "bytes": item}
            else:  # one row at a time, so memory-mapped feature files are never loaded whole
                data = np.asarray(raw.features[rows[i]], dtype=np.float32)
            # a split given with observed labels only has no full labels: null, not a list (no row is "no positive")
            example = {data_key: data, "labels": prepared.labels[i] if prepared.full_labels else None,
                       "observed_labels": prepared.observed[i]}
            if prepared.negatives is not None:
                example["observed_negatives"] = prepared.negatives[i]
            elif "observed_negatives" in self.info.features:
                example["observed_negatives"] = []
            example["index"] = i
            yield i, example

    # ----------------------------------------------------------------- build report
    @property
    def build_report(self) -> Dict[str, Any]:
        """What the build did: per split ``num_examples``, ``dropped_without_positive``,
        ``kept_without_positive``, plus seeds, sampling rule and class count (read back from the cache
        when reused)."""
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

    # ----------------------------------------------------------------- checks
    def _check_config(self) -> None:
        if self.needs_root:
            _ = self.root
        check_protocol_options(self.config, self.observed_sampling_rules, self.name_for_messages)

    def _check_raw_split(self, split: str, raw: RawSplit) -> None:
        where = raw.source or f"the {split} split"
        check_raw_split(raw, where)
        if raw.images is not None:
            paths = self._images_to_verify(split, [p for p in raw.images if isinstance(p, str)])
            verify_images(paths, where)
            self._verified[split] = len(paths)

    def _check_class_lists(self, splits: Dict[str, RawSplit]) -> List[str]:
        reference = list(self._load_class_names())
        for split, raw in splits.items():
            if list(raw.class_names) != reference:
                diff = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(raw.class_names, reference)) if a != b]
                raise ValueError(
                    f"class list mismatch: {raw.source or split} has {len(raw.class_names)} classes, the dataset "
                    f"has {len(reference)}; first differences: {diff[:3] or 'lengths differ'}")
        return reference

    def _prepare_splits(self) -> List[PreparedSplit]:
        raws = {"train": self.raw_split("train"), "test": self.raw_split("test")}
        for split in ("train", "test"):
            if raws[split] is None:
                raise ValueError(f"{type(self).__name__}._load_raw_split({split!r}) returned None")
        validation = self.raw_split("validation") if self.has_validation else None
        if validation is not None:
            raws["validation"] = validation
        class_names = self._check_class_lists(raws)
        for split, raw in raws.items():
            if self._class_weights is not None and raw.label_weights is None:
                raw.label_weights = [self._class_weights[list(row)].tolist() for row in raw.labels]
            if self.config.observed_sampling != "uniform" and raw.label_weights is None:
                raise ValueError(f"{type(self).__name__} gave no label weights for observed_sampling="
                                 f"{self.config.observed_sampling!r} ({raw.source or split})")
        return prepare_splits(raws, self.config, len(class_names))


def create_builder(name: str, root: Optional[str] = None, seed: int = 1200, cache_dir: Optional[str] = None,
                   **kwargs) -> SPMLBuilder:
    """Instantiate a registered builder (nothing is built yet; call ``download_and_prepare``).

    Args:
        name: Registered dataset name, see :func:`spl_losses.data.list_datasets`.
        root: Folder of the raw download (made absolute, so the cache id does not depend on the cwd).
        seed: Seed of the observed single positives.
        cache_dir: Cache folder for the prepared Arrow files (``datasets``' default cache if None).
        **kwargs: Further :class:`SPMLConfig` fields of that builder (``split_seed``, ``num_negatives``, ...).
            Relative paths in the builder's ``path_options`` are made absolute too (from the current
            folder, or from ``root`` for the listing options of ``multilabel_files``).
    """
    cls = get_dataset_class(name)
    if root is not None:
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    config = {"seed": seed, **kwargs}
    for key in cls.path_options:
        value = config.get(key)
        if isinstance(value, (str, os.PathLike)):
            value = os.path.expanduser(os.fspath(value))
            base = root if root is not None and key in cls.root_path_options else os.getcwd()
            config[key] = os.path.normpath(os.path.join(base, value))
    if root is not None:
        config["root"] = root
    build_hash = Hasher.hash([code_hash(cls, (__name__, *_PROTOCOL_MODULES)), input_files_signature(cls, config)])
    return cls(cache_dir=cache_dir, dataset_name=name, hash=build_hash, **config)


def build_dataset(name: str, root: Optional[str] = None, seed: int = 1200, cache_dir: Optional[str] = None,
                  force_rebuild: bool = False, **kwargs) -> datasets.DatasetDict:
    """Build (or reuse the cached build of) a registered SPML dataset.

    Args:
        name: Registered dataset name (``voc2012``, ``coco2014``, ``nuswide``, ``cub200``,
            ``digits_mosaic``, ``multilabel_files``, ``multilabel_features``).
        root: Folder of the raw download (None for ``digits_mosaic``).
        seed: Seed of the observed single positives (1200 in the reference protocol).
        cache_dir: Cache folder for the prepared Arrow files (``datasets``' default cache if None).
        force_rebuild: Rebuild even when a cached build with the same parameters and input files exists
            (listings and annotation files changed in place are noticed without it; images are not).
        **kwargs: Further builder config fields (``split_seed``, ``val_fraction``, ``observed_sampling``,
            ``sampling_rng``, ``verify_images``, ...).

    Returns:
        A ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test``.
    """
    builder = create_builder(name, root=root, seed=seed, cache_dir=cache_dir, **kwargs)
    if not force_rebuild and is_built(builder):
        print(f"spl_losses: reusing the cached build of {name!r} at {builder.cache_dir} (same options, code and "
              "input files; force_rebuild=True rebuilds)", file=sys.stderr)
    mode = datasets.DownloadMode.FORCE_REDOWNLOAD if force_rebuild else None
    builder.download_and_prepare(download_mode=mode)
    return builder.as_dataset()
