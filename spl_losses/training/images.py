"""Images of a run: the protocol's transforms, decoding, loaders, the decoded-image cache, device options.

Speed options of the network that leave its parameters and results alone: channels-last memory format
and ``torch.compile`` (timm's ``--channels-last`` and ``--torchcompile``).

Compilation uses ``nn.Module.compile``, which compiles the module's call in place: its state dict
keeps its names (no ``_orig_mod.`` prefix), so checkpoints, the exported model and the hand-off
between phases are the same with and without it. Only calls of the module are compiled (training and
prediction); ``forward_features`` / ``forward_head`` called directly (pooled features) run eagerly.

Image pipeline of the protocol (Cole et al.): resize to a square (no crop), normalisation from the model's
pretrained config, horizontal flips applied per batch from a (seed, epoch) mask.

Images are decoded here, not by ``datasets``, so that an image that cannot be decoded stops the run
with an error naming its row and file (the last checkpoint stays intact).

The same preprocessing in two forms:

- :func:`protocol_transform`: timm's eval transform, PIL image -> normalised float tensor on the CPU
  (what an exported model's config records; ``recipes/evaluate.py`` uses it).
- :func:`protocol_uint8_transform` then :class:`DeviceNormalize`: the same resize stopping at uint8
  (timm's prefetcher form), so batches travel to the device as uint8 (4x fewer bytes) and are
  normalised there. The training recipe uses this form; its result is bit-identical to the first.

Resized images kept on disk: decode each image once, for every later epoch and run.

The protocol's preprocessing is deterministic up to the per-batch flip (decode, squash to a square,
normalise), so the uint8 output of the resize can be stored once and read back instead of decoding
again. One ``.npy`` file per split holds an (N, 3, H, W) uint8 array in ``index`` order, read through
a memory map (the operating system's page cache shares it between worker processes and runs). Its
name is a hash of the split's content fingerprint (``spl_losses.data.dataset_fingerprint``), the side
in pixels, the resize (squash, interpolation) and the Pillow version that resized it, so a changed
dataset, size or resize never reads a stale file.

Size on disk: N × 3 × H × W bytes (602 kB per image at 448 px: 3.4 GB for VOC 2012's 5,717 training
images, 50 GB for COCO 2014's 82,081). Batches read from it equal the decoding path's bit for bit.

Beside each file, ``<file>.json`` records its shape, size, modification time and the SHA-256 of
``CHECKED_ROWS`` evenly spaced rows (the first and last among them), written when the file is built. A file
without it, or whose size, time or sampled rows differ, is ignored with a warning and built again (checking
every byte of a 50 GB file at each start would cost more than the cache saves). A build writes beside its file
(``<file>.tmp-HOST-PID``) and removes the temporary on failure; temporaries of processes of this machine that
are no longer running (a killed build) are removed before a build.

The run's image input pipeline: how many workers decode, where batches are normalised, what is cached.

One :class:`ImagePipeline` per model builds every image loader of a run the same way:

- workers: ``--workers auto`` gives each training process its share of the CPUs of its machine
  (:func:`default_workers`); workers are persistent (started once per loader, kept across epochs);
- batches are collated as uint8 into page-locked memory on CUDA, copied to the device and normalised
  there (:class:`~spl_losses.training.images.DeviceNormalize`, bit-identical to normalising on
  the CPU), optionally in channels-last memory format;
- with ``--image-cache`` each split's resized images are decoded once into a memory-mapped file
  (:mod:`~spl_losses.training.images`) that later epochs and runs read instead.
"""
import glob
import hashlib
import io
import json
import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import datasets
import numpy as np
import torch
from timm.data import create_transform, resolve_model_data_config
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..data import dataset_fingerprint
from ..data.fingerprint import default_cache_root

__all__ = ["COMPILE_MODES", "apply_device_options", "contiguous_parameters", "protocol_data_config",
           "protocol_transform", "protocol_uint8_transform", "decode_image", "loader_for_split", "flip_images",
           "DeviceNormalize", "default_image_cache_dir", "image_cache_path", "build_image_cache", "CachedImages",
           "remove_stale_temporaries", "CHECKED_ROWS",
           "cached_images", "MAX_AUTO_WORKERS", "available_cpus", "local_process_count", "default_workers",
           "resolve_workers", "ImagePipeline"]


#: ``torch.compile`` modes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def apply_device_options(model: nn.Module, channels_last: bool = False, compile: bool = False,
                         compile_mode: str = "default") -> nn.Module:
    """Put ``model`` in channels-last memory format and/or compile its call, in place.

    Args:
        model: The network (a timm model, or a wrapper around one).
        channels_last: Convert 4-d parameters and buffers to ``torch.channels_last`` (feed it channels-last
            batches too: ``DeviceNormalize(..., channels_last=True)``).
        compile: Compile the module's call with ``torch.compile`` (on first use).
        compile_mode: The ``torch.compile`` mode (:data:`COMPILE_MODES`).

    Returns:
        ``model`` itself.
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(mode=None if compile_mode == "default" else compile_mode)
    return model


def contiguous_parameters(model: nn.Module) -> nn.Module:
    """Back to the default (contiguous) memory format, in place: safetensors files (``timm.models.save_for_hf``)
    take contiguous tensors only.

    Args:
        model: The network.

    Returns:
        ``model`` itself.
    """
    return model.to(memory_format=torch.contiguous_format)


def protocol_data_config(model: torch.nn.Module, image_size: int) -> Dict[str, Any]:
    """The protocol's preprocessing as a timm data config: squash to ``image_size`` × ``image_size``
    (``crop_pct`` 1.0, ``crop_mode`` "squash"), the model's interpolation, mean and std.

    Passed to ``timm.models.save_for_hf(..., data_config=...)`` so an exported model's ``pretrained_cfg``
    records the preprocessing it was trained with.

    Args:
        model: The timm model (its pretrained config gives mean, std and interpolation).
        image_size: Side in pixels (448 in the protocol).
    """
    cfg = resolve_model_data_config(model)
    return {"input_size": (3, image_size, image_size), "crop_pct": 1.0, "crop_mode": "squash",
            "interpolation": cfg.get("interpolation", "bilinear"), "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"])}


def protocol_transform(model: torch.nn.Module, image_size: int):
    """timm's eval transform that squashes the image to ``image_size`` × ``image_size`` (no crop), normalised.

    Args:
        model: The timm model (its pretrained config gives mean, std and interpolation).
        image_size: Side in pixels (448 in the protocol).
    """
    return create_transform(is_training=False, **protocol_data_config(model, image_size))


def protocol_uint8_transform(model: torch.nn.Module, image_size: int):
    """The resize of :func:`protocol_transform` without the normalisation: PIL image -> (3, H, W) uint8 tensor.

    timm's eval transform in its prefetcher form (``use_prefetcher=True``); normalise the batches on the
    device with :class:`DeviceNormalize`.

    Args:
        model: The timm model (its pretrained config gives the interpolation).
        image_size: Side in pixels.
    """
    return create_transform(is_training=False, use_prefetcher=True, **protocol_data_config(model, image_size))


def decode_image(entry: Dict[str, Any], index: int, split: str = "train"):
    """Decode one undecoded ``datasets.Image`` entry (``{"bytes", "path"}``) to an RGB PIL image.

    Args:
        entry: The stored image: encoded bytes, or a file path.
        index: The row's ``index``, named in errors.
        split: The split's name, named in errors.

    Raises:
        ValueError: the image cannot be read or decoded (naming the split, row and file).
    """
    from ..data.image_checks import open_rgb  # the one decode rule: EXIF orientation, 16-bit scaled, bombs refused

    data, path = entry.get("bytes"), entry.get("path")
    try:
        return open_rgb(io.BytesIO(data) if data else path)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for unreadable or truncated files
        where = f"file {path!r}" if path else "its embedded bytes"
        raise ValueError(f"{split} row {index}: the image ({where}) cannot be decoded: {err}") from None


class _ApplyTransform:
    def __init__(self, transform, two_view_transform=None, split: str = "train"):
        self.transform = transform
        self.two_view_transform = two_view_transform
        self.split = split

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        images = [decode_image(entry, int(index), self.split) for entry, index in zip(batch["image"], batch["index"])]
        out = {"pixel_values": [self.transform(img) for img in images], "index": batch["index"]}
        if self.two_view_transform is not None:
            views = [self.two_view_transform(img) for img in images]
            out["view1"] = [v[0] for v in views]
            out["view2"] = [v[1] for v in views]
        return out


def split_label(split: datasets.Dataset, split_name: Optional[str] = None) -> str:
    """The split's name for messages: ``split_name``, else the dataset's own split name, else ``"dataset"``.

    Args:
        split: The split.
        split_name: Its name as the caller knows it, or None.
    """
    return split_name or (str(split.split) if split.split is not None else "dataset")


def loader_for_split(
        split: datasets.Dataset,
        transform,
        batch_size: int,
        sampler: Optional[Sampler] = None,
        workers: int = 0,
        two_view_transform=None,
        split_name: Optional[str] = None,
        pin_memory: bool = False,
        images: Optional[Dataset] = None,
        batch_sampler: Optional[Sampler] = None,
        image_size: Optional[int] = None,
) -> DataLoader:
    """A DataLoader yielding ``{"pixel_values": (B, 3, H, W), "index": (B,)}``; nothing is dropped.

    Workers are persistent (started once, kept across epochs).

    Args:
        split: A split with ``image`` and ``index`` columns.
        transform: PIL-to-tensor transform (:func:`protocol_uint8_transform` or :func:`protocol_transform`).
        batch_size: Batch size.
        sampler: Training order (None: the split's order).
        workers: Worker processes.
        two_view_transform: Optional ``spl_losses.transforms.TwoViewTransform``; batches then also
            hold ``view1`` and ``view2`` (contrastive views).
        split_name: The split's name, for errors (default: the dataset's own split name).
        pin_memory: Collate into page-locked memory (faster, asynchronous copies to a CUDA device).
        images: Optional already-resized images of the split, e.g. a
            :class:`~spl_losses.training.images.CachedImages` (items ``{"pixel_values", "index"}``);
            then nothing is decoded and ``transform`` is not used.
        batch_sampler: Yields each batch's row lists instead of ``batch_size`` / ``sampler`` (e.g. a
            :class:`~spl_losses.training.parallel.ShardedBatchSampler`); an empty list gives an empty batch
            (``image_size`` then gives its shape).
        image_size: Side of the images, for empty batches.
    """
    if images is not None:
        if two_view_transform is not None:
            raise ValueError("contrastive views are drawn from the decoded image: pass images=None with "
                             "two_view_transform")
        if len(images) != len(split):
            raise ValueError(f"{split_label(split, split_name)}: the resized images hold {len(images)} rows, "
                             f"the split {len(split)}")
        view = images
    else:
        if "image" not in split.column_names:
            raise ValueError(f"expected an 'image' column for image training, got columns {split.column_names}")
        view = (split.select_columns(["image", "index"]).cast_column("image", datasets.Image(decode=False))
                .with_transform(_ApplyTransform(transform, two_view_transform, split_label(split, split_name))))
    if batch_sampler is not None:
        return DataLoader(view, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=pin_memory, collate_fn=_EmptyAwareCollate(image_size, two_view_transform))
    return DataLoader(view, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                      collate_fn=collate_image_rows)


def collate_image_rows(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``default_collate`` of image rows, stacking ``pixel_values`` in the memory order they were decoded in.

    A decoded image converted to a tensor (timm's and torchvision's PIL-to-tensor) is a (3, H, W) view of
    (H, W, 3) memory. Stacking such views into a (B, 3, H, W) contiguous batch reorders every byte; stacking
    their memory as it is and returning the (B, 3, H, W) channels-last view of it is a plain copy (about 4x
    cheaper in a loader worker). Values and shape are the same; :class:`DeviceNormalize` returns contiguous
    batches whichever layout it gets. Images held another way are stacked by ``default_collate``.

    Args:
        rows: The batch's rows (dicts with ``pixel_values`` and ``index``, optionally contrastive views).
    """
    images = [row["pixel_values"] for row in rows]
    first = images[0]
    if not (first.dim() == 3 and first.stride(0) == 1 and first.permute(1, 2, 0).is_contiguous()
            and all(img.shape == first.shape and img.stride() == first.stride() for img in images)):
        return default_collate(rows)
    batch = default_collate([{k: v for k, v in row.items() if k != "pixel_values"} for row in rows])
    batch["pixel_values"] = default_collate([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)
    return batch


class _EmptyAwareCollate:
    """:func:`collate_image_rows`, and a batch of zero rows for an empty list of rows."""

    def __init__(self, image_size: Optional[int], two_views: bool):
        self.image_size = image_size
        self.two_views = bool(two_views)

    def __call__(self, rows):
        if rows:
            return collate_image_rows(rows)
        if self.image_size is None:
            raise ValueError("an empty batch needs the loader's image_size")
        size = (0, 3, self.image_size, self.image_size)
        batch = {"pixel_values": torch.empty(size, dtype=torch.uint8), "index": torch.empty(0, dtype=torch.long)}
        if self.two_views:
            batch.update(view1=torch.empty(size), view2=torch.empty(size))
        return batch


def flip_images(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the images whose ``mask`` entry is True horizontally (one batched op).

    Args:
        images: (B, C, H, W), any dtype (uint8 batches are flipped before normalisation: the same result).
        mask: (B,) bool.
    """
    return torch.where(mask.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


class DeviceNormalize:
    """uint8 image batches -> normalised float32 batches, on the batches' device.

    Computes ``((x / 255) - mean) / std`` elementwise in float32 in the order of torchvision's ``ToTensor``
    then ``Normalize`` (what :func:`protocol_transform` does on the CPU), each operation with a tensor
    operand, so the result is bit-identical to the CPU form on any device. (timm's ``PrefetchLoader``
    computes ``(x - 255 mean) / (255 std)`` instead, which differs from it in the last bit of some values;
    and CUDA divides by a Python scalar as a multiplication by its reciprocal.)

    Args:
        mean: Per-channel mean (the model's data config).
        std: Per-channel standard deviation.
        channels_last: Return the batch in channels-last memory format (same values).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {tuple(mean)!r} and {tuple(std)!r}")
        if any(s == 0 for s in std):
            raise ValueError(f"std must be non-zero, got {tuple(std)!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.channels_last = bool(channels_last)
        self._constants: Dict[torch.device, tuple] = {}

    @classmethod
    def from_data_config(cls, config: Dict[str, Any], channels_last: bool = False) -> "DeviceNormalize":
        """From a timm data config (``mean``, ``std``), e.g. :func:`protocol_data_config`.

        Args:
            config: The data config.
            channels_last: Return channels-last batches.
        """
        return cls(config["mean"], config["std"], channels_last=channels_last)

    def _on(self, device: torch.device) -> tuple:
        if device not in self._constants:
            shape = (1, len(self.mean), 1, 1)
            self._constants[device] = (torch.full((), 255.0, device=device),
                                       torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape),
                                       torch.tensor(self.std, dtype=torch.float32, device=device).view(shape))
        return self._constants[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a batch.

        Args:
            images: (B, C, H, W) uint8.

        Returns:
            (B, C, H, W) float32 on the same device, contiguous (channels-last with ``channels_last``) whatever
            the layout of ``images``.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(self.mean):
            raise TypeError(f"expected a (B, {len(self.mean)}, H, W) uint8 batch, got {tuple(images.shape)} "
                            f"{images.dtype}")
        scale, mean, std = self._on(images.device)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(torch.float32, memory_format=layout).div_(scale).sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"DeviceNormalize(mean={self.mean}, std={self.std}, channels_last={self.channels_last})"


def default_image_cache_dir() -> str:
    """``$SPL_LOSSES_CACHE/images`` (default ``~/.cache/spl_losses/images``)."""
    return os.path.join(default_cache_root(), "images")


def image_cache_path(cache_dir: str, dataset_fingerprint: str, image_size: int, interpolation: str) -> str:
    """The cache file of one split resized one way.

    Args:
        cache_dir: Cache folder.
        dataset_fingerprint: The split's content fingerprint (``spl_losses.data.dataset_fingerprint``).
        image_size: Side in pixels (images are squashed to a square).
        interpolation: The resize's interpolation (the model's data config, e.g. ``"bicubic"``).
    """
    import PIL

    key = f"{dataset_fingerprint}|{image_size}|squash|{interpolation}|Pillow {PIL.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"images-{image_size}px-{interpolation}-{digest}.npy")


def _open(path: str) -> np.ndarray:
    # copy-on-write mapping: writable for torch.from_numpy without copying (nothing is ever written)
    return np.load(path, mmap_mode="c")


#: Rows of an image cache file whose bytes are hashed in its manifest (and checked at every start).
CHECKED_ROWS = 64
_MANIFEST_FORMAT = "spl_losses.image_cache/1"


def _manifest_path(path: str) -> str:
    return f"{path}.json"


def _sampled_rows(array: np.ndarray) -> List[int]:
    n = len(array)
    return sorted({int(round(i * (n - 1) / max(CHECKED_ROWS - 1, 1))) for i in range(min(CHECKED_ROWS, n))})


def _rows_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    for row in _sampled_rows(array):
        digest.update(np.ascontiguousarray(array[row]).tobytes())
    return digest.hexdigest()


def _manifest(path: str, array: np.ndarray) -> Dict[str, Any]:
    stat = os.stat(path)
    return {"format": _MANIFEST_FORMAT, "shape": list(array.shape), "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "sampled_rows_sha256": _rows_digest(array)}


def _fits(path: str, num_rows: int, image_size: int) -> bool:
    """Whether ``path`` is a complete image cache of this shape whose manifest matches it (else, when the file
    exists, a warning says why it is built again)."""
    if not os.path.isfile(path):
        return False

    def stale(why: str) -> bool:
        warnings.warn(f"ignoring image cache {path}: {why}; it is built again", stacklevel=3)
        return False

    try:
        array = _open(path)
    except (OSError, ValueError) as err:
        return stale(f"unreadable ({type(err).__name__}: {err})")
    if array.dtype != np.uint8 or array.shape != (num_rows, 3, image_size, image_size):
        return stale(f"a {array.dtype} array of shape {array.shape}, not ({num_rows}, 3, {image_size}, {image_size})")
    try:
        with open(_manifest_path(path), encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError) as err:
        return stale(f"its manifest {_manifest_path(path)} is missing or unreadable ({type(err).__name__})")
    stat = os.stat(path)
    if not isinstance(recorded, dict) or recorded.get("format") != _MANIFEST_FORMAT \
            or recorded.get("shape") != list(array.shape) or recorded.get("bytes") != stat.st_size:
        return stale("its manifest does not describe it")
    if recorded.get("mtime_ns") != stat.st_mtime_ns:
        return stale("it was modified after it was built")
    if recorded.get("sampled_rows_sha256") != _rows_digest(array):
        return stale("its pixels changed since it was built (checksum of sampled rows)")
    return True


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(cache_dir: str) -> List[str]:
    """Remove the temporaries (``*.tmp-HOST-PID``) that builds of this machine left in ``cache_dir`` when their
    process was killed; those of running processes and of other machines are left alone.

    Args:
        cache_dir: An image cache folder.

    Returns:
        The files removed.
    """
    host, removed = socket.gethostname(), []
    for tmp in glob.glob(os.path.join(glob.escape(cache_dir), "images-*.npy.tmp-*")):
        owner = tmp.rsplit(".tmp-", 1)[1]
        tmp_host, _, pid = owner.rpartition("-")
        if tmp_host != host or not pid.isdigit() or int(pid) == os.getpid() or _pid_running(int(pid)):
            continue
        try:
            os.remove(tmp)
            removed.append(tmp)
        except OSError:
            pass
    if removed:
        warnings.warn(f"removed {len(removed)} temporary image cache file(s) of killed builds: {removed}")
    return removed


def build_image_cache(split: datasets.Dataset, transform: Callable, path: str, workers: int = 0,
                      batch_size: int = 32, show_progress: bool = False, split_name: Optional[str] = None) -> str:
    """Decode and resize every image of ``split`` once into the (N, 3, H, W) uint8 file ``path``.

    The file appears complete or not at all (written beside it, then renamed).

    Args:
        split: A split with ``image`` and ``index`` columns (``index`` equal to the row position).
        transform: PIL image -> (3, H, W) uint8 tensor (``protocol_uint8_transform``).
        path: The cache file (see :func:`image_cache_path`).
        workers: DataLoader workers that decode.
        batch_size: Images per worker batch.
        show_progress: Show a progress bar.
        split_name: The split's name, for messages (default: the dataset's own split name).

    Returns:
        ``path``.

    Raises:
        ValueError: an image cannot be decoded (naming its split, row and file); nothing is left behind.
    """
    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"  # unique on a disk shared by machines
    name = split_label(split, split_name)
    array, start = None, 0
    try:
        loader = loader_for_split(split, transform, batch_size, workers=workers, split_name=name)
        for batch in tqdm(loader, desc=f"resizing {name} images", disable=not show_progress,
                          leave=False):
            images, index = batch["pixel_values"], batch["index"]
            if images.dtype != torch.uint8:
                raise TypeError(f"the image cache stores uint8 images; the transform gave {images.dtype}")
            if not torch.equal(index, torch.arange(start, start + len(index))):
                raise ValueError(f"{name}: the image cache needs the 'index' column to equal the row "
                                 f"position; rows {start}..{start + len(index) - 1} have index {index.tolist()[:5]}...")
            if array is None:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                  shape=(len(split), *images.shape[1:]))
            array[start:start + len(index)] = images.numpy()
            start += len(index)
        if array is None:
            raise ValueError(f"{name}: no images to cache")
        array.flush()
        del array
        if os.path.exists(_manifest_path(path)):
            os.remove(_manifest_path(path))  # an old file's manifest never describes the new one
        os.replace(tmp, path)
        manifest_tmp = f"{_manifest_path(path)}.tmp-{socket.gethostname()}-{os.getpid()}"
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(_manifest(path, _open(path)), f, indent=2)
        os.replace(manifest_tmp, _manifest_path(path))
    finally:
        for leftover in (tmp, f"{_manifest_path(path)}.tmp-{socket.gethostname()}-{os.getpid()}"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


class CachedImages(Dataset):
    """The rows of an image cache file as ``{"pixel_values": (3, H, W) uint8, "index": i}`` items.

    The file is memory-mapped on first access in each process (worker processes map it themselves).

    Args:
        path: A file written by :func:`build_image_cache`.
    """

    def __init__(self, path: str):
        self.path = path
        self.shape = tuple(_open(path).shape)
        self._array: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if self._array is None:
            self._array = _open(self.path)
        return {"pixel_values": torch.from_numpy(self._array[i]), "index": int(i)}

    def __getitems__(self, indices: List[int]) -> List[Dict[str, Any]]:
        return [self[i] for i in indices]

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_array": None}


def cached_images(split: datasets.Dataset, transform: Callable, path: str, image_size: int, accelerator=None,
                  workers: int = 0, show_progress: bool = False, split_name: Optional[str] = None) -> CachedImages:
    """The split's resized images from ``path``, built first when missing (or of another shape).

    With several processes, the first process of each machine builds the file while the others wait
    (``accelerator.local_main_process_first``); a rename makes concurrent builds on a shared disk safe.

    Args:
        split: The split (``image`` and ``index`` columns).
        transform: PIL image -> (3, ``image_size``, ``image_size``) uint8 tensor.
        path: The cache file (see :func:`image_cache_path`).
        image_size: Side in pixels (checked against the file).
        accelerator: The ``accelerate.Accelerator`` of a multi-process run, or None.
        workers: DataLoader workers that decode while building.
        show_progress: Show a progress bar while building.
        split_name: The split's name, for messages.
    """
    def ensure() -> None:
        if not _fits(path, len(split), image_size):
            build_image_cache(split, transform, path, workers=workers, show_progress=show_progress,
                              split_name=split_name)

    if accelerator is None:
        ensure()
    else:
        with accelerator.local_main_process_first():
            ensure()
    return CachedImages(path)


#: The most workers ``auto`` gives one process (more rarely decode faster and each holds prefetched batches).
MAX_AUTO_WORKERS = 16
#: Launchers' variables holding the number of processes on this machine, in the order they are trusted.
LOCAL_PROCESS_VARIABLES = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                           "SLURM_NTASKS_PER_NODE")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's core count)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        count = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    return max(1, count or 1)


def local_process_count() -> int:
    """Training processes on this machine: what torchrun / accelerate launch (``LOCAL_WORLD_SIZE``), Open MPI,
    MPICH or SLURM say, else 1."""
    for name in LOCAL_PROCESS_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def default_workers(cpus: int, local_processes: int, on_accelerator: bool, cap: int = MAX_AUTO_WORKERS) -> int:
    """The worker count of ``--workers auto``.

    On an accelerator each training process gets its share of the machine's CPUs, ``cpus //
    local_processes`` (at least 1, at most ``cap``): the main process mostly waits on the device, so its
    core decodes too. On the CPU the model's own computation already uses every core: 0 (decode in
    the training process, no worker processes competing with it).

    Args:
        cpus: CPUs available on the machine (:func:`available_cpus`).
        local_processes: Training processes on the machine (:func:`local_process_count`).
        on_accelerator: Whether the model runs on an accelerator (CUDA, MPS, XPU, ...).
        cap: The most workers per process.
    """
    if cpus < 1 or local_processes < 1:
        raise ValueError(f"expected cpus >= 1 and local_processes >= 1, got {cpus} and {local_processes}")
    if not on_accelerator:
        return 0
    return min(max(cpus // local_processes, 1), cap)


def resolve_workers(workers: Union[int, str], device: Union[str, torch.device]) -> int:
    """The worker count of ``--workers``: an integer as given, or ``"auto"`` (:func:`default_workers`).

    Args:
        workers: ``"auto"`` or an integer >= 0.
        device: The device the model runs on.
    """
    if workers == "auto":
        return default_workers(available_cpus(), local_process_count(), torch.device(device).type != "cpu")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers: expected 'auto' or an integer >= 0, got {workers!r}")
    return workers


@dataclass
class ImagePipeline:
    """Builds a run's image loaders: uint8 batches, normalised on the device by :attr:`normalize`.

    Args:
        transform: PIL image -> (3, H, W) uint8 tensor (``protocol_uint8_transform``).
        normalize: uint8 batch -> normalised float32 batch, on the batch's device.
        image_size: Side in pixels.
        interpolation: The resize's interpolation (part of the image cache's key).
        workers: DataLoader worker processes per loader.
        pin_memory: Collate into page-locked memory (CUDA).
        image_cache_dir: Keep resized images in this folder (None: decode every epoch).
        accelerator: The ``accelerate.Accelerator`` (one process per machine builds the image cache), or None.
        show_progress: Progress bar while building the image cache.
    """

    transform: Callable
    normalize: DeviceNormalize
    image_size: int
    interpolation: str
    workers: int = 0
    pin_memory: bool = False
    image_cache_dir: Optional[str] = None
    accelerator: Any = None
    show_progress: bool = False

    @classmethod
    def for_model(cls, model: torch.nn.Module, image_size: int, device: Union[str, torch.device] = "cpu",
                  workers: Union[int, str] = "auto", image_cache_dir: Optional[str] = None,
                  channels_last: bool = False, accelerator=None, show_progress: bool = False) -> "ImagePipeline":
        """The protocol's pipeline for a timm model (its mean, std and interpolation).

        Args:
            model: The timm model.
            image_size: Side in pixels.
            device: Where the model runs (the worker count and page-locked memory depend on it).
            workers: ``"auto"`` or a worker count.
            image_cache_dir: Keep resized images in this folder (None: no image cache).
            channels_last: Normalised batches in channels-last memory format.
            accelerator: The ``accelerate.Accelerator`` of a multi-process run, or None.
            show_progress: Progress bar while building the image cache.
        """
        config = protocol_data_config(model, image_size)
        device = torch.device(device)
        return cls(transform=protocol_uint8_transform(model, image_size),
                   normalize=DeviceNormalize.from_data_config(config, channels_last=channels_last),
                   image_size=image_size, interpolation=config["interpolation"],
                   workers=resolve_workers(workers, device), pin_memory=device.type == "cuda",
                   image_cache_dir=image_cache_dir, accelerator=accelerator, show_progress=show_progress)

    @classmethod
    def for_run(cls, accelerator, settings, model: torch.nn.Module) -> "ImagePipeline":
        """The pipeline of a recipe run (``--image-size``, ``--workers``, ``--image-cache``, ``--channels-last``).

        Args:
            accelerator: The ``accelerate.Accelerator``.
            settings: The run's settings.
            model: The timm model.
        """
        cache_dir = (settings.image_cache_dir or default_image_cache_dir()) if settings.image_cache else None
        return cls.for_model(model, settings.image_size, device=accelerator.device, workers=settings.workers,
                             image_cache_dir=cache_dir, channels_last=settings.channels_last, accelerator=accelerator,
                             show_progress=settings.progress and accelerator.is_local_main_process)

    def summary(self, device: Union[str, torch.device, None] = None) -> str:
        """One line for the log: workers, where batches are normalised, the image cache.

        Args:
            device: Where batches are normalised (the accelerator's device).
        """
        where = f"on {device}" if device is not None else "on the device"
        return (f"images: {self.workers} loader worker(s) per process, uint8 batches normalised {where}"
                f"{' from page-locked memory' if self.pin_memory else ''}"
                f"{', channels-last' if self.normalize.channels_last else ''}; image cache "
                f"{self.image_cache_dir if self.image_cache_dir else 'off (--image-cache to decode once)'}")

    def loader(self, split: datasets.Dataset, batch_size: int, fingerprint: Optional[str] = None,
               sampler: Optional[Sampler] = None, two_view_transform=None,
               split_name: Optional[str] = None, batch_sampler: Optional[Sampler] = None) -> DataLoader:
        """A loader of ``split`` yielding ``{"pixel_values": (B, 3, H, W) uint8, "index": (B,)}``.

        With an image cache the split's resized images are read from it (built first if missing), except
        for a loader with contrastive views (those are drawn from the decoded image).

        Args:
            split: A split with ``image`` and ``index`` columns.
            batch_size: Batch size.
            fingerprint: The split's ``dataset_fingerprint`` (computed when missing and needed).
            sampler: Training order (None: the split's order).
            two_view_transform: Optional contrastive views (``view1``, ``view2``; normalised floats).
            split_name: The split's name, for errors (default: the dataset's own split name).
            batch_sampler: Yields each batch's rows instead of ``batch_size`` / ``sampler`` (this process's shares
                of the global batches; a share may be empty).
        """
        images = None
        if self.image_cache_dir is not None and two_view_transform is None:
            path = image_cache_path(self.image_cache_dir, fingerprint or dataset_fingerprint(split), self.image_size,
                                    self.interpolation)
            images = cached_images(split, self.transform, path, self.image_size, accelerator=self.accelerator,
                                   workers=self.workers, show_progress=self.show_progress, split_name=split_name)
        return loader_for_split(split, self.transform, batch_size, sampler=sampler, workers=self.workers,
                                two_view_transform=two_view_transform, split_name=split_name,
                                pin_memory=self.pin_memory, images=images, batch_sampler=batch_sampler,
                                image_size=self.image_size)
