"""Whole columns of a dataset split read in bulk, the way Arrow holds them.

``datasets`` keeps a split as a pyarrow table (memory-mapped when loaded from disk) and, after
``select`` / ``shuffle`` / ``train_test_split``, an indices mapping onto it. Reading a column through
``split[column]`` or ``split.with_format("numpy")[column]`` builds Python or numpy objects row by row
(datasets 5 returns a lazy ``Column`` that ``np.asarray`` iterates), which costs seconds per 100,000
rows. The functions here read the pyarrow column itself, identically on datasets 3, 4 and 5:

- :func:`feature_matrix`: a fixed-size (or equal-length) float list column as one (N, D) float32 array,
  a reshape of the flattened child values of each Arrow chunk: zero-copy (a view of the memory map for
  a split loaded from disk) when the column is float32 in one chunk without an indices mapping,
  otherwise one copy of the chunks into the result. ``save_to_disk`` writes record batches of 1,000
  rows, each a chunk, so a larger saved split is copied once out of its memory map (a memcpy).
- :func:`list_column`: a list column's offsets and flattened values (:class:`ListColumn`).
- :func:`label_matrix`: a list-of-class-indices column as a dense (N, C) {0, 1} tensor, one scatter.
- :func:`index_column`: an integer column as an int64 array.
- :func:`equal_list_rows`: which rows of two list columns hold the same entries (order ignored).

Rows are always in the split's order (its indices mapping applied by a gather), and bad
input raises ``ValueError`` naming the column and the first bad row.
"""
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["ListColumn", "arrow_column", "feature_matrix", "feature_tensor", "list_column", "label_matrix",
           "index_column", "equal_list_rows"]

_FLOAT_TYPES = (pa.float16(), pa.float32(), pa.float64())


@dataclass(frozen=True)
class ListColumn:
    """A list column as Arrow holds it: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    Args:
        offsets: (N + 1,) int64, starting at 0.
        values: The flattened entries of every row, in row order.
    """

    offsets: np.ndarray
    values: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 number of entries of each row."""
        return np.diff(self.offsets)

    @property
    def rows(self) -> np.ndarray:
        """(len(values),) int64 row of each entry."""
        return np.repeat(np.arange(self.offsets.size - 1, dtype=np.int64), self.lengths)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)


def arrow_column(split, column: str) -> pa.ChunkedArray:
    """One column of a split as a pyarrow ``ChunkedArray``, in the split's row order.

    Args:
        split: A ``datasets.Dataset`` (its indices mapping, if any, is applied with ``take``) or a
            ``pyarrow.Table``.
        column: The column name.

    Raises:
        ValueError: the split has no such column (the message lists its columns).
        TypeError: ``split`` is neither a ``datasets.Dataset`` nor a ``pyarrow.Table``.
    """
    values, indices = _stored_column(split, column)
    return values if indices is None else values.take(indices)


def _stored_column(split, column: str):
    """(the column as stored, the split's indices mapping or None)."""
    if isinstance(split, pa.Table):
        table, indices = split, None
    else:
        data = getattr(split, "data", None)
        table = getattr(data, "table", data)
        if not isinstance(table, pa.Table):
            raise TypeError(f"expected a datasets.Dataset or a pyarrow.Table, got {type(split).__name__}")
        mapping = getattr(split, "_indices", None)
        indices = None if mapping is None else mapping.column(0)
    if column not in table.column_names:
        raise ValueError(f"split has no {column!r} column; columns are {table.column_names}")
    return table.column(column), indices


def _chunks(values: pa.ChunkedArray):
    """(first row, chunk) of every non-empty chunk."""
    start = 0
    for chunk in values.chunks:
        if len(chunk):
            yield start, chunk
        start += len(chunk)


def _first_null(column: str, start: int, chunk: pa.Array) -> None:
    if chunk.null_count:
        row = start + int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column {column!r}: row {row} is null")


def _list_offsets(chunk: pa.Array) -> np.ndarray:
    """(len + 1,) int64 offsets of a list chunk, relative to its first entry."""
    offsets = chunk.offsets.to_numpy().astype(np.int64, copy=False)
    return offsets - offsets[0]


def _check_values(column: str, start: int, lengths_or_width, values: pa.Array) -> None:
    """Nulls inside rows are refused, naming the row."""
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        if isinstance(lengths_or_width, np.ndarray):
            row = int(np.searchsorted(lengths_or_width, first, side="right")) - 1
        else:
            row = first // lengths_or_width
        raise ValueError(f"column {column!r}: row {start + row} holds a null entry")


def _flat_floats(column: str, start: int, chunk: pa.Array, width: int) -> np.ndarray:
    """The chunk's child values as a (rows, width) array of the stored float dtype (a view if possible)."""
    _first_null(column, start, chunk)
    if pa.types.is_fixed_size_list(chunk.type):
        values = chunk.flatten()
        _check_values(column, start, width, values)
    else:
        offsets = _list_offsets(chunk)
        lengths = np.diff(offsets)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            row = int(bad[0])
            raise ValueError(f"column {column!r}: rows must all have the same length; row {start + row} has "
                             f"{int(lengths[row])} values, expected {width} (the length of row 0)")
        values = chunk.flatten()
        _check_values(column, start, offsets, values)
    return values.to_numpy(zero_copy_only=False).reshape(len(chunk), width)


def _raise_not_finite(column: str, start: int, original: np.ndarray, cast: np.ndarray) -> None:
    bad = ~np.isfinite(cast)
    row, col = (int(i[0]) for i in np.nonzero(bad))
    value = original[row, col]
    if np.isfinite(value):
        raise ValueError(f"column {column!r}: row {start + row} holds {float(value)!r} (entry {col}), beyond "
                         f"float32's range")
    raise ValueError(f"column {column!r}: row {start + row} holds {float(value)} (entry {col}); features must "
                     f"be finite")


def _check_finite(column: str, start: int, original: np.ndarray, cast: np.ndarray) -> None:
    """Min and max propagate NaN and reach ±inf: two passes without a temporary of the array's size."""
    if cast.size and not (np.isfinite(cast.min()) and np.isfinite(cast.max())):
        _raise_not_finite(column, start, original, cast)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: no guard
        return 0


def feature_matrix(split, column: str = "features") -> np.ndarray:
    """A fixed-length float list column as one (N, D) float32 array.

    A ``List(Value("float32"), length=D)`` column stored in one Arrow chunk without an indices mapping
    is returned without a copy: a read-only view of the Arrow buffer, memory-mapped when the split
    was loaded from disk (``np.array(m)`` to write). Several chunks (``save_to_disk`` writes record
    batches of 1,000 rows, each a chunk once loaded), an indices mapping (``select``, ``shuffle``: one
    gather of the stored rows), a variable-length list type with equal lengths, or float16/float64
    values cost one copy into the result (float64 is cast to float32, and values beyond float32's range are refused
    after the cast). A copy larger than the machine's physical memory is refused before it is made,
    naming the column, the size and the split's files.

    Args:
        split: A ``datasets.Dataset`` (any datasets version) or a ``pyarrow.Table``.
        column: The column name.

    Returns:
        (N, D) float32, row i the split's row i.

    Raises:
        ValueError: the column is missing (its columns listed), is not a list of floats, or has a null
            row, a null entry, rows of different lengths, a NaN or inf, or a float64 value beyond
            float32's range; the message names the column and the first bad row.
    """
    stored, indices = _stored_column(split, column)
    if indices is not None and _gather_in_numpy(stored):
        # a gather of the stored rows' matrix is several times faster than Arrow's take over many chunks;
        # taken only without nulls (the structural errors would name stored rows, not the split's)
        out = np.take(_matrix(stored, column, split, check=False), indices.to_numpy().astype(np.intp), axis=0)
        _check_finite(column, 0, out, out)
        return out
    return _matrix(stored if indices is None else stored.take(indices), column, split)


def _gather_in_numpy(stored: pa.ChunkedArray) -> bool:
    return pa.types.is_fixed_size_list(stored.type) and stored.type.value_type == pa.float32() and all(
        chunk.null_count == 0 and chunk.flatten().null_count == 0 for chunk in stored.chunks)


def _matrix(values: pa.ChunkedArray, column: str, split, check: bool = True) -> np.ndarray:
    kind = values.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
            or kind.value_type not in _FLOAT_TYPES:
        raise ValueError(f"column {column!r} must be a fixed-length list of floats "
                         f"(datasets.List(datasets.Value('float32'), length=D)), got Arrow type {kind}")
    num_rows = len(values)
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        first = next(_chunks(values), None)
        width = 0
        if first is not None:
            _first_null(column, 0, first[1].slice(0, 1))
            width = int(np.diff(_list_offsets(first[1].slice(0, 1)))[0])
    if num_rows and width == 0:
        raise ValueError(f"column {column!r}: rows have no values (length 0)")
    pieces = [(start, _flat_floats(column, start, chunk, width)) for start, chunk in _chunks(values)]
    if len(pieces) == 1 and pieces[0][1].dtype == np.float32:
        out = pieces[0][1]
        if check:
            _check_finite(column, 0, out, out)
        return out
    needed = num_rows * width * 4
    memory = _physical_memory()
    if memory and needed > memory:
        files = [f.get("filename") for f in getattr(split, "cache_files", [])]
        raise ValueError(f"column {column!r}: reading {num_rows} rows x {width} as float32 needs a {needed:,}-byte "
                         f"copy, more than this machine's {memory:,} bytes of memory (the split has "
                         f"{values.num_chunks} chunks{', files ' + str(files) if files else ''}); only a float32 "
                         f"column in one chunk without an indices mapping is read memory-mapped")
    out = np.empty((num_rows, width), dtype=np.float32)
    for start, piece in pieces:
        target = out[start:start + piece.shape[0]]
        with np.errstate(over="ignore", invalid="ignore"):
            target[...] = piece
        if check:
            _check_finite(column, start, piece, target)
    return out


def feature_tensor(split, column: str = "features"):
    """:func:`feature_matrix` as a float32 CPU ``torch.Tensor`` (sharing its memory).

    The tensor may be a read-only memory map (see :func:`feature_matrix`): index it (``t[rows]``
    copies) but never write to it in place.

    Args:
        split: A ``datasets.Dataset`` or a ``pyarrow.Table``.
        column: The column name.
    """
    import torch

    matrix = feature_matrix(split, column)
    with warnings.catch_warnings():  # "the given NumPy array is not writable": documented above
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix)


def list_column(split, column: str) -> ListColumn:
    """A list column (or a scalar column: one entry per row) as offsets and flattened values.

    Args:
        split: A ``datasets.Dataset`` or a ``pyarrow.Table``.
        column: The column name (``labels``, ``observed_labels``, or a list of weights).

    Returns:
        :class:`ListColumn`; the values keep their stored numpy dtype.

    Raises:
        ValueError: the column is missing, is not a list or numeric column, or has a null row or entry.
    """
    values = arrow_column(split, column)
    kind = values.type
    offsets, flat = [np.zeros(1, dtype=np.int64)], []
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        if not (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
            raise ValueError(f"column {column!r} must be a list of numbers, got Arrow type {kind}")
        for start, chunk in _chunks(values):
            _first_null(column, start, chunk)
            if pa.types.is_fixed_size_list(kind):
                chunk_offsets = np.arange(len(chunk) + 1, dtype=np.int64) * kind.list_size
            else:
                chunk_offsets = _list_offsets(chunk)
            entries = chunk.flatten()
            _check_values(column, start, chunk_offsets, entries)
            offsets.append(chunk_offsets[1:] + offsets[-1][-1])
            flat.append(entries.to_numpy(zero_copy_only=False))
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        for start, chunk in _chunks(values):
            _first_null(column, start, chunk)
            offsets.append(np.arange(1, len(chunk) + 1, dtype=np.int64) + offsets[-1][-1])
            flat.append(chunk.to_numpy(zero_copy_only=False))
    else:
        raise ValueError(f"column {column!r} must be a list of class indices (or numbers), got Arrow type {kind}")
    dtype = kind.value_type.to_pandas_dtype() if hasattr(kind, "value_type") else kind.to_pandas_dtype()
    values_np = np.concatenate(flat) if len(flat) > 1 else (flat[0] if flat else np.zeros(0, dtype=dtype))
    return ListColumn(np.concatenate(offsets), values_np)


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def label_matrix(split, column: str, num_classes: int):
    """The (N, C) float32 {0, 1} tensor of a list-of-class-indices column, in one vectorised scatter.

    Args:
        split: A ``datasets.Dataset`` or a ``pyarrow.Table``.
        column: ``labels`` (full labels) or ``observed_labels`` (single positives); a ``ClassLabel``
            column (one index per row) works too.
        num_classes: C.

    Raises:
        ValueError: the column is missing or not of integers, a row is null, or a row lists a class
            outside [0, C) (the row named).
    """
    import torch

    num_classes = _check_num_classes(num_classes)
    labels = list_column(split, column)
    if labels.values.dtype.kind not in "iu":
        raise ValueError(f"column {column!r} must hold integer class indices, got {labels.values.dtype}")
    classes = labels.values.astype(np.int64, copy=False)
    bad = np.flatnonzero((classes < 0) | (classes >= num_classes))
    if bad.size:
        row = int(np.searchsorted(labels.offsets, bad[0], side="right")) - 1
        raise ValueError(f"column {column!r}: row {row} lists class {int(classes[bad[0]])}, outside "
                         f"[0, {num_classes - 1}]")
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out.reshape(-1)[labels.rows * num_classes + classes] = 1.0
    return torch.from_numpy(out)


def index_column(split, column: str = "index") -> np.ndarray:
    """An integer column as one (N,) int64 array.

    Args:
        split: A ``datasets.Dataset`` or a ``pyarrow.Table``.
        column: The column name.

    Raises:
        ValueError: the column is missing, not of integers, or has a null row.
    """
    values = arrow_column(split, column)
    if not pa.types.is_integer(values.type):
        raise ValueError(f"column {column!r} must hold integers, got Arrow type {values.type}")
    out = np.empty(len(values), dtype=np.int64)
    for start, chunk in _chunks(values):
        _first_null(column, start, chunk)
        out[start:start + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
    return out


def equal_list_rows(split, column_a: str, column_b: str) -> np.ndarray:
    """(N,) bool: whether row i of two list columns holds the same entries, order ignored.

    Rows are compared as multisets (``sorted(a) == sorted(b)``), vectorised over the whole split.

    Args:
        split: A ``datasets.Dataset`` or a ``pyarrow.Table``.
        column_a: One list column.
        column_b: The other.
    """
    a, b = list_column(split, column_a), list_column(split, column_b)
    equal = a.lengths == b.lengths
    keep_a, keep_b = equal[a.rows], equal[b.rows]
    rows_a, values_a = a.rows[keep_a], a.values[keep_a]
    values_b = b.values[keep_b][np.lexsort((b.values[keep_b], b.rows[keep_b]))]
    order = np.lexsort((values_a, rows_a))
    differs = rows_a[order][values_a[order] != values_b]
    equal[differs] = False
    return equal
