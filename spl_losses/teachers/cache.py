"""Teacher outputs computed once per (teacher, weights, preprocessing, dataset split) and stored as files.

Where the files live (decided here, used by :func:`spl_losses.teachers.teacher_scores` and
:func:`spl_losses.teachers.export_teacher_scores`):

- a cache folder, ``$SPL_LOSSES_CACHE/teacher_scores`` by default;
- beside a dataset, in its ``teacher_scores/`` folder: a ``save_to_disk`` folder or a Hub dataset repo
  (``hf-hub:ORG/NAME`` or ``ORG/NAME``), so the scores travel with the dataset. ``datasets`` ignores the
  folder when it loads the dataset (safetensors is not a data format), and the split itself is unchanged:
  adding a column instead would change the split's fingerprint, the very key of the scores.

A file is ``<teacher kind>-<key>.safetensors`` with one tensor ``raw`` (the teacher's expensive output:
(N, C) or (N, V, C) for V image views) and metadata: the teacher's description (model, weights
fingerprint, preprocessing, prompts, ...), the split's :func:`spl_losses.data.dataset_fingerprint`, the
row count, the class names and the SHA-256 of ``raw``. A file whose values changed (checksum) or hold NaN
or inf is ignored with a warning and computed again. The key is a hash of the description and the
split's fingerprint, so a different model, weights, preprocessing or dataset never reads another's file.
"""
import hashlib
import json
import os
import shutil
import warnings
from typing import Any, Dict, Optional

import torch
from safetensors import safe_open
from torch import nn

from ..cache_files import save_tensor_file, tensor_sha256

__all__ = ["SCORES_FOLDER", "FORMAT", "cache_key", "scores_filename", "default_teacher_cache_dir",
           "save_raw_scores", "load_raw_scores", "find_beside_dataset", "export_file", "module_fingerprint",
           "tensor_fingerprint"]

#: The folder of teacher files inside a dataset folder or Hub dataset repo.
SCORES_FOLDER = "teacher_scores"
#: Written into every file's metadata; files of another format are ignored.
FORMAT = "spl_losses.teacher_scores/1"
_HUB_PREFIX = "hf-hub:"


def tensor_fingerprint(tensors: Dict[str, torch.Tensor]) -> str:
    """A 16-hex-digit SHA-256 of named tensors (names, shapes, dtypes and bytes).

    Args:
        tensors: Name -> tensor (a state dict, or ``{"features": x}``).
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def module_fingerprint(module: nn.Module) -> str:
    """:func:`tensor_fingerprint` of a module's whole state dict (a classifier's head changes its scores).

    Args:
        module: The teacher model.
    """
    return tensor_fingerprint(module.state_dict(keep_vars=True))


def cache_key(description: Dict[str, Any], dataset_fingerprint: str) -> str:
    """The 24-hex-digit key of a teacher's output on one split.

    Args:
        description: The teacher's JSON-able description (:meth:`Teacher.describe`).
        dataset_fingerprint: The split's :func:`spl_losses.data.dataset_fingerprint`.
    """
    blob = json.dumps({"format": FORMAT, "teacher": description, "dataset": dataset_fingerprint},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def scores_filename(kind: str, key: str) -> str:
    """``<kind>-<key>.safetensors``.

    Args:
        kind: The teacher's kind (``clip``, ``model``, ``knn``).
        key: :func:`cache_key`.
    """
    return f"{kind}-{key}.safetensors"


def default_teacher_cache_dir() -> str:
    """``$SPL_LOSSES_CACHE/teacher_scores`` (``~/.cache/spl_losses/teacher_scores`` by default)."""
    from ..data.fingerprint import default_cache_root

    return os.path.join(default_cache_root(), SCORES_FOLDER)


def save_raw_scores(path: str, raw: torch.Tensor, metadata: Dict[str, Any]) -> str:
    """Write ``raw`` and its metadata to ``path`` atomically (a temporary file, then a rename).

    Args:
        path: Destination ``.safetensors`` file.
        raw: The teacher's raw output.
        metadata: JSON-able metadata (description, dataset fingerprint, num_rows, class_names).

    Returns:
        ``path``.
    """
    meta = {"format": FORMAT, **{k: json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()}}
    return save_tensor_file(path, "raw", raw.detach().float(), meta)


def load_raw_scores(path: str, dataset_fingerprint: str, num_rows: int) -> Optional[torch.Tensor]:
    """Read the ``raw`` tensor of a teacher file if it belongs to this split, else None (with a warning
    when the file exists but was made for other data).

    Args:
        path: A teacher file.
        dataset_fingerprint: The split's fingerprint the file must carry.
        num_rows: N, the split's size (the tensor's first dimension).
    """
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            raw = f.get_tensor("raw")
    except Exception as err:  # a truncated or foreign file only costs a recomputation
        warnings.warn(f"ignoring unreadable teacher file {path}: {type(err).__name__}: {err}")
        return None
    found = json.loads(meta.get("dataset_fingerprint", "null"))
    if meta.get("format") != FORMAT or found != dataset_fingerprint or raw.shape[0] != num_rows:
        warnings.warn(f"ignoring teacher file {path}: made for other data (format {meta.get('format')!r}, "
                      f"dataset fingerprint {found!r}, {raw.shape[0]} rows; expected {dataset_fingerprint!r}, "
                      f"{num_rows} rows)")
        return None
    if "sha256" in meta and tensor_sha256(raw.float()) != meta["sha256"]:
        warnings.warn(f"ignoring teacher file {path}: its values changed since it was written (checksum mismatch); "
                      "the teacher's scores are computed again")
        return None
    if not bool(torch.isfinite(raw).all()):
        warnings.warn(f"ignoring teacher file {path}: {int((~torch.isfinite(raw)).sum())} value(s) are NaN or inf "
                      "(they would change the pseudo-labels); the teacher's scores are computed again")
        return None
    return raw


def _hub_repo(source: str) -> Optional[str]:
    """The Hub dataset repo id of ``source`` (``hf-hub:ORG/NAME`` or ``ORG/NAME`` that is not a local path)."""
    if source.startswith(_HUB_PREFIX):
        return source[len(_HUB_PREFIX):]
    if not os.path.exists(os.path.expanduser(source)) and source.count("/") == 1:
        return source
    return None


def find_beside_dataset(source: str, filename: str, token: Optional[str] = None) -> Optional[str]:
    """Local path of ``teacher_scores/<filename>`` beside a dataset, downloading it from the Hub if needed.

    Args:
        source: A local dataset folder, or a Hub dataset repo (``hf-hub:ORG/NAME`` or ``ORG/NAME``).
        filename: :func:`scores_filename`.
        token: Hub token for a private repo.

    Returns:
        The local file path, or None when the dataset has no such file (or the Hub cannot be reached).
    """
    repo = _hub_repo(source)
    if repo is None:
        path = os.path.join(os.path.expanduser(source), SCORES_FOLDER, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo, f"{SCORES_FOLDER}/{filename}", repo_type="dataset", token=token)
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
        return None


def export_file(path: str, destination: str, token: Optional[str] = None) -> str:
    """Put a teacher file beside a dataset: copy it into ``<folder>/teacher_scores/`` or upload it to
    ``teacher_scores/`` of a Hub dataset repo.

    Args:
        path: The teacher file.
        destination: A local dataset folder, or a Hub dataset repo (``hf-hub:ORG/NAME`` or ``ORG/NAME``).
        token: Hub token with write access.

    Returns:
        The local path or the ``hf-hub:`` path of the exported file.
    """
    filename = os.path.basename(path)
    repo = _hub_repo(destination)
    if repo is None:
        target = os.path.join(os.path.expanduser(destination), SCORES_FOLDER, filename)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        return target
    from huggingface_hub import HfApi

    HfApi(token=token).upload_file(path_or_fileobj=path, path_in_repo=f"{SCORES_FOLDER}/{filename}",
                                   repo_id=repo, repo_type="dataset",
                                   commit_message=f"Add teacher scores {filename}")
    return f"{_HUB_PREFIX}{repo}/{SCORES_FOLDER}/{filename}"
