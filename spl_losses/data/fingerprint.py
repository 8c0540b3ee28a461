"""A content fingerprint of a ``datasets.Dataset``, from public APIs only.

``dataset_fingerprint(split)`` hashes what a split holds: its features (column names and types),
its row count and every byte of its rows, read through ``Dataset.iter`` in Arrow format (so a
``select``-ed or shuffled view is hashed as the rows it yields). Two splits with the same rows in
the same order have the same fingerprint wherever and however they were built; a rebuild that
changes one observed label changes it.

Hashing reads the whole split once (about 1 GB/s). For a split backed by files on disk (a built or
``save_to_disk`` dataset), the result is remembered in ``$SPL_LOSSES_CACHE/fingerprints.json``, keyed
by the files' paths, sizes and modification times, so later runs on the same files pay nothing.
The feature cache, resume checks and teacher caches all key on this fingerprint.

Image files referenced by path (a built image dataset stores ``{"path": ..., "bytes": None}``) are
part of what a split holds: the fingerprint also covers the size and ``st_mtime_ns`` of every such file
(one ``stat`` per row, about 1 s per million rows on a local disk, paid on every call; the files are not
read). An image rewritten in place, or replaced by another file, changes the fingerprint; a file
rewritten with the same size and modification time (restored with ``touch -r``) does not. Splits whose
images are embedded bytes, and feature splits, keep the fingerprint of their rows alone.
"""
import hashlib
import json
import os
from typing import Dict, Optional

import datasets
import numpy as np
import pyarrow as pa

__all__ = ["dataset_fingerprint", "default_cache_root"]

_ROWS_PER_BATCH = 4096
_MEMO_FILENAME = "fingerprints.json"
_MEMO_MAX_ENTRIES = 2048


def default_cache_root() -> str:
    """The package's cache folder: ``$SPL_LOSSES_CACHE``, else ``$XDG_CACHE_HOME/spl_losses`` (``~/.cache``)."""
    return os.environ.get("SPL_LOSSES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "spl_losses")


class _HashSink:
    """A write-only file object that feeds a hash (the Arrow IPC writer's sink)."""

    def __init__(self, digest):
        self.digest = digest
        self.closed = False

    def write(self, data) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _files_key(split: datasets.Dataset) -> Optional[str]:
    """The memo key of a file-backed split (paths, sizes, mtimes, row count, features), or None."""
    files = []
    for entry in split.cache_files:
        path = entry.get("filename")
        if not path or not os.path.isfile(path):
            return None
        stat = os.stat(path)
        files.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    if not files:
        return None
    key = json.dumps([files, split.num_rows, split.features.to_dict()], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def _memo_path() -> str:
    return os.path.join(default_cache_root(), _MEMO_FILENAME)


def _read_memo() -> Dict[str, str]:
    try:
        with open(_memo_path(), encoding="utf-8") as f:
            memo = json.load(f)
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(key: str, value: str) -> None:
    memo = _read_memo()
    memo[key] = value
    if len(memo) > _MEMO_MAX_ENTRIES:  # keep the newest entries (dicts keep insertion order)
        memo = dict(list(memo.items())[-_MEMO_MAX_ENTRIES:])
    path = _memo_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(memo, f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs speed
        pass


def _content_hash(split: datasets.Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([split.num_rows, split.features.to_dict()], sort_keys=True, default=str).encode())
    sink = _HashSink(digest)
    writer = None
    for batch in split.with_format("arrow").iter(batch_size=_ROWS_PER_BATCH):
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        # take() copies the rows into fresh, compact buffers: the same rows give the same bytes whatever
        # the files' chunking or the slice offsets of the source arrays
        table = table.take(pa.array(np.arange(table.num_rows)))
        if writer is None:
            writer = pa.ipc.new_stream(sink, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    return digest.hexdigest()[:32]


def _image_columns(split: datasets.Dataset):
    return [name for name, feature in split.features.items() if isinstance(feature, datasets.Image)]


def _referenced_files_digest(split: datasets.Dataset) -> Optional[str]:
    """A hash of ``(path, size, st_mtime_ns)`` of every image file the split references by path, or None
    when it references none."""
    columns = _image_columns(split)
    if not columns:
        return None
    digest, count = hashlib.sha256(), 0
    view = split.select_columns(columns).with_format("arrow")
    for batch in view.iter(batch_size=_ROWS_PER_BATCH):
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        for name in columns:
            column = table.column(name)
            if not pa.types.is_struct(column.type):
                continue
            column = column.combine_chunks()
            paths = column.field("path").to_pylist()
            data = column.field("bytes").is_null().to_pylist()
            for path, no_bytes in zip(paths, data):
                if not path or not no_bytes:
                    continue
                try:
                    stat = os.stat(path)
                    entry = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                except OSError:
                    entry = f"{path}\0missing\n"
                digest.update(entry.encode("utf-8", "surrogatepass"))
                count += 1
    return digest.hexdigest() if count else None


def dataset_fingerprint(split: datasets.Dataset, use_memo: bool = True) -> str:
    """A 32-hex-digit content fingerprint of a dataset split.

    Args:
        split: A ``datasets.Dataset`` (one split; for a ``DatasetDict`` fingerprint each split).
        use_memo: Reuse the remembered hash of file-backed splits whose files are unchanged
            (paths, sizes and modification times); False always reads the rows.

    Returns:
        The fingerprint: equal for splits with the same features and the same rows in the same order,
        whose image files referenced by path have the same sizes and modification times.

    Raises:
        TypeError: ``split`` is not a ``datasets.Dataset``.
    """
    if not isinstance(split, datasets.Dataset):
        raise TypeError(f"dataset_fingerprint expects a datasets.Dataset (one split), got {type(split).__name__}")
    key = _files_key(split) if use_memo else None
    value = None
    if key is not None:
        known = _read_memo().get(key)
        if isinstance(known, str):
            value = known
    if value is None:
        value = _content_hash(split)
        if key is not None:
            _write_memo(key, value)
    files = _referenced_files_digest(split)
    if files is None:
        return value
    return hashlib.sha256(f"{value}:{files}".encode()).hexdigest()[:32]
