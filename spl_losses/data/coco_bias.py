"""Per-entry weights of COCO's biased single positives (Arroyo, Perona & Cole, ICLR 2023 Tiny Papers).

"Understanding Label Bias in Single Positive Multi-Label Learning" draws each image's observed
positive with probability proportional to a per-class weight instead of uniformly:

- ``size``: the class's share of the image's annotated area, ``sum of its instances' area / sum of
  all instances' area`` (each instance's ``area`` field);
- ``loc``: how central its instances are, ``sum over its instances of 1 / d``, ``d`` the distance from
  the box centre ``(x + w/2, y + h/2)`` to the image centre ``(width/2, height/2)``, with ``d = 0``
  replaced by 0.0005.

The weights are computed with the reference code's floating-point operations, in annotation order
(each instance's area divided by the image's total, then summed per class; ``loc`` also multiplies
each image's weights by the reference's normalising constant ``1 / sum(1 / d')``, where ``d'`` is
measured to the point ``(width, height)`` and ``d' = 0`` counts as 1), so ``sampling_rng="reference"``
reproduces its draws exactly; the constant does not change any probability.
"""
import math
from typing import List

import numpy as np

__all__ = ["GEOMETRY_RULES", "annotation_weights", "entry_weights"]

#: The ``observed_sampling`` rules that need the annotations' geometry.
GEOMETRY_RULES = ("size", "loc")


def _check_geometry(areas: np.ndarray, boxes: np.ndarray, sizes: np.ndarray, annotation_file: str) -> None:
    bad_area = ~np.isfinite(areas) | (areas < 0)
    if bad_area.any():
        i = int(np.flatnonzero(bad_area)[0])
        raise ValueError(f"{annotation_file}: annotations[{i}] has area {float(areas[i])}; areas must be finite "
                         "and >= 0")
    bad_box = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if bad_box.any():
        i = int(np.flatnonzero(bad_box)[0])
        raise ValueError(f"{annotation_file}: annotations[{i}] has bbox {boxes[i].tolist()}; a bbox is "
                         "[x, y, width, height], finite, width and height >= 0")
    bad_size = ~np.isfinite(sizes).all(axis=1) | (sizes <= 0).any(axis=1)
    if bad_size.any():
        i = int(np.flatnonzero(bad_size)[0])
        raise ValueError(f"{annotation_file}: an annotated image has width, height {sizes[i].tolist()}; both must "
                         "be finite and > 0")


def annotation_weights(rule: str, ann_rows: np.ndarray, areas: np.ndarray, boxes: np.ndarray,
                       row_sizes: np.ndarray, num_rows: int, annotation_file: str = "<annotations>") -> np.ndarray:
    """Each annotation's contribution to its class's weight on its image, in annotation order.

    Args:
        rule: ``"size"`` or ``"loc"``.
        ann_rows: (A,) the row (image) of each annotation.
        areas: (A,) the annotations' ``area``.
        boxes: (A, 4) the annotations' ``bbox`` ``[x, y, width, height]``.
        row_sizes: (num_rows, 2) each row's image ``width, height``.
        num_rows: Rows (annotated images).
        annotation_file: Named in error messages.

    Returns:
        (A,) float64 weights; a class's weight on an image is the sum of its annotations' weights.

    Raises:
        ValueError: an unknown rule, or a negative or non-finite area, box or image size.
    """
    if rule not in GEOMETRY_RULES:
        raise ValueError(f"rule must be one of {GEOMETRY_RULES}, got {rule!r}")
    sizes = row_sizes[ann_rows]
    _check_geometry(areas, boxes, sizes, annotation_file)
    if rule == "size":
        total = np.zeros(num_rows, dtype=np.float64)
        np.add.at(total, ann_rows, areas)  # in annotation order, as the reference sums
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total[ann_rows] > 0, areas / total[ann_rows], 0.0)
    centre_x = boxes[:, 0] + boxes[:, 2] / 2
    centre_y = boxes[:, 1] + boxes[:, 3] / 2
    # Python's float ** and math.sqrt, one annotation at a time: numpy's x ** 2 is x * x, which
    # rounds differently from the C pow the reference calls in about one case in a thousand
    to_centre = _distances(centre_x - sizes[:, 0] * 0.5, centre_y - sizes[:, 1] * 0.5, zero=0.0005)
    to_corner = _distances(centre_x - sizes[:, 0], centre_y - sizes[:, 1], zero=1.0)
    inverse_sum = np.zeros(num_rows, dtype=np.float64)
    np.add.at(inverse_sum, ann_rows, 1 / to_corner)
    return (1 / inverse_sum[ann_rows]) / to_centre


def _distances(dx: np.ndarray, dy: np.ndarray, zero: float) -> np.ndarray:
    out = np.fromiter((math.sqrt(x ** 2 + y ** 2) for x, y in zip(dx.tolist(), dy.tolist())),
                      dtype=np.float64, count=dx.size)
    out[out == 0] = zero
    return out


def entry_weights(ann_rows: np.ndarray, ann_columns: np.ndarray, weights: np.ndarray, num_rows: int,
                  num_classes: int) -> List[List[float]]:
    """Sum annotation weights per (row, class), in annotation order, as per-row lists in ascending class order.

    The lists align with the per-row positive classes of the label matrix (``index_lists``), since a
    class is positive on an image exactly when it has an annotation there.

    Args:
        ann_rows: (A,) each annotation's row.
        ann_columns: (A,) each annotation's class index.
        weights: (A,) each annotation's weight.
        num_rows: N.
        num_classes: C.
    """
    pairs, inverse = np.unique(ann_rows * num_classes + ann_columns, return_inverse=True)
    sums = np.zeros(pairs.size, dtype=np.float64)
    np.add.at(sums, inverse.reshape(-1), weights)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(pairs // num_classes, minlength=num_rows))]).tolist()
    flat = sums.tolist()
    return [flat[bounds[i]:bounds[i + 1]] for i in range(num_rows)]
