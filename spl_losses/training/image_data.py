"""Image pipeline of the protocol (Cole et al.): resize to a square (no crop), normalisation from the model's
pretrained config, horizontal flips applied per batch from a (seed, epoch) mask.

Images are decoded here, not by ``datasets``, so that an image that cannot be decoded stops the run
with an error naming its row and file (the last checkpoint stays intact).

The same preprocessing in two forms:

- :func:`protocol_transform`: timm's eval transform, PIL image -> normalised float tensor on the CPU
  (what an exported model's config records; ``recipes/evaluate.py`` uses it).
- :func:`protocol_uint8_transform` then :class:`DeviceNormalize`: the same resize stopping at uint8
  (timm's prefetcher form), so batches travel to the device as uint8 (4x fewer bytes) and are
  normalised there. The training recipe uses this form; its result is bit-identical to the first.
"""
import io
from typing import Any, Dict, Optional, Sequence

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from timm.data import create_transform, resolve_model_data_config

__all__ = ["protocol_data_config", "protocol_transform", "protocol_uint8_transform", "decode_image",
           "loader_for_split", "flip_images", "DeviceNormalize"]


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
            :class:`~spl_losses.training.image_cache.CachedImages` (items ``{"pixel_values", "index"}``);
            then nothing is decoded and ``transform`` is not used.
        batch_sampler: Yields each batch's row lists instead of ``batch_size`` / ``sampler`` (e.g. a
            :class:`~spl_losses.training.sampling.ShardedBatchSampler`); an empty list gives an empty batch
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
