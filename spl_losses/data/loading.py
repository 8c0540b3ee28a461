"""``load_spml_dataset``: one entry point for registered builders, saved folders, Parquet and the Hub."""
import difflib
import os
import re
from typing import List, Optional

import datasets
import numpy as np

from .builder import build_dataset
from .registry import get_dataset_info, is_dataset, list_datasets
from .sampling import add_observed_labels, split_train_validation

__all__ = ["load_spml_dataset", "check_spml_dataset"]

_REQUIRED_SPLITS = ("train", "validation", "test")
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


def check_spml_dataset(dsd: datasets.DatasetDict, source: str = "dataset") -> None:
    """Check that a ``DatasetDict`` follows the SPML data contract.

    Args:
        dsd: The dataset dict.
        source: What it was loaded from, for messages.

    Raises:
        TypeError: ``dsd`` is not a ``datasets.DatasetDict``.
        ValueError: a split among train/validation/test is missing, or a split lacks ``labels``,
            ``observed_labels`` or an ``image``/``features`` column, or class names differ between columns.
    """
    if not isinstance(dsd, datasets.DatasetDict):
        raise TypeError(f"{source}: expected a datasets.DatasetDict, got {type(dsd).__name__}")
    missing = [s for s in _REQUIRED_SPLITS if s not in dsd]
    if missing:
        raise ValueError(f"{source}: missing split(s) {missing}; found {list(dsd)}")
    for split, ds in dsd.items():
        for column in ("labels", "observed_labels"):
            if column not in ds.column_names:
                hint = (" (draw them with spl_losses.data.add_observed_labels or "
                        "load_spml_dataset(..., sample_if_missing=True))" if column == "observed_labels" else "")
                raise ValueError(f"{source}: split {split!r} has no {column!r} column{hint}; "
                                 f"columns: {ds.column_names}")
        if "image" not in ds.column_names and "features" not in ds.column_names:
            raise ValueError(f"{source}: split {split!r} has neither an 'image' nor a 'features' column; "
                             f"columns: {ds.column_names}")
        names = [getattr(getattr(ds.features[c], "feature", None), "names", None)
                 for c in ("labels", "observed_labels")]
        if names[0] is not None and names[1] is not None and names[0] != names[1]:
            raise ValueError(f"{source}: split {split!r} has different class names in 'labels' and 'observed_labels'")


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
            (``revision``, ``token``, ...).

    Returns:
        A ``DatasetDict`` with splits ``train``, ``validation``, ``test`` following the data contract.

    Raises:
        ValueError: nothing matched (the message lists what was tried), or a split lacks ``observed_labels``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    name_or_path = os.fspath(name_or_path)
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
        if "observed_labels" not in ds.column_names and sample_if_missing and "labels" in ds.column_names:
            ds = add_observed_labels(ds, seed=seed, salt=salts.get(split, 4))
        dsd[split] = _with_index(ds)
    check_spml_dataset(dsd, source=source)
    return datasets.DatasetDict({s: dsd[s] for s in (*_REQUIRED_SPLITS, *[k for k in dsd if k not in _REQUIRED_SPLITS])})
