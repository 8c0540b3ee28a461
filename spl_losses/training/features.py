"""Pooled backbone features, extracted once and cached on disk.

The cache file name is a hash of the model name, a fingerprint of its weights (so pretrained,
fine-tuned and randomly initialised backbones never share a cache), the image size, the
dataset split's fingerprint and the mixed-precision mode of the extraction. Files are safetensors holding one
``features`` tensor, with metadata: the format, the same key in words (model, weights, size, split fingerprint,
precision), the row count, the width and the SHA-256 of the tensor. A file is used only when all of these match
and every value is finite: an unreadable, foreign (another key: a file copied or renamed between splits of the
same size, or of another width), altered or non-finite file is ignored with a warning and rebuilt. The cache
folder's writability is checked before any extraction.
"""
import hashlib
import json
import os
import tempfile
import warnings
from typing import Any, Dict, Optional

import datasets
import torch
from safetensors import safe_open
from torch import nn

from ..cache_files import save_tensor_file, tensor_sha256
from ..data.fingerprint import default_cache_root
from .evaluation import predict_loader
from .images import ImagePipeline

__all__ = ["default_cache_dir", "weights_fingerprint", "feature_cache_path", "pooled_features",
           "extract_or_load_features", "run_features", "FEATURES_FORMAT", "read_feature_cache", "write_feature_cache",
           "check_cache_dir_writable"]

#: Written into every feature cache file's metadata; files of another format are ignored.
FEATURES_FORMAT = "spl_losses.features/1"


def default_cache_dir() -> str:
    """``$SPL_LOSSES_CACHE/features`` (default ``~/.cache/spl_losses/features``)."""
    return os.path.join(default_cache_root(), "features")


def weights_fingerprint(model: nn.Module) -> str:
    """A short SHA-256 of the tensors of the model's state dict (names, shapes, dtypes and bytes).

    The classifier (``model.get_classifier()`` of a timm model) is left out: pooled features do not
    depend on it, so runs that only differ in the head's initialisation share a cache entry.

    Args:
        model: The backbone.
    """
    skip = set()
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, nn.Module):
            skip = {id(t) for t in classifier.state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if not isinstance(tensor, torch.Tensor) or id(tensor) in skip:
            continue
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def feature_cache_path(cache_dir: str, model_name: str, weights_hash: str, image_size: int,
                       dataset_fingerprint: str, precision: str = "no") -> str:
    """Path of the cache file for one (model, weights, image size, split) combination.

    Args:
        cache_dir: Cache folder.
        model_name: timm model name.
        weights_hash: :func:`weights_fingerprint` of the backbone.
        image_size: Input side in pixels.
        dataset_fingerprint: The split's content fingerprint (``spl_losses.data.dataset_fingerprint``).
        precision: Mixed-precision mode of the extraction (``no``, ``bf16``, ``fp16``): features differ.
    """
    key = f"{model_name}|{weights_hash}|{image_size}|{dataset_fingerprint}|{precision}"
    key = hashlib.sha256(key.encode()).hexdigest()[:24]
    safe_name = model_name.replace("/", "_").replace(":", "_")
    return os.path.join(cache_dir, f"{safe_name}-{image_size}px-{key}.safetensors")


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A timm model's pooled pre-logits features (what its classifier sees).

    Args:
        model: A timm model.
        images: (B, 3, H, W).
    """
    return model.forward_head(model.forward_features(images), pre_logits=True)


def write_feature_cache(path: str, features: torch.Tensor, key: Dict[str, Any],
                        split_name: Optional[str] = None) -> str:
    """Write a feature cache file atomically (beside it, then renamed; the temporary removed on failure).

    Args:
        path: The cache file (:func:`feature_cache_path`).
        features: (N, D) float32 features.
        key: What the features were made from (model, weights, image size, split fingerprint, precision).
        split_name: The split's name (recorded for a person reading the file; not part of the key).
    """
    features = features.detach().float()
    metadata = {"format": FEATURES_FORMAT, "key": json.dumps(key, sort_keys=True, default=str),
                "num_rows": str(features.shape[0]), "width": str(features.shape[1] if features.dim() == 2 else -1),
                "split": str(split_name or "")}
    return save_tensor_file(path, "features", features, metadata)


def read_feature_cache(path: str, key: Dict[str, Any], num_rows: int) -> Optional[torch.Tensor]:
    """The features of a cache file made from ``key`` for ``num_rows`` rows, or None: missing, or (with a warning
    naming the file and why) unreadable, foreign, altered or non-finite; such a file is then rebuilt.

    Args:
        path: The cache file.
        key: What the features must have been made from (see :func:`write_feature_cache`).
        num_rows: The split's size.
    """
    if not os.path.isfile(path):
        return None

    def ignored(why: str) -> None:
        warnings.warn(f"ignoring feature cache {path}: {why}; it is extracted again", stacklevel=3)

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
    except Exception as err:  # truncated, not safetensors, no 'features' tensor
        return ignored(f"unreadable ({type(err).__name__}: {err})")
    if meta.get("format") != FEATURES_FORMAT:
        return ignored(f"not a feature cache of this version (format {meta.get('format')!r})")
    try:
        found = json.loads(meta.get("key", "null"))
    except ValueError:
        found = None
    expected = json.loads(json.dumps(key, sort_keys=True, default=str))
    if found != expected:
        diff = sorted(k for k in set(found or {}) | set(expected) if (found or {}).get(k) != expected.get(k)) \
            if isinstance(found, dict) else ["key"]
        return ignored(f"made for other data or another backbone ({', '.join(diff)} differ)")
    if features.dim() != 2 or features.shape[0] != num_rows or str(features.shape[1]) != meta.get("width") \
            or str(features.shape[0]) != meta.get("num_rows"):
        return ignored(f"shape {tuple(features.shape)} is not the recorded ({meta.get('num_rows')}, "
                       f"{meta.get('width')}) for {num_rows} rows")
    if features.dtype != torch.float32:
        return ignored(f"dtype {features.dtype}, not float32")
    if tensor_sha256(features) != meta.get("sha256"):
        return ignored("its values changed since it was written (checksum mismatch)")
    if not bool(torch.isfinite(features).all()):
        return ignored(f"{int((~torch.isfinite(features)).sum())} value(s) are NaN or inf")
    return features


def check_cache_dir_writable(cache_dir: str) -> None:
    """Refuse a feature cache folder that cannot be created or written (before any extraction).

    Args:
        cache_dir: The folder (``--cache-dir``).

    Raises:
        ValueError: naming the folder and the flag.
    """
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"the feature cache folder {cache_dir} cannot be written ({type(err).__name__}: "
                         f"{err.strerror or err}): choose another --cache-dir (or fix its permissions)") from None


@torch.no_grad()
def extract_or_load_features(
        accelerator,
        model: nn.Module,
        split: datasets.Dataset,
        pipeline: ImagePipeline,
        cache_path: str,
        batch_size: int,
        fingerprint: Optional[str] = None,
        split_name: Optional[str] = None,
        show_progress: bool = False,
        description: str = "features",
        cache_key: Optional[Dict[str, Any]] = None,
) -> torch.Tensor:
    """The (N, D) pooled features of ``split`` in index order: read from ``cache_path`` or extracted.

    Extraction is shared by all processes (each scores part of the split, every example exactly
    once); the first process of each machine writes the cache file (so machines without a shared disk
    each keep a copy). The file is read only when every process finds it, so that all of them either
    read or extract together.

    Args:
        accelerator: The ``accelerate.Accelerator``.
        model: The frozen timm backbone (with or without its classifier).
        split: Split with ``image`` and ``index`` columns.
        pipeline: The image pipeline (loaders of uint8 batches, normalised on the device).
        cache_path: Cache file (see :func:`feature_cache_path`).
        batch_size: Extraction batch size (global).
        fingerprint: The split's ``dataset_fingerprint`` (keys the pipeline's image cache, if any).
        split_name: The split's name, for errors.
        show_progress: Progress bar on the main process.
        description: Progress-bar label.
        cache_key: What the features are made from, recorded in the file and checked when read (default: the
            cache path's name and the split's fingerprint).

    Returns:
        A float32 CPU tensor.
    """
    key = dict(cache_key) if cache_key is not None else {"file": os.path.basename(cache_path), "split": fingerprint}
    features = read_feature_cache(cache_path, key, len(split))
    found = torch.tensor([int(features is not None)], device=accelerator.device)
    if bool(accelerator.gather(found).all()):
        return features
    model = model.to(accelerator.device).eval()
    loader = accelerator.prepare_data_loader(pipeline.loader(split, batch_size, fingerprint=fingerprint,
                                                             split_name=split_name))
    features = predict_loader(lambda x: pooled_features(model, x), loader, accelerator, len(split),
                              show_progress=show_progress, description=description, preprocess=pipeline.normalize)
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"the backbone's features of split {split_name or '?'} hold "
                         f"{int((~torch.isfinite(features)).sum())} NaN or inf value(s) (model weights or images); "
                         "nothing was cached")
    if accelerator.is_local_main_process:
        write_feature_cache(cache_path, features, key, split_name)
    accelerator.wait_for_everyone()
    return features


def run_features(accelerator, settings, data, model: Optional[nn.Module], batch_size: int) -> Dict[str, torch.Tensor]:
    """The (N, D) float32 features of every split of a run: the dataset's ``features`` column, or the frozen
    backbone's (extracted once, cached on disk by model, weights, image size, precision and split fingerprint).

    Args:
        accelerator: The ``accelerate.Accelerator``.
        settings: The run's settings (cache folder, image size, precision, input pipeline options).
        data: The run's :class:`~spl_losses.training.run_data.RunData`.
        model: The run's timm model (or BoostLU around one), or None for a features dataset.
        batch_size: The phase's batch size (extraction uses at least 64 rows per process).
    """
    from .images import apply_device_options
    from .builders import timm_model_of

    if model is None:  # read in bulk from the Arrow table (never row by row)
        from ..data.columns import feature_tensor

        return {s: feature_tensor(data.splits[s]) for s in ("train", "validation", "test")}
    backbone = apply_device_options(timm_model_of(model), channels_last=settings.channels_last)
    pipeline = ImagePipeline.for_run(accelerator, settings, backbone)
    accelerator.print(pipeline.summary(accelerator.device))
    weights = weights_fingerprint(backbone)
    cache_dir = settings.cache_dir or default_cache_dir()
    keys = {split: {"model": settings.model, "weights": weights, "image_size": settings.image_size,
                    "dataset_fingerprint": data.fingerprints[split], "precision": settings.mixed_precision}
            for split in ("train", "validation", "test")}  # splits of equal content share a file
    paths = {split: feature_cache_path(cache_dir, settings.model, weights, settings.image_size,
                                       data.fingerprints[split], precision=settings.mixed_precision) for split in keys}
    if not all(os.path.isfile(path) for path in paths.values()):  # something to write: before any extraction
        check_cache_dir_writable(cache_dir)
    feats = {}
    for split in keys:
        feats[split] = extract_or_load_features(accelerator, backbone, data.splits[split], pipeline, paths[split],
                                                batch_size=max(batch_size, 64 * accelerator.num_processes),
                                                fingerprint=data.fingerprints[split], split_name=split,
                                                show_progress=settings.progress, description=f"features {split}",
                                                cache_key=keys[split])
    return feats
