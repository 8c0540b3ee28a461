"""Image pipeline of the protocol (Cole et al.): resize to a square (no crop), normalisation from the model's
pretrained config, horizontal flips applied per batch from a (seed, epoch) mask.

Images are decoded here, not by ``datasets``, so that an image that cannot be decoded stops the run
with an error naming its row and file (the last checkpoint stays intact).
"""
import io
from typing import Any, Dict, Optional

import datasets
import torch
from torch.utils.data import DataLoader, Sampler
from timm.data import create_transform, resolve_model_data_config

__all__ = ["protocol_data_config", "protocol_transform", "loader_for_split", "flip_images"]


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
    """timm's eval transform that squashes the image to ``image_size`` × ``image_size`` (no crop).

    Args:
        model: The timm model (its pretrained config gives mean, std and interpolation).
        image_size: Side in pixels (448 in the protocol).
    """
    return create_transform(is_training=False, **protocol_data_config(model, image_size))


def decode_image(entry: Dict[str, Any], index: int, split: str = "train"):
    """Decode one undecoded ``datasets.Image`` entry (``{"bytes", "path"}``) to an RGB PIL image.

    Args:
        entry: The stored image: encoded bytes, or a file path.
        index: The row's ``index``, named in errors.
        split: The split's name, named in errors.

    Raises:
        ValueError: the image cannot be read or decoded (naming the split, row and file).
    """
    from PIL import Image

    data, path = entry.get("bytes"), entry.get("path")
    try:
        with Image.open(io.BytesIO(data) if data else path) as image:
            return image.convert("RGB")
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


def loader_for_split(
        split: datasets.Dataset,
        transform,
        batch_size: int,
        sampler: Optional[Sampler] = None,
        workers: int = 0,
        two_view_transform=None,
        split_name: Optional[str] = None,
) -> DataLoader:
    """A DataLoader yielding ``{"pixel_values": (B, 3, H, W), "index": (B,)}``; nothing is dropped.

    Args:
        split: A split with ``image`` and ``index`` columns.
        transform: PIL-to-tensor transform.
        batch_size: Batch size.
        sampler: Training order (None: the split's order).
        workers: Worker processes.
        two_view_transform: Optional ``spl_losses.transforms.TwoViewTransform``; batches then also
            hold ``view1`` and ``view2`` (contrastive views).
        split_name: The split's name, for errors (default: the dataset's own split name).
    """
    if "image" not in split.column_names:
        raise ValueError(f"expected an 'image' column for image training, got columns {split.column_names}")
    name = split_name or (str(split.split) if split.split is not None else "dataset")
    view = (split.select_columns(["image", "index"]).cast_column("image", datasets.Image(decode=False))
            .with_transform(_ApplyTransform(transform, two_view_transform, name)))
    return DataLoader(view, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
                      num_workers=workers, persistent_workers=False)


def flip_images(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the images whose ``mask`` entry is True horizontally (one batched op).

    Args:
        images: (B, C, H, W).
        mask: (B,) bool.
    """
    return torch.where(mask.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)
