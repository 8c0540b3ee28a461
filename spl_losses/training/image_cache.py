"""Resized images kept on disk: decode each image once, for every later epoch and run.

The protocol's preprocessing is deterministic up to the per-batch flip (decode, squash to a square,
normalise), so the uint8 output of the resize can be stored once and read back instead of decoding
again. One ``.npy`` file per split holds an (N, 3, H, W) uint8 array in ``index`` order, read through
a memory map (the operating system's page cache shares it between worker processes and runs). Its
name is a hash of the split's content fingerprint (``spl_losses.data.dataset_fingerprint``), the side
in pixels, the resize (squash, interpolation) and the Pillow version that resized it, so a changed
dataset, size or resize never reads a stale file.

Size on disk: N × 3 × H × W bytes (602 kB per image at 448 px: 3.4 GB for VOC 2012's 5,717 training
images, 50 GB for COCO 2014's 82,081). Batches read from it equal the decoding path's bit for bit.
"""
import hashlib
import os
import socket
from typing import Any, Callable, Dict, List, Optional

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.fingerprint import default_cache_root
from .image_data import loader_for_split, split_label

__all__ = ["default_image_cache_dir", "image_cache_path", "build_image_cache", "CachedImages", "cached_images"]


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


def _fits(path: str, num_rows: int, image_size: int) -> bool:
    try:
        array = _open(path)
    except (OSError, ValueError):
        return False
    return array.dtype == np.uint8 and array.shape == (num_rows, 3, image_size, image_size)


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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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
