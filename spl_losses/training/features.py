"""Pooled backbone features, extracted once and cached on disk.

The cache file name is a hash of the model name, a fingerprint of its weights (so pretrained,
fine-tuned and randomly initialised backbones never share a cache), the image size, the
dataset split's fingerprint and the mixed-precision mode of the extraction. Files are safetensors holding one ``features`` tensor.
"""
import hashlib
import os
import socket
from typing import Dict, Optional

import datasets
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.fingerprint import default_cache_root
from .evaluation import predict_loader
from .images import ImagePipeline

__all__ = ["default_cache_dir", "weights_fingerprint", "feature_cache_path", "pooled_features",
           "extract_or_load_features", "run_features"]


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


def _read_cache(path: str, num_rows: int) -> Optional[torch.Tensor]:
    if not os.path.isfile(path):
        return None
    features = load_file(path)["features"]
    return features if features.shape[0] == num_rows else None


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

    Returns:
        A float32 CPU tensor.
    """
    features = _read_cache(cache_path, len(split))
    found = torch.tensor([int(features is not None)], device=accelerator.device)
    if bool(accelerator.gather(found).all()):
        return features
    model = model.to(accelerator.device).eval()
    loader = accelerator.prepare_data_loader(pipeline.loader(split, batch_size, fingerprint=fingerprint,
                                                             split_name=split_name))
    features = predict_loader(lambda x: pooled_features(model, x), loader, accelerator, len(split),
                              show_progress=show_progress, description=description, preprocess=pipeline.normalize)
    if accelerator.is_local_main_process:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        tmp = f"{cache_path}.tmp-{socket.gethostname()}-{os.getpid()}"  # unique on a shared disk
        save_file({"features": features.contiguous()}, tmp)
        os.replace(tmp, cache_path)
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
    feats = {}
    for split in ("train", "validation", "test"):
        path = feature_cache_path(settings.cache_dir or default_cache_dir(), settings.model, weights,
                                  settings.image_size, data.fingerprints[split], precision=settings.mixed_precision)
        feats[split] = extract_or_load_features(accelerator, backbone, data.splits[split], pipeline, path,
                                                batch_size=max(batch_size, 64 * accelerator.num_processes),
                                                fingerprint=data.fingerprints[split], split_name=split,
                                                show_progress=settings.progress, description=f"features {split}")
    return feats
