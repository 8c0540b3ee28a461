"""Precomputed scores as the teacher (``scores:PATH``): any tagger's (N, C) probabilities, or an oracle.

The file holds one row of C scores per example, C the number of the split's classes (in the order of its
class names), each a probability in [0, 1], the range the rules read (``ThresholdRule``'s thresholds,
the soft rules' confidences); logits are refused: apply a sigmoid first. Formats, chosen by the suffix:

- ``.npy``: an (N, C) numeric array, loaded without pickle (an object or pickled array is refused). It has
  no index: it must have exactly one row per example, file row i being the example whose ``index`` is i
  (the order of a split whose ``index`` is its row position 0..N-1, as every SPML split);
- ``.safetensors``: one (N, C) tensor (read as the ``.npy``), or a ``scores`` (M, C) tensor with an
  optional ``index`` (M,) integer tensor keying its rows;
- ``.parquet``: an ``index`` column and either a ``scores`` column of lists of C numbers or one numeric
  column per class name (other columns are ignored).

Keyed rows (an ``index`` in the file) are aligned to the split by its ``index`` column: every index of the
split must be in the file, an index may appear there only once, and the file may hold other rows (another
split's). Row r of the scores is the split's row r. Every value must be finite and lie in [0, 1].

The file is the raw output: :func:`spl_losses.teachers.teacher_scores` reads it each time and never writes
it to the teacher cache (:attr:`ScoresTeacher.cacheable` is False).
"""
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import torch

from .base import Teacher, split_class_names

__all__ = ["ScoresTeacher", "SCORES_SUFFIXES", "read_scores_file"]

#: The file suffixes :class:`ScoresTeacher` reads.
SCORES_SUFFIXES = (".npy", ".safetensors", ".parquet")
_CHECK_ROWS = 65_536  # rows per block of the finite / range checks


def _suffix(path: str) -> str:
    for suffix in SCORES_SUFFIXES:
        if path.lower().endswith(suffix):
            return suffix
    raise ValueError(f"teacher scores file {path}: unknown format; expected a file ending in "
                     f"{', '.join(SCORES_SUFFIXES)}")


def _read_npy(path: str) -> Tuple[np.ndarray, None]:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise ValueError(f"teacher scores file {path}: not a plain numeric array (an object or pickled .npy is "
                         f"refused; save a float array, e.g. np.save(path, scores.astype(np.float32))): {err}") from err
    if not isinstance(array, np.ndarray):
        raise ValueError(f"teacher scores file {path}: expected one array (.npy), got {type(array).__name__}")
    return array, None


def _read_safetensors(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys = sorted(f.keys())
        if len(keys) == 1:
            return f.get_tensor(keys[0]).float().numpy(), None
        if "scores" not in keys or set(keys) - {"scores", "index"}:
            raise ValueError(f"teacher scores file {path}: expected one tensor, or a 'scores' tensor with an optional "
                             f"'index' tensor; got tensors {keys}")
        index = f.get_tensor("index") if "index" in keys else None
        scores = f.get_tensor("scores")
        if scores.dtype.is_floating_point:
            scores = scores.float()
        if index is not None and (index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool):
            raise ValueError(f"teacher scores file {path}: 'index' must hold integers, got {index.dtype}")
        return scores.numpy(), None if index is None else index.numpy()


def _read_parquet(path: str, class_names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = table.column_names
    if "index" not in columns:
        raise ValueError(f"teacher scores file {path}: a Parquet file needs an 'index' column (the dataset's "
                         f"index of each row); got columns {columns}")
    index_column = table.column("index")
    if not pa.types.is_integer(index_column.type):
        raise ValueError(f"teacher scores file {path}: 'index' must hold integers, got {index_column.type}")
    if index_column.null_count:
        raise ValueError(f"teacher scores file {path}: 'index' has {index_column.null_count} missing value(s)")
    index = index_column.to_numpy()
    if "scores" in columns:
        scores = table.column("scores").combine_chunks()
        if not (pa.types.is_list(scores.type) or pa.types.is_large_list(scores.type)
                or pa.types.is_fixed_size_list(scores.type)):
            raise ValueError(f"teacher scores file {path}: 'scores' must be a column of lists of "
                             f"{len(class_names)} numbers, got type {scores.type}")
        value_type = scores.type.value_type
        if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_boolean(value_type)):
            raise ValueError(f"teacher scores file {path}: 'scores' must hold lists of numbers, got type {scores.type}")
        lengths = pc.list_value_length(scores).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(np.isnan(lengths.astype(np.float64)) | (lengths != len(class_names)))
        if len(wrong):
            row = int(wrong[0])
            found = "no list" if scores[row].as_py() is None else f"{int(lengths[row])} values"
            raise ValueError(f"teacher scores file {path}: expected {len(class_names)} scores per row (the split's "
                             f"{len(class_names)} class names), got {found} in row {row} (index {int(index[row])})")
        values = scores.flatten().to_numpy(zero_copy_only=False).astype(np.float32)  # a null value becomes NaN
        return values.reshape(len(index), len(class_names)), index
    missing = [name for name in class_names if name not in columns]
    if missing:
        found = [c for c in columns if c != "index"]
        raise ValueError(f"teacher scores file {path}: expected a 'scores' list column or one column per class "
                         f"({len(class_names)} classes from the split's class names); missing class column(s) "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; got columns {found[:20]}")
    blocks = []
    for name in class_names:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)):
            raise ValueError(f"teacher scores file {path}: class column {name!r} must be numeric, got {column.type}")
        blocks.append(column.to_numpy().astype(np.float32) if not column.null_count else
                      np.asarray(column.to_pylist(), dtype=np.float32))  # None -> NaN, refused below
    return np.stack(blocks, axis=1), index


def _check_values(path: str, scores: np.ndarray, index: Optional[np.ndarray], num_classes: int) -> np.ndarray:
    """``scores`` as float32 (M, C), refused unless 2-D with C columns and every value finite in [0, 1]."""
    if scores.dtype.kind not in "biuf":
        raise ValueError(f"teacher scores file {path}: scores must be real numbers, got dtype {scores.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"teacher scores file {path}: expected an (N, C) array, got shape {tuple(scores.shape)}")
    if scores.shape[1] != num_classes:
        raise ValueError(f"teacher scores file {path}: expected {num_classes} scores per row (the split's "
                         f"{num_classes} class names), got {scores.shape[1]}")
    if index is not None and index.shape != (scores.shape[0],):
        raise ValueError(f"teacher scores file {path}: 'index' has shape {tuple(index.shape)}, scores "
                         f"{tuple(scores.shape)}: expected one index per row")
    scores = np.asarray(scores, dtype=np.float32)
    for start in range(0, scores.shape[0], _CHECK_ROWS):
        block = scores[start:start + _CHECK_ROWS]
        for problem, bad in (("finite", ~np.isfinite(block)), ("in [0, 1]", (block < 0) | (block > 1))):
            rows = np.flatnonzero(bad.any(axis=1))
            if len(rows):
                row = start + int(rows[0])
                column = int(np.flatnonzero(bad[rows[0]])[0])
                key = f" (index {int(index[row])})" if index is not None else ""
                hint = "" if problem == "finite" else "; scores are probabilities: apply a sigmoid to logits"
                raise ValueError(f"teacher scores file {path}, row {row}{key}, class {column}: scores must be "
                                 f"{problem}, got {float(scores[row, column])!r}{hint}")
    return scores


def _align(path: str, scores: np.ndarray, file_index: Optional[np.ndarray], split_index: np.ndarray) -> np.ndarray:
    """The file's rows in the order of ``split_index`` (a plain array's row i is index i)."""
    if len(np.unique(split_index)) != len(split_index):
        raise ValueError("the split's 'index' column has duplicated values; teacher scores are keyed by it")
    if file_index is None:
        if scores.shape[0] != len(split_index):
            raise ValueError(f"teacher scores file {path}: has {scores.shape[0]} rows but the split has "
                             f"{len(split_index)} examples (a file without an index holds exactly one row per "
                             "example, row i for index i)")
        file_index = np.arange(scores.shape[0])
    file_index = file_index.astype(np.int64)
    values, counts = np.unique(file_index, return_counts=True)
    if (counts > 1).any():
        duplicated = values[counts > 1]
        raise ValueError(f"teacher scores file {path}: index {int(duplicated[0])} appears "
                         f"{int(counts[counts > 1][0])} times ({len(duplicated)} duplicated index value(s))")
    order = np.argsort(file_index, kind="stable")
    sorted_index = file_index[order]
    position = np.clip(np.searchsorted(sorted_index, split_index), 0, max(len(sorted_index) - 1, 0))
    found = sorted_index[position] == split_index if len(sorted_index) else np.zeros(len(split_index), bool)
    if not found.all():
        missing = split_index[~found]
        raise ValueError(f"teacher scores file {path}: index {int(missing[0])} of the split is missing from the file "
                         f"({len(missing)} of the split's {len(split_index)} index values missing)")
    return scores[order[position]]


def read_scores_file(path: str, class_names: Sequence[str], split_index: Sequence[int]) -> torch.Tensor:
    """The (N, C) float32 scores of a file, aligned to a split's ``index`` values and checked.

    Args:
        path: A ``.npy``, ``.safetensors`` or ``.parquet`` file (see the module docstring).
        class_names: The split's C class names (their order is the column order; Parquet class columns by name).
        split_index: The split's ``index`` column (N values): row r of the result is the file's row of
            ``split_index[r]``.

    Returns:
        A float32 (N, C) tensor with values in [0, 1].
    """
    suffix = _suffix(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher scores file {path} does not exist")
    if suffix == ".npy":
        scores, index = _read_npy(path)
    elif suffix == ".safetensors":
        scores, index = _read_safetensors(path)
    else:
        scores, index = _read_parquet(path, class_names)
    scores = _check_values(path, scores, index, len(class_names))
    return torch.from_numpy(np.ascontiguousarray(_align(path, scores, index, np.asarray(split_index, np.int64))))


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class ScoresTeacher(Teacher):
    """Precomputed (N, C) scores from a file (see the module docstring for the formats and checks).

    Args:
        path: The ``.npy``, ``.safetensors`` or ``.parquet`` file (``~`` expanded); it must exist.
        class_names: Optional class names; when given they must be the split's (the scores' columns follow
            the split's class names either way).
    """

    kind = "scores"
    cacheable = False

    def __init__(self, path: str, class_names: Optional[Sequence[str]] = None):
        if not isinstance(path, str) or not path:
            raise ValueError(f"teacher scores path must be a non-empty string, got {path!r}")
        self.path = os.path.abspath(os.path.expanduser(path))
        _suffix(self.path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"teacher scores file {self.path} does not exist")
        self.class_names: Optional[List[str]] = None if class_names is None else [str(c) for c in class_names]

    def describe(self) -> Dict[str, Any]:
        """The file's path and a SHA-256 of its bytes."""
        return {"path": self.path, "sha256": _file_sha256(self.path)}

    def _class_names(self, split: datasets.Dataset) -> List[str]:
        names = split_class_names(split)
        if self.class_names is not None and self.class_names != names:
            raise ValueError(f"teacher scores {self.path}: class_names {self.class_names[:10]} differ from the split's "
                             f"{names[:10]}")
        return names

    def compute_raw(self, split: datasets.Dataset) -> torch.Tensor:
        """The file's (N, C) scores, row r for the split's row r (matched by ``index``).

        Args:
            split: The split, with an ``index`` column and ClassLabel ``labels`` / ``observed_labels``.
        """
        if "index" not in split.column_names:
            raise ValueError(f"teacher scores {self.path}: the split has no 'index' column to align the rows by; "
                             f"columns are {split.column_names}")
        from ..data.columns import index_column  # in bulk from the Arrow table

        index = index_column(split)
        return read_scores_file(self.path, self._class_names(split), index)
