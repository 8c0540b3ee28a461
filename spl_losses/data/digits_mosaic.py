"""``digits_mosaic``: a multi-label demo built from data shipped inside scikit-learn (no download).

The 1,797 real handwritten 8×8 digits of ``sklearn.datasets.load_digits`` are split into three
disjoint source pools (60% / 20% / 20%) for train, validation and test. Each mosaic is a 2×2 grid
of four digits drawn uniformly (with replacement) from its split's pool, upscaled to
``image_size`` pixels (nearest neighbour) and stored as an encoded RGB PNG (grey, three equal channels).
Its labels are the distinct digits shown: 1 to 4 of the 10 classes ``"0"`` … ``"9"``, on average
10·(1 − 0.9⁴) = 3.439 (the ``expected_num_pos`` of EPR/ROLE). Everything is a function of the seeds:
``split_seed`` fixes the pools and the mosaics (the data), ``seed`` the observed single positives,
as for the benchmarks. The default 4,000 / 1,000 / 1,000 mosaics of 32×32 build in a few seconds.
"""
import io
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from .builder import SPMLBuilder, SPMLConfig
from .raw_files import RawSplit
from .registry import register_dataset
from .sampling import hash_keys

__all__ = ["DigitsMosaicConfig", "DigitsMosaic", "make_mosaics", "CLASS_NAMES"]

CLASS_NAMES = [str(d) for d in range(10)]
_POOL_SALT = 0x504F4F4C  # "POOL"
_MOSAIC_SALTS = {"train": 11, "validation": 12, "test": 13}
_POOL_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class DigitsMosaicConfig(SPMLConfig):
    """Configuration of ``digits_mosaic`` (the :class:`SPMLConfig` fields plus the sizes).

    Args:
        num_train: Training mosaics.
        num_validation: Validation mosaics.
        num_test: Test mosaics.
        image_size: Side in pixels, a multiple of 16 (each 8×8 digit is upscaled ``image_size / 16`` times).
    """

    num_train: int = 4000
    num_validation: int = 1000
    num_test: int = 1000
    image_size: int = 32


def _uniform_index(keys: np.ndarray, n: int) -> np.ndarray:
    """Map uniform uint64 keys to indices in [0, n) using their top 53 bits."""
    return np.floor((keys >> np.uint64(11)).astype(np.float64) * (n / 2.0 ** 53)).astype(np.int64)


def source_pools(num_digits: int, seed: int) -> Dict[str, np.ndarray]:
    """Disjoint sorted pools of source-digit indices for train, validation and test (60/20/20).

    Args:
        num_digits: Number of source digits (1797).
        seed: The split seed.
    """
    order = np.argsort(hash_keys(seed, _POOL_SALT, np.arange(num_digits)), kind="stable")
    n_train = int(round(_POOL_FRACTIONS[0] * num_digits))
    n_val = int(round(_POOL_FRACTIONS[1] * num_digits))
    return {"train": np.sort(order[:n_train]), "validation": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


def make_mosaics(digit_images: np.ndarray, digit_targets: np.ndarray, pool: np.ndarray, num_mosaics: int,
                 seed: int, salt: int, image_size: int = 32) -> Tuple[np.ndarray, np.ndarray, List[List[int]]]:
    """Compose 2×2 mosaics of digits drawn uniformly from ``pool``.

    Args:
        digit_images: (M, 8, 8) source digits with values in [0, 16].
        digit_targets: (M,) digit classes.
        pool: Indices of the source digits this split may use.
        num_mosaics: Number of mosaics.
        seed: Seed of the composition.
        salt: Salt separating the splits.
        image_size: Side in pixels, a multiple of 16.

    Returns:
        ``(pixels, sources, labels)``: (num_mosaics, image_size, image_size) uint8, the (num_mosaics, 4)
        source indices (cells in row-major order), and the sorted distinct digits of each mosaic.
    """
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16, got {image_size!r}")
    if len(pool) == 0:
        raise ValueError("the source pool is empty")
    cells = hash_keys(seed, salt, np.arange(num_mosaics)[:, None], np.arange(4)[None, :])
    sources = pool[_uniform_index(cells, len(pool))]  # (N, 4)
    tiles = digit_images[sources]  # (N, 4, 8, 8)
    grid = tiles.reshape(num_mosaics, 2, 2, 8, 8).transpose(0, 1, 3, 2, 4).reshape(num_mosaics, 16, 16)
    scale = image_size // 16
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    pixels = np.clip(np.rint(grid * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    present = np.zeros((num_mosaics, 10), dtype=bool)
    present[np.arange(num_mosaics)[:, None], digit_targets[sources]] = True
    labels = [np.flatnonzero(row).tolist() for row in present]
    return pixels, sources, labels


def _encode_png(pixels: np.ndarray) -> bytes:
    """Encode a (H, W) uint8 grayscale mosaic as an RGB PNG (three equal channels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2)).save(buffer, format="PNG")
    return buffer.getvalue()


@register_dataset("digits_mosaic")
class DigitsMosaic(SPMLBuilder):
    """The bundled demo: 2×2 mosaics of scikit-learn's handwritten digits (see the module docstring).

    Args:
        cache_dir: Cache folder of the prepared Arrow files.
        **kwargs: :class:`DigitsMosaicConfig` fields (``seed``, ``split_seed``, ``num_train``, ...).
    """

    BUILDER_CONFIG_CLASS = DigitsMosaicConfig
    needs_root = False
    has_validation = True
    expected_num_pos = round(10 * (1 - 0.9 ** 4), 3)
    num_classes = 10
    source_description = (
        "2x2 mosaics of real handwritten digits (scikit-learn's load_digits, the test set of the UCI Optical "
        "Recognition of Handwritten Digits data); labels are the distinct digits shown. Train, validation and "
        "test mosaics use disjoint source digits.")
    source_license = "cc-by-4.0"
    source_homepage = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
    source_citation = (
        "@misc{alpaydin1998digits,\n  author = {Alpaydin, E. and Kaynak, C.},\n"
        "  title = {Optical Recognition of Handwritten Digits},\n  year = {1998},\n"
        "  howpublished = {UCI Machine Learning Repository},\n  doi = {10.24432/C50P49}\n}")
    class_list_note = "the ten digits 0-9"

    def __init__(self, *args, **kwargs):
        self._digits: Optional[Tuple[np.ndarray, np.ndarray]] = None
        super().__init__(*args, **kwargs)

    def _load_class_names(self) -> List[str]:
        return list(CLASS_NAMES)

    def _source_digits(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._digits is None:
            from sklearn.datasets import load_digits

            bunch = load_digits()
            self._digits = (np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64))
        return self._digits

    def _load_raw_split(self, split: str) -> RawSplit:
        cfg = self.config
        sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
        num = sizes[split]
        if isinstance(num, bool) or not isinstance(num, int) or num <= 0:
            raise ValueError(f"num_{split} must be a positive int, got {num!r}")
        images, targets = self._source_digits()
        pool = source_pools(len(targets), cfg.split_seed)[split]
        pixels, _, labels = make_mosaics(images, targets, pool, num, cfg.split_seed, _MOSAIC_SALTS[split],
                                         cfg.image_size)
        return RawSplit(class_names=CLASS_NAMES, labels=labels, images=[_encode_png(p) for p in pixels],
                        source=f"sklearn.datasets.load_digits ({split} pool of {len(pool)} digits)")
