"""Image views of a teacher: the global view plus a g×g grid of crops, scored per view, then fused.

VLPL (Xing et al., 2024) scores the global view only. AEVLP's "DAMP" pseudo-labels (Tran et al., 2025)
add the g×g grid of crops, so a small object that a whole-image embedding misses can still be found
in a crop. Views are in the order [global, crop (0, 0), crop (0, 1), ..., crop (g-1, g-1)] (rows of
the grid, top to bottom; left to right within a row).
"""
import io
import math
from typing import Callable, List, Tuple

import datasets
import torch

__all__ = ["FUSIONS", "grid_boxes", "image_views", "num_views", "score_split_views", "fuse_views", "check_views_options"]

#: How local (crop) scores are combined with the global ones, see :func:`fuse_views`.
FUSIONS = ("weighted", "max")


def num_views(grid: int) -> int:
    """1 + grid², the number of views of an image.

    Args:
        grid: g (0 for the global view only).
    """
    return 1 + grid * grid


def grid_boxes(width: int, height: int, grid: int) -> List[Tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes of a g×g grid over a width×height image, row by row.

    Cell edges are rounded from ``i·width/g`` so the cells tile the image exactly.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        grid: g >= 1.
    """
    xs = [round(i * width / grid) for i in range(grid + 1)]
    ys = [round(j * height / grid) for j in range(grid + 1)]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(grid) for i in range(grid)]


def image_views(image, grid: int) -> list:
    """The views of one PIL image: itself, then its g×g grid crops.

    Args:
        image: A PIL image.
        grid: g (0 for the global view only).
    """
    if grid == 0:
        return [image]
    return [image] + [image.crop(box) for box in grid_boxes(image.width, image.height, grid)]


@torch.no_grad()
def score_split_views(
        split: datasets.Dataset,
        encode: Callable[[torch.Tensor], torch.Tensor],
        transform: Callable,
        grid: int,
        batch_size: int = 32,
        device: torch.device = torch.device("cpu"),
) -> torch.Tensor:
    """Run ``encode`` on every view of every image of ``split``.

    Args:
        split: A split with an ``image`` column (and ``index``, the row's position; rows are placed by it).
        encode: Maps a (M, 3, H, W) batch to (M, C) per-view outputs (similarities or logits).
        transform: PIL-to-tensor preprocessing of one view.
        grid: g (0 for the global view only).
        batch_size: Images per forward pass (each brings 1 + g² views).
        device: Where ``encode`` runs.

    Returns:
        A float32 (N, 1 + g², C) CPU tensor.
    """
    if "image" not in split.column_names:
        raise ValueError(f"this teacher scores images: expected an 'image' column, got columns {split.column_names}")
    from ..data.image_checks import open_rgb  # the one decode rule of training and teachers alike

    columns = ["image"] + (["index"] if "index" in split.column_names else [])
    views = num_views(grid)
    out = None
    stored = split.select_columns(columns).cast_column("image", datasets.Image(decode=False))
    for start, batch in zip(range(0, len(split), batch_size), stored.iter(batch_size)):
        images = [open_rgb(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"])
                  for entry in batch["image"]]
        pixels = torch.stack([transform(view.convert("RGB")) for image in images for view in image_views(image, grid)])
        scores = encode(pixels.to(device)).float().cpu()
        scores = scores.reshape(len(images), views, -1)
        if out is None:
            out = torch.empty(len(split), views, scores.shape[-1])
        rows = torch.as_tensor(batch["index"]) if "index" in batch else torch.arange(start, start + len(scores))
        out[rows] = scores
    if out is None:
        raise ValueError("the split is empty")
    return out


def fuse_views(probs: torch.Tensor, fusion: str = "weighted", gate: float = 0.0) -> torch.Tensor:
    """Fuse per-view class scores into one (N, C) score.

    With ``local = max over the crops`` (per class):

    - ``"weighted"``: ``(1 - gate)·global + gate·local`` (gate η in [0, 1]: 0 keeps the global view only);
    - ``"max"``: ``max(global, local)`` where a crop's score counts only if it reaches ``gate``.

    The AEVLP paper fuses local and global scores with a gate η; which of the two forms it uses could not
    be checked against its equations, so both are offered.

    Args:
        probs: (N, V, C) per-view scores in [0, 1], view 0 the global view.
        fusion: ``"weighted"`` or ``"max"``.
        gate: η.

    Returns:
        (N, C) scores in [0, 1].
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if not (isinstance(gate, (int, float)) and math.isfinite(gate) and 0.0 <= gate <= 1.0):
        raise ValueError(f"gate must be a number in [0, 1], got {gate!r}")
    global_view = probs[:, 0]
    if probs.shape[1] == 1:
        return global_view
    local = probs[:, 1:]
    if fusion == "weighted":
        return (1.0 - gate) * global_view + gate * local.amax(dim=1)
    return torch.maximum(global_view, torch.where(local >= gate, local, torch.zeros_like(local)).amax(dim=1))


def check_grid(grid) -> int:
    """Return ``grid`` after checking it is a non-negative int.

    Args:
        grid: g.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 0:
        raise ValueError(f"grid must be a non-negative int (0: global view only), got {grid!r}")
    return grid


def check_views_options(grid, fusion: str, gate: float) -> Tuple[int, str, float]:
    """Check the view options shared by the image teachers; returns them.

    Args:
        grid: g.
        fusion: One of :data:`FUSIONS`.
        gate: η in [0, 1].
    """
    fuse_views(torch.zeros(1, 1, 1), fusion, gate)  # raises on bad options
    return check_grid(grid), fusion, float(gate)

