"""``load_spml_dataset``: one entry point for registered builders, saved folders, Parquet and the Hub."""
import difflib
import os
import re
from typing import Dict, List, Optional

import datasets
import numpy as np

from .builder import build_dataset
from .columns import arrow_column, list_column
from .registry import get_dataset_info, is_dataset, list_datasets
from .sampling import add_observed_labels, split_train_validation

__all__ = ["load_spml_dataset", "check_spml_dataset", "has_labels_column", "COLUMN_OPTIONS"]

_REQUIRED_SPLITS = ("train", "validation", "test")
#: Options of a saved or Hub dataset naming its label columns: option -> the contract's column.
COLUMN_OPTIONS = {"label_column": "labels", "observed_column": "observed_labels",
                  "negatives_column": "observed_negatives"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _is_saved_dataset_dict(path: str) -> bool:
    return os.path.isfile(os.path.join(path, datasets.config.DATASETDICT_JSON_FILENAME))


def _is_saved_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, datasets.config.DATASET_STATE_JSON_FILENAME))


def _with_index(ds: datasets.Dataset) -> datasets.Dataset:
    """Set the ``index`` column to the row position (adding it when absent)."""
    if "index" in ds.column_names:
        ds = ds.remove_columns("index")
    return ds.add_column("index", np.arange(len(ds), dtype=np.int64), feature=datasets.Value("int64"))


def has_labels_column(ds: datasets.Dataset, column: str = "labels", source: str = "dataset",
                      split: str = "split") -> bool:
    """Whether a split gives full labels: a ``labels`` column with a list on every row.

    A split without full labels (partial labels as a user has them) has no such column, or one of nulls
    (a build that gives full labels for some splits only); a mix of lists and nulls in one split is refused.

    Args:
        ds: The split.
        column: The column.
        source: What it was loaded from, for messages.
        split: The split's name, for messages.
    """
    if column not in ds.column_names:
        return False
    values = arrow_column(ds, column)
    if values.null_count == 0:
        return True
    if values.null_count == len(values):
        return False
    row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
    raise ValueError(f"{source}: split {split!r}, row {row} has no full labels ({column!r} is null) but other rows have "
                     "them: give full labels for every row of a split or for none")


def _check_observed_rows(ds: datasets.Dataset, source: str, split: str, full: bool) -> None:
    """Refuse a row whose observed positives and negatives share a class, and, in a split without full labels,
    a row with no observed positive (nothing is known of it), naming the row."""
    positives = list_column(ds, "observed_labels")
    if not full:
        empty = np.flatnonzero(positives.lengths == 0)
        if empty.size:
            raise ValueError(f"{source}: split {split!r}, row {int(empty[0])} has no observed positive and the split "
                             "has no full labels: every row needs at least one observed positive (drop the row)")
    if "observed_negatives" not in ds.column_names:
        return
    negatives = list_column(ds, "observed_negatives")
    width = int(max(positives.values.max(initial=-1), negatives.values.max(initial=-1))) + 1
    both = np.intersect1d(positives.rows * width + positives.values.astype(np.int64),
                          negatives.rows * width + negatives.values.astype(np.int64))
    if both.size:
        row, cls = divmod(int(both[0]), width)
        inner = getattr(ds.features["observed_labels"], "feature", None)
        names = getattr(inner, "names", None)
        name = repr(names[cls]) if names and cls < len(names) else str(cls)
        raise ValueError(f"{source}: split {split!r}, row {row}: class {name} is both an observed positive "
                         "('observed_labels') and an observed negative ('observed_negatives')")


def _map_columns(dsd: datasets.DatasetDict, mapping: Dict[str, str], source: str) -> datasets.DatasetDict:
    """Rename a dataset's label columns to the contract's (``label_column=tags``: ``tags`` becomes ``labels``)."""
    out = {}
    for split, ds in dsd.items():
        for option, given in mapping.items():
            target = COLUMN_OPTIONS[option]
            if given == target:
                continue
            if given not in ds.column_names:
                continue  # a split may lack a column (full labels on test only, say): checked later
            if target in ds.column_names:
                raise ValueError(f"{source}: {option}={given} renames {given!r} to {target!r}, but split {split!r} "
                                 f"already has a {target!r} column; drop one of them")
            ds = ds.rename_column(given, target)
        out[split] = ds
    for option, given in mapping.items():
        if not any(COLUMN_OPTIONS[option] in ds.column_names for ds in out.values()):
            columns = sorted({c for ds in dsd.values() for c in ds.column_names})
            raise ValueError(f"{source}: {option}={given}: no split has a column {given!r}; columns: {columns}")
    return datasets.DatasetDict(out)


def check_spml_dataset(dsd: datasets.DatasetDict, source: str = "dataset") -> None:
    """Check that a ``DatasetDict`` follows the SPML data contract.

    Args:
        dsd: The dataset dict.
        source: What it was loaded from, for messages.

    Raises:
        TypeError: ``dsd`` is not a ``datasets.DatasetDict``.
        ValueError: a split among train/validation/test is missing, or a split lacks ``observed_labels``
            (or, on test, both ``labels`` and ``observed_labels``) or an ``image``/``features`` column, class names
            differ between columns, a row's observed positives and negatives share a class, or a row of a
            split without full labels has no observed positive (the row named).

    ``labels`` (full labels) are optional per split: a split without them has observed labels only
    (partial labels: ``observed_labels`` positives, optionally ``observed_negatives``).
    """
    if not isinstance(dsd, datasets.DatasetDict):
        raise TypeError(f"{source}: expected a datasets.DatasetDict, got {type(dsd).__name__}")
    missing = [s for s in _REQUIRED_SPLITS if s not in dsd]
    if missing:
        raise ValueError(f"{source}: missing split(s) {missing}; found {list(dsd)}")
    for split, ds in dsd.items():
        full = has_labels_column(ds, "labels", source, split)
        if "observed_labels" not in ds.column_names:
            if full:
                hint = (" (draw them with spl_losses.data.add_observed_labels or "
                        "load_spml_dataset(..., sample_if_missing=True))")
            else:
                hint = (" and no full 'labels' either (name your columns with the options label_column=..., "
                        "observed_column=..., negatives_column=...)")
            raise ValueError(f"{source}: split {split!r} has no 'observed_labels' column{hint}; "
                             f"columns: {ds.column_names}")
        _check_observed_rows(ds, source, split, full)
        if "image" not in ds.column_names and "features" not in ds.column_names:
            raise ValueError(f"{source}: split {split!r} has neither an 'image' nor a 'features' column; "
                             f"columns: {ds.column_names}")
        names = [getattr(getattr(ds.features[c], "feature", None), "names", None)
                 for c in ("labels", "observed_labels", "observed_negatives") if c in ds.column_names]
        known = [n for n in names if n is not None]
        if any(n != known[0] for n in known):
            raise ValueError(f"{source}: split {split!r} has different class names in its label columns "
                             "('labels', 'observed_labels', 'observed_negatives')")


def load_spml_dataset(
        name_or_path: str,
        data_dir: Optional[str] = None,
        seed: int = 1200,
        cache_dir: Optional[str] = None,
        sample_if_missing: bool = False,
        split_seed: int = 1200,
        force_rebuild: bool = False,
        **kwargs,
) -> datasets.DatasetDict:
    """Load an SPML dataset from wherever it lives, as a checked ``DatasetDict``.

    Tried in order: a registered builder name (built with :func:`spl_losses.data.build_dataset`,
    ``data_dir`` as its raw root); a local folder written by ``DatasetDict.save_to_disk``; any other
    local folder (Parquet files, read by ``datasets.load_dataset``); a Hugging Face Hub dataset id
    (``datasets.load_dataset``). A loaded dataset without a ``validation`` split gets one carved from
    train (20%, ``split_seed``), and ``index`` is (re)set to the row position in every split.

    Args:
        name_or_path: Builder name, local folder or Hub id.
        data_dir: Raw root for a builder name; passed as ``data_dir`` to ``load_dataset`` otherwise.
        seed: Seed of the observed single positives (builders, and ``sample_if_missing``).
        cache_dir: ``datasets`` cache folder.
        sample_if_missing: Draw ``observed_labels`` (``seed``) for splits that lack them instead of raising.
        split_seed: Seed of the validation split carved when none exists.
        force_rebuild: Build again even when a cached build with the same options and unchanged input
            files (listings, annotation files: their path, size and modification time) exists; for a folder
            or Hub id read by ``datasets.load_dataset``, its ``download_mode="force_redownload"``. A reused
            build is said on stderr. Ignored for a ``save_to_disk`` folder (read as it is).
        **kwargs: Builder config fields for a builder name; ``load_dataset`` arguments otherwise
            (``revision``, ``token``, ...), and for a saved or Hub dataset the names of its label columns:
            ``label_column`` (full labels, the contract's ``labels``), ``observed_column`` (observed positives,
            ``observed_labels``), ``negatives_column`` (observed negatives, ``observed_negatives``).

    Returns:
        A ``DatasetDict`` with splits ``train``, ``validation``, ``test`` following the data contract.

    Raises:
        ValueError: nothing matched (the message lists what was tried), or a split lacks ``observed_labels``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    name_or_path = os.fspath(name_or_path)
    mapping = {k: kwargs.pop(k) for k in list(kwargs) if k in COLUMN_OPTIONS}
    for option, column in mapping.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"{option} must be a column name, got {column!r}")
    if mapping and is_dataset(name_or_path):
        raise ValueError(f"{', '.join(mapping)}: the builder {name_or_path!r} writes the contract's columns itself; "
                         "these options name the columns of a saved or Hub dataset")
    if is_dataset(name_or_path):
        if data_dir is None and get_dataset_info(name_or_path).needs_root:
            raise ValueError(f"dataset {name_or_path!r} is built from its raw download: pass "
                             f"data_dir=<folder of the raw files>")
        dsd = build_dataset(name_or_path, root=data_dir, seed=seed, cache_dir=cache_dir, force_rebuild=force_rebuild,
                            **kwargs)
        check_spml_dataset(dsd, source=f"builder {name_or_path!r}")
        return dsd

    if force_rebuild:
        kwargs["download_mode"] = datasets.DownloadMode.FORCE_REDOWNLOAD
    tried: List[str] = [f"registered builders ({', '.join(list_datasets())})"]
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        if _is_saved_dataset_dict(expanded):
            dsd = datasets.load_from_disk(expanded)
        elif _is_saved_dataset(expanded):
            raise ValueError(f"{expanded} holds a single saved Dataset; expected a DatasetDict with splits "
                             f"{list(_REQUIRED_SPLITS)}")
        else:
            try:
                dsd = datasets.load_dataset(expanded, data_dir=data_dir, cache_dir=cache_dir, **kwargs)
            except Exception as err:  # datasets raises several types for an unreadable folder
                raise ValueError(f"{expanded} is a folder but neither a save_to_disk DatasetDict nor readable by "
                                 f"datasets.load_dataset: {type(err).__name__}: {err}") from err
        source = expanded
    else:
        tried.append(f"local folder {os.path.abspath(expanded)} (does not exist)")
        if not _HUB_ID.match(name_or_path):
            raise ValueError(f"Could not load SPML dataset {name_or_path!r}: not a Hub id. Tried: " + "; ".join(tried))
        try:
            dsd = datasets.load_dataset(name_or_path, data_dir=data_dir, cache_dir=cache_dir, **kwargs)
        except Exception as err:  # hub errors, offline mode, malformed ids
            tried.append(f"Hugging Face Hub id ({type(err).__name__}: {err})")
            close = difflib.get_close_matches(name_or_path, list_datasets(), n=1)
            hint = f" Did you mean the builder {close[0]!r}?" if close else ""
            raise ValueError(f"Could not load SPML dataset {name_or_path!r}.{hint} Tried: " + "; ".join(tried)) from err
        source = f"hub dataset {name_or_path!r}"
    if not isinstance(dsd, datasets.DatasetDict):
        raise TypeError(f"{source}: expected a DatasetDict, got {type(dsd).__name__}")
    if mapping:
        dsd = _map_columns(datasets.DatasetDict(dsd), mapping, source)
    return _complete(dsd, source, seed, sample_if_missing, split_seed)


def _complete(dsd: datasets.DatasetDict, source: str, seed: int, sample_if_missing: bool,
              split_seed: int) -> datasets.DatasetDict:
    """Carve validation if absent, draw missing observed labels if asked, reset ``index``, check."""
    dsd = datasets.DatasetDict(dsd)
    if "validation" not in dsd and "train" in dsd:
        train_idx, val_idx = split_train_validation(len(dsd["train"]), 0.2, split_seed)
        dsd["validation"] = dsd["train"].select(val_idx)
        dsd["train"] = dsd["train"].select(train_idx)
    salts = {"train": 1, "validation": 2, "test": 3}
    for split in list(dsd):
        ds = dsd[split]
        if "observed_labels" not in ds.column_names and sample_if_missing and has_labels_column(ds, "labels", source, split):
            ds = add_observed_labels(ds, seed=seed, salt=salts.get(split, 4))
        dsd[split] = _with_index(ds)
    check_spml_dataset(dsd, source=source)
    return datasets.DatasetDict({s: dsd[s] for s in (*_REQUIRED_SPLITS, *[k for k in dsd if k not in _REQUIRED_SPLITS])})
