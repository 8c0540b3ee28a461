"""Generated COCO-like JPEGs (640 x 480, ~130 kB, smooth colour fields plus noise) and their SPML dataset.

Shared by ``input_pipeline.py`` and ``e2e_throughput.py``. The images are listed in ``train.csv`` /
``validation.csv`` / ``test.csv`` and built with the package's ``multilabel_files`` builder, so the
loaders read them as a real run does (file paths in an ``image`` column).
"""
import csv
import os
import time

import numpy as np

CLASSES = [f"class{i:02d}" for i in range(20)]


def _write_jpeg(job) -> str:
    from PIL import Image

    path, seed, width, height = job
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(field, dtype=np.int16) + rng.normal(0, 14, (height, width, 3)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path


def write_jpegs(folder: str, num_images: int, seed: int = 0, width: int = 640, height: int = 480) -> list:
    """Write ``num_images`` JPEGs into ``folder/images`` (in parallel on machines with many CPUs); returns
    their paths. Image i depends only on (``seed``, i).

    Args:
        folder: Output folder.
        num_images: How many.
        seed: Random seed.
        width: Width in pixels.
        height: Height in pixels.
    """
    from spl_losses.training.images import available_cpus

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    jobs = [(os.path.join(folder, "images", f"{i:06d}.jpg"), [seed, i], width, height) for i in range(num_images)]
    if available_cpus() > 2 and num_images >= 64:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(available_cpus()) as pool:
            return list(pool.map(_write_jpeg, jobs, chunksize=16))
    return [_write_jpeg(job) for job in jobs]


def _write_listing(path: str, images: list, rng) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        for image in images:
            labels = rng.choice(len(CLASSES), size=rng.integers(1, 4), replace=False)
            writer.writerow([os.path.relpath(image, os.path.dirname(path)), "|".join(CLASSES[j] for j in labels)])


def coco_like_dataset(folder: str, num_train: int, num_eval: int = 8, seed: int = 0):
    """JPEGs under ``folder`` and their ``DatasetDict`` (train ``num_train`` images, validation and test
    ``num_eval`` each), built with the ``multilabel_files`` builder.

    Args:
        folder: Work folder (images, listings, the datasets cache).
        num_train: Training images.
        num_eval: Validation and test images each.
        seed: Random seed.

    Returns:
        ``(dataset_dict, seconds_to_generate, mean_jpeg_kilobytes)``.
    """
    from spl_losses.data import load_spml_dataset

    start = time.perf_counter()
    paths = write_jpegs(folder, num_train + 2 * num_eval, seed)
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    splits = {"train": paths[:num_train], "validation": paths[num_train:num_train + num_eval],
              "test": paths[num_train + num_eval:]}
    for name, images in splits.items():
        _write_listing(os.path.join(folder, f"{name}.csv"), images, rng)
    kilobytes = float(np.mean([os.path.getsize(p) for p in paths])) / 1024
    dataset = load_spml_dataset("multilabel_files", data_dir=folder, cache_dir=os.path.join(folder, "hf"),
                                class_names=tuple(CLASSES))
    return dataset, seconds, kilobytes


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (other processes competing for the cores), or '?'."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"
