"""The run's image input pipeline: how many workers decode, where batches are normalised, what is cached.

One :class:`ImagePipeline` per model builds every image loader of a run the same way:

- workers: ``--workers auto`` gives each training process its share of the CPUs of its machine
  (:func:`default_workers`); workers are persistent (started once per loader, kept across epochs);
- batches are collated as uint8 into page-locked memory on CUDA, copied to the device and normalised
  there (:class:`~spl_losses.training.image_data.DeviceNormalize`, bit-identical to normalising on
  the CPU), optionally in channels-last memory format;
- with ``--image-cache`` each split's resized images are decoded once into a memory-mapped file
  (:mod:`~spl_losses.training.image_cache`) that later epochs and runs read instead.
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import datasets
import torch
from torch.utils.data import DataLoader, Sampler

from ..data import dataset_fingerprint
from .image_cache import cached_images, default_image_cache_dir, image_cache_path
from .image_data import DeviceNormalize, loader_for_split, protocol_data_config, protocol_uint8_transform

__all__ = ["MAX_AUTO_WORKERS", "available_cpus", "local_process_count", "default_workers", "resolve_workers",
           "ImagePipeline"]

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
