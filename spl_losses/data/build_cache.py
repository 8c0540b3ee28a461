"""The cache key of a build: its input files, so that a listing or annotation file changed in place is
noticed and the build redone.

``create_builder`` folds :func:`input_files_signature` into the ``datasets`` builder hash (with the hash
of the code), so the cache folder of a build changes when an input file does. The key is cheap: one
``stat`` per file (path, size, ``st_mtime_ns``), no content is read. Image files are not part of it
(there may be millions): the fingerprint of the built splits (:mod:`spl_losses.data.fingerprint`)
covers them.
"""
import inspect
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

import datasets
from datasets.fingerprint import Hasher

__all__ = ["code_hash", "input_files_signature", "is_built"]


def code_hash(cls: type, modules: Sequence[str]) -> str:
    """Hash of the source of the builder's module and of ``modules`` (the base and the protocol), so code
    changes invalidate caches.

    Args:
        cls: The builder class.
        modules: Further module names whose source is part of the key.
    """
    texts = []
    for module_name in {cls.__module__, *modules}:
        module = sys.modules.get(module_name)
        try:
            texts.append(inspect.getsource(module))
        except (OSError, TypeError):
            texts.append(module_name)
    return Hasher.hash(sorted(texts))

#: Subfolders of ``root`` with more entries than this are image folders: their files are not part of the key.
_SIGNATURE_MAX_DIR_ENTRIES = 256
#: The most files of ``root`` that enter the key (annotation files sit near the top of a raw tree).
_SIGNATURE_MAX_FILES = 4096


def _root_files(root: str, depth: int = 2) -> List[str]:
    """Files directly under ``root`` and in its small subfolders down to ``depth`` levels, sorted."""
    found: List[str] = []
    pending = [(root, 0)]
    while pending and len(found) < _SIGNATURE_MAX_FILES:
        folder, level = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    entries.append(entry)
                    if level and len(entries) > _SIGNATURE_MAX_DIR_ENTRIES:
                        break
        except OSError:
            continue
        if level and len(entries) > _SIGNATURE_MAX_DIR_ENTRIES:
            continue
        for entry in entries:
            try:
                if entry.is_file():
                    found.append(entry.path)
                elif entry.is_dir() and level < depth:
                    pending.append((entry.path, level + 1))
            except OSError:
                continue
    return sorted(found[:_SIGNATURE_MAX_FILES])


def input_files_signature(cls: type, config: Dict[str, Any]) -> List[Tuple[str, int, int]]:
    """``(path, size, st_mtime_ns)`` of the input files of a build: those named by the builder's path
    options, and the files directly under ``root`` and in its subfolders of at most
    ``_SIGNATURE_MAX_DIR_ENTRIES`` entries, two levels down (listings, annotation and class files; large
    image folders are left out: images are checked by the fingerprint of the built splits).

    Args:
        cls: The builder class.
        config: Its config fields (absolute paths, as :func:`create_builder` makes them).
    """
    paths = [os.fspath(config[key]) for key in cls.path_options if isinstance(config.get(key), (str, os.PathLike))]
    root = config.get("root")
    if isinstance(root, str) and os.path.isdir(root):
        paths += _root_files(root)
    signature = []
    for path in sorted(set(paths)):
        try:
            stat = os.stat(path)
        except OSError:
            continue  # a missing file is reported by the build itself
        if os.path.isfile(path):
            signature.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    return signature


def is_built(builder) -> bool:
    """Whether a complete build of ``builder`` (same parameters, code and input files) is in its cache.

    Args:
        builder: A ``datasets.DatasetBuilder``.
    """
    return os.path.isfile(os.path.join(builder.cache_dir, datasets.config.DATASET_INFO_FILENAME))
