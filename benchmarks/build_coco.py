"""Time COCO 2014's label-matrix build on generated annotation files of the official size.

Writes ``annotations/instances_train2014.json`` (82,783 images, 604,907 instance annotations, the 80
categories with COCO's ids 1..90) and ``instances_val2014.json`` (40,504 images, 291,875 annotations)
into a temporary folder, each annotation with a bbox, area and a polygon, about the real files' size,
then times :func:`spl_losses.data.coco2014.read_coco_split` (JSON parsing + the vectorised label
matrix; image-existence checks off, since no images are written). Target (issue 4): under 30 s for
both files on 2 cores. ``--observed-sampling size`` / ``loc`` also reads the annotations' areas, boxes
and the images' sizes and computes the biased draws' per-entry weights (the default ``uniform`` path
reads none of them).

Usage::

    python benchmarks/build_coco.py [--train-images 82783] [--train-annotations 604907]
        [--polygon-points 28] [--no-val] [--observed-sampling uniform|size|loc] [--repeat 1]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from spl_losses.data.coco2014 import read_coco_split

# COCO's 80 category ids (1..90 with gaps)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def write_instances_file(path: str, split: str, num_images: int, num_annotations: int, seed: int,
                         polygon_points: int = 28) -> None:
    """Write a COCO-style instances JSON file with random annotations.

    Args:
        path: Output file.
        split: ``train2014`` or ``val2014`` (used in file names).
        num_images: Number of images listed; about 1% get no annotation, as in the real files.
        num_annotations: Number of instance annotations.
        seed: Random seed.
        polygon_points: Vertices of each annotation's polygon (28 gives about the size of the real
            file, ~330 MB for train2014); polygons are drawn from a pool of 1,000 to save memory.
    """
    rng = np.random.default_rng(seed)
    polygons = np.round(rng.random((1000, 2 * polygon_points)) * 640, 2).tolist()
    image_ids = np.sort(rng.choice(600_000, size=num_images, replace=False)) + 1
    annotated = image_ids[rng.random(num_images) > 0.01]
    ann_images = rng.choice(annotated, size=num_annotations)
    ann_images[: len(annotated)] = annotated  # every annotated image has at least one
    ann_cats = rng.choice(COCO_CATEGORY_IDS, size=num_annotations)
    boxes = np.round(rng.random((num_annotations, 4)) * 300, 2)
    images = [{"license": 1, "file_name": f"COCO_{split}_{int(i):012d}.jpg", "height": 480, "width": 640,
               "id": int(i)} for i in image_ids]
    annotations = [
        {"segmentation": [polygons[k % 1000]], "area": round(w * h, 2), "iscrowd": 0,
         "image_id": int(img), "bbox": [x, y, w, h], "category_id": int(cat), "id": int(k) + 1}
        for k, (img, cat, (x, y, w, h)) in enumerate(zip(ann_images, ann_cats, boxes.tolist()))
    ]
    categories = [{"supercategory": "thing", "id": int(c), "name": f"category_{c}"} for c in COCO_CATEGORY_IDS]
    with open(path, "w") as f:
        json.dump({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                   "categories": categories}, f)


def time_full_build(root: str, splits) -> None:
    """Write an empty file for every listed image, then time ``build_dataset("coco2014")``.

    Args:
        root: The generated raw folder.
        splits: Official split names whose annotation files were written.
    """
    import datasets

    from spl_losses.data import build_dataset
    from spl_losses.data.coco2014 import read_coco_columns

    if "val2014" not in splits:
        print("--full-build needs both annotation files; skipped")
        return
    for split in splits:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for name in read_coco_columns(os.path.join(root, "annotations", f"instances_{split}.json")).file_names:
            open(os.path.join(root, split, name), "wb").close()
    datasets.disable_progress_bars()
    start = time.perf_counter()
    ds = build_dataset("coco2014", root=root, cache_dir=os.path.join(root, "cache"))
    print(f"full build: {', '.join(f'{k} {len(v)}' for k, v in ds.items())} rows in "
          f"{time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=82_783)
    parser.add_argument("--train-annotations", type=int, default=604_907)
    parser.add_argument("--val-images", type=int, default=40_504)
    parser.add_argument("--val-annotations", type=int, default=291_875)
    parser.add_argument("--polygon-points", type=int, default=28, help="vertices per annotation polygon")
    parser.add_argument("--no-val", action="store_true", help="only the train2014 file")
    parser.add_argument("--observed-sampling", nargs="+", default=["uniform"], choices=("uniform", "size", "loc"),
                        help="observed_sampling rule(s) to time (size / loc also read the geometry)")
    parser.add_argument("--repeat", type=int, default=1, help="timings per rule")
    parser.add_argument("--full-build", action="store_true",
                        help="also write empty image files and time build_dataset('coco2014') end to end "
                             "(existence checks, 80/20 split, sampling, Arrow writing)")
    args = parser.parse_args()

    splits = [("train2014", args.train_images, args.train_annotations)]
    if not args.no_val:
        splits.append(("val2014", args.val_images, args.val_annotations))
    print(f"torch threads: {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"cpu count: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "annotations"))
        for seed, (split, num_images, num_annotations) in enumerate(splits):
            start = time.perf_counter()
            path = os.path.join(root, "annotations", f"instances_{split}.json")
            write_instances_file(path, split, num_images, num_annotations, seed, args.polygon_points)
            print(f"generated {split}: {num_images} images, {num_annotations} annotations, "
                  f"{os.path.getsize(path) / 2 ** 20:.0f} MiB in {time.perf_counter() - start:.1f} s")
        for rule in args.observed_sampling:
            for _ in range(args.repeat):
                total = 0.0
                for split, _, _ in splits:
                    start = time.perf_counter()
                    _, _, raw = read_coco_split(root, split, check_images=False, observed_sampling=rule)
                    seconds = time.perf_counter() - start
                    total += seconds
                    kept = sum(1 for row in raw.labels if row)
                    print(f"{rule:>7} {split}: {len(raw)} rows, {kept} with a positive, "
                          f"{sum(map(len, raw.labels)) / max(kept, 1):.2f} positives per kept image, {seconds:.2f} s")
                print(f"{rule:>7}: label lists of {len(splits)} file(s): {total:.2f} s (target: under 30 s on 2 cores)")
        if args.full_build:
            time_full_build(root, [split for split, _, _ in splits])


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
