"""The teacher protocol and the cached scoring call.

A teacher scores every (example, class) of a dataset split. Its work is split in two:

- :meth:`Teacher.compute_raw` is the expensive pass (a model over every image, a neighbour graph) whose
  output depends only on what :meth:`Teacher.describe` lists and on the split: it is cached;
- :meth:`Teacher.scores_from_raw` turns that output into the (N, C) scores in [0, 1] (a softmax at a
  temperature, the fusion of image views, a normalisation): cheap, so its options can change without
  recomputing anything.

:func:`teacher_scores` is the call to use: it looks for the raw output beside the dataset and in the
cache, computes and stores it when absent, and returns the scores. Rows follow the split's ``index``
column (row i is the example ``index == i``), as the losses' ``pseudo_labels`` expect.
"""
import os
import tempfile
from typing import Any, Dict, List, Optional

import datasets
import torch

from . import cache

__all__ = ["Teacher", "teacher_scores", "export_teacher_scores", "split_class_names", "observed_label_matrix"]


def split_class_names(split: datasets.Dataset) -> List[str]:
    """The class names of an SPML split (its ``observed_labels`` / ``labels`` ClassLabel feature).

    Args:
        split: A split of the SPML data contract.
    """
    from ..training.label_matrices import label_names

    return label_names(split)


def observed_label_matrix(split: datasets.Dataset) -> torch.Tensor:
    """The (N, C) {0, 1} matrix of a split's observed positives, rows in ``index`` order.

    Args:
        split: A split with ``observed_labels`` (and ``index`` = row position).
    """
    from ..training.label_matrices import dense_labels

    return dense_labels(split, "observed_labels", len(split_class_names(split)))


class Teacher:
    """Base class of the teachers: scores every (example, class) of a split.

    Subclasses set :attr:`kind` and implement :meth:`describe`, :meth:`compute_raw` and, when the raw
    output is not already the scores, :meth:`scores_from_raw`.
    """

    #: Short name of the teacher family, the prefix of its cache files (``clip``, ``model``, ``knn``, ``scores``).
    kind: str = "teacher"
    #: Whether :func:`teacher_scores` caches the raw output. False for a teacher whose raw output is already
    #: a file (``scores:PATH``): it is read each time, never looked for beside the dataset, never written.
    cacheable: bool = True

    def describe(self) -> Dict[str, Any]:
        """Everything the raw output depends on besides the split, JSON-able: the cache key.

        Include the model's identity and weights fingerprint, the preprocessing and any option of the
        expensive pass; leave out the options of :meth:`scores_from_raw`.
        """
        raise NotImplementedError

    def compute_raw(self, split: datasets.Dataset) -> torch.Tensor:
        """The expensive pass over ``split``: an (N, C) or (N, V, C) float tensor, rows in ``index`` order.

        Args:
            split: The dataset split.
        """
        raise NotImplementedError

    def scores_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """The (N, C) scores in [0, 1] from the raw output (identity by default).

        Args:
            raw: The output of :meth:`compute_raw`.
        """
        return raw


def _locate_or_compute(teacher: Teacher, split: datasets.Dataset, cache_dir: Optional[str],
                       dataset_source: Optional[str], token: Optional[str], recompute: bool):
    """``(path, raw)``: the teacher file of ``split`` and its raw tensor.

    Looked for, in order: beside the dataset (``dataset_source``: its ``teacher_scores/`` folder, local or on
    the Hub), then in ``cache_dir``; when absent, computed and written to ``cache_dir``.
    """
    from ..data import dataset_fingerprint

    fingerprint = dataset_fingerprint(split)
    description = teacher.describe()
    filename = cache.scores_filename(teacher.kind, cache.cache_key(description, fingerprint))
    local = os.path.join(cache_dir or cache.default_teacher_cache_dir(), filename)
    if not recompute and teacher.cacheable:
        candidates = [cache.find_beside_dataset(dataset_source, filename, token)] if dataset_source else []
        for path in candidates + [local]:
            raw = cache.load_raw_scores(path, fingerprint, len(split)) if path else None
            if raw is not None:
                return path, raw
    raw = _checked_raw(teacher, split)
    try:
        class_names = split_class_names(split)
    except ValueError:
        class_names = None
    metadata = {"teacher": description, "dataset_fingerprint": fingerprint, "num_rows": len(split),
                "class_names": class_names}
    return cache.save_raw_scores(local, raw, metadata), raw.float()


def _checked_raw(teacher: Teacher, split: datasets.Dataset) -> torch.Tensor:
    """``teacher.compute_raw(split)``, refused unless it has one row per example of ``split``."""
    raw = teacher.compute_raw(split)
    if raw.shape[0] != len(split):
        raise RuntimeError(f"{type(teacher).__name__}.compute_raw returned {raw.shape[0]} rows for a split of {len(split)}")
    return raw


def teacher_scores(
        teacher: Teacher,
        split: datasets.Dataset,
        cache_dir: Optional[str] = None,
        dataset_source: Optional[str] = None,
        token: Optional[str] = None,
        recompute: bool = False,
) -> torch.Tensor:
    """The teacher's (N, C) scores on ``split``, from its cached raw output (computed once).

    Args:
        teacher: The teacher.
        split: The split to score (usually ``train``), rows in ``index`` order.
        cache_dir: Cache folder (default ``$SPL_LOSSES_CACHE/teacher_scores``).
        dataset_source: Where the dataset lives, a local ``save_to_disk`` folder or a Hub dataset repo
            (``hf-hub:ORG/NAME`` or ``ORG/NAME``), whose ``teacher_scores/`` folder is searched first (see
            :func:`export_teacher_scores`); None skips that look-up.
        token: Hub token for a private dataset repo.
        recompute: Ignore existing files and compute again.

    Returns:
        A float32 (N, C) tensor in [0, 1].

    A teacher with ``cacheable = False`` (``scores:PATH``) is read directly: ``cache_dir``, ``dataset_source``,
    ``token`` and ``recompute`` are then unused and nothing is written.
    """
    if not teacher.cacheable:
        return teacher.scores_from_raw(_checked_raw(teacher, split)).float()
    raw = _locate_or_compute(teacher, split, cache_dir, dataset_source, token, recompute)[1]
    return teacher.scores_from_raw(raw).float()


def export_teacher_scores(teacher: Teacher, split: datasets.Dataset, destination: str,
                          cache_dir: Optional[str] = None, token: Optional[str] = None) -> str:
    """Put ``teacher``'s file for ``split`` beside the dataset (computed first if it is in no cache).

    Later :func:`teacher_scores` calls with ``dataset_source=destination`` (on any machine) read it instead of
    recomputing: the file goes into ``<folder>/teacher_scores/`` of a local dataset folder, or is uploaded to
    ``teacher_scores/`` of a Hub dataset repo.

    Args:
        teacher: The teacher.
        split: The split it scored.
        destination: A local dataset folder, or a Hub dataset repo (``hf-hub:ORG/NAME`` or ``ORG/NAME``).
        cache_dir: Cache folder (default ``$SPL_LOSSES_CACHE/teacher_scores``; unused by a teacher with
            ``cacheable = False``, whose file is written to a temporary folder, exported, then removed).
        token: Hub token with write access.

    Returns:
        The local path or the ``hf-hub:`` path of the exported file.
    """
    if not teacher.cacheable:  # its file is not in the teacher format: write one where no cache sees it
        with tempfile.TemporaryDirectory() as folder:
            return cache.export_file(_locate_or_compute(teacher, split, folder, None, token, True)[0], destination,
                                     token)
    path = _locate_or_compute(teacher, split, cache_dir, None, token, False)[0]
    return cache.export_file(path, destination, token)
