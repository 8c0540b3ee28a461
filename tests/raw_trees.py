"""Tiny raw trees in the official layouts of VOC 2012, COCO 2014, NUS-WIDE and CUB-200-2011, for tests.

Each writer creates the files under ``root`` (4x4 images written with PIL, annotations in the official
text/JSON/npy formats) and returns what a correct reader must find, computed here independently of
the package: per official split (``train`` / ``test``) a dict ``{absolute image path: set of positive
class names}`` holding only the images that the reference keeps, the class names in their official
order, and the number of listed images without any positive label.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Set

import numpy as np
from PIL import Image

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


@dataclass
class ExpectedTree:
    """What a correct reader finds in a written raw tree.

    Args:
        class_names: The class names in official order.
        positives: Per official split, ``{image path: set of positive class names}`` for the images the
            reference keeps (for NUS-WIDE / CUB this includes images without any positive), in the
            reference's row order.
        num_without_positive: Per official split, listed images that have no positive label.
    """

    class_names: List[str]
    positives: Dict[str, Dict[str, Set[str]]]
    num_without_positive: Dict[str, int]


def write_image(path: str, value: int = 0) -> None:
    """Write a 4x4 RGB image (JPEG or PNG by the file extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (value % 256, 40, 200)).save(path)


def _random_positive_sets(rng: np.random.Generator, num_images: int, num_classes: int, max_pos: int,
                          num_empty: int) -> List[List[int]]:
    """Per image a sorted list of positive classes; the last ``num_empty`` images have none."""
    sets = []
    for i in range(num_images):
        if i >= num_images - num_empty:
            sets.append([])
            continue
        k = int(rng.integers(1, max_pos + 1))
        sets.append(sorted(rng.choice(num_classes, size=k, replace=False).tolist()))
    return sets


def write_voc_tree(root: str, num_train: int = 30, num_val: int = 10, seed: int = 0) -> ExpectedTree:
    """Write ``VOCdevkit/VOC2012`` with per-class ``{class}_{train,val}.txt`` files and JPEGs.

    Each split has two images with no class marked 1: one marked only -1, one marked 0 ("difficult")
    for some classes; both must be dropped. Some positives' lines use the two-space separator of the
    official files, others a single space.
    """
    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    main = os.path.join(voc, "ImageSets", "Main")
    os.makedirs(main, exist_ok=True)
    positives, empty = {}, {}
    for ours, image_set, n, year in (("train", "train", num_train, 2008), ("test", "val", num_val, 2009)):
        ids = [f"{year}_{i:06d}" for i in range(n)]
        sets = _random_positive_sets(rng, n, len(VOC_CLASSES), 3, num_empty=2)
        difficult = {ids[-1]: {3, 7}}  # only "difficult" marks, no positive
        lines = {c: [] for c in range(len(VOC_CLASSES))}
        for image_id, pos in zip(ids, sets):
            for c in range(len(VOC_CLASSES)):
                if c in pos:
                    lines[c].append(f"{image_id}  1")
                elif c in difficult.get(image_id, ()):
                    lines[c].append(f"{image_id}  0")
                else:
                    lines[c].append(f"{image_id} -1")
        for c, name in enumerate(VOC_CLASSES):
            order = rng.permutation(len(lines[c]))  # files need not be sorted
            with open(os.path.join(main, f"{name}_{image_set}.txt"), "w") as f:
                f.write("\n".join(lines[c][j] for j in order) + "\n")
        for i, image_id in enumerate(ids):
            write_image(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), i)
        positives[ours] = {os.path.join(voc, "JPEGImages", f"{image_id}.jpg"): {VOC_CLASSES[c] for c in pos}
                           for image_id, pos in zip(ids, sets) if pos}
        empty[ours] = sum(1 for pos in sets if not pos)
    return ExpectedTree(list(VOC_CLASSES), positives, empty)


def write_coco_tree(root: str, num_train: int = 30, num_val: int = 10, seed: int = 0) -> ExpectedTree:
    """Write ``annotations/instances_{train,val}2014.json`` and the listed images.

    Categories have non-contiguous ids listed out of id order (the class order is the list's order);
    image ids mix 1- and 2-digit numbers (so string and numeric order differ); two images per split
    have no annotation (dropped); a class can be annotated several times on one image.
    """
    rng = np.random.default_rng(seed)
    categories = [{"id": 7, "name": "zebra", "supercategory": "animal"},
                  {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
                  {"id": 11, "name": "apple", "supercategory": "food"},
                  {"id": 5, "name": "person", "supercategory": "person"},
                  {"id": 3, "name": "car", "supercategory": "vehicle"}]
    names = [c["name"] for c in categories]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    positives, empty, ann_id = {}, {}, 1
    for ours, official, n in (("train", "train2014", num_train), ("test", "val2014", num_val)):
        image_ids = [int(x) for x in rng.permutation(np.arange(1, 4 * n))[:n]]
        sets = _random_positive_sets(rng, n, len(categories), 3, num_empty=2)
        images, annotations = [], []
        for image_id, pos in zip(image_ids, sets):
            file_name = f"COCO_{official}_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "width": 4, "height": 4})
            write_image(os.path.join(root, official, file_name), image_id)
            for c in pos:
                for _ in range(int(rng.integers(1, 3))):
                    annotations.append({"id": ann_id, "image_id": image_id, "category_id": categories[c]["id"],
                                        "bbox": [0.0, 0.0, 2.0, 2.0], "area": 4.0, "iscrowd": 0,
                                        "segmentation": [[0.0, 0.0, 2.0, 0.0, 2.0, 2.0]]})
                    ann_id += 1
        annotations = [annotations[j] for j in rng.permutation(len(annotations))]
        with open(os.path.join(root, "annotations", f"instances_{official}.json"), "w") as f:
            json.dump({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                       "categories": categories}, f)
        in_string_order = sorted(zip(image_ids, sets), key=lambda item: str(item[0]))  # the reference's row order
        positives[ours] = {os.path.join(root, official, f"COCO_{official}_{image_id:012d}.jpg"): {names[c] for c in pos}
                           for image_id, pos in in_string_order if pos}
        empty[ours] = sum(1 for pos in sets if not pos)
    return ExpectedTree(names, positives, empty)


NUS_CONCEPTS = [f"concept{i:02d}" for i in range(81)]


def write_nus_tree(root: str, num_train: int = 30, num_val: int = 10, seed: int = 0,
                   write_concepts: bool = True) -> ExpectedTree:
    """Write ``formatted_{train,val}_{images,labels}.npy``, ``Concepts81.txt`` and ``Flickr/`` images.

    Image paths are relative to ``Flickr/`` in per-concept folders; one row per split has no positive
    and is kept.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    if write_concepts:
        with open(os.path.join(root, "Concepts81.txt"), "w") as f:
            f.write("\n".join(NUS_CONCEPTS) + "\n")
    positives, empty = {}, {}
    for ours, prefix, n in (("train", "formatted_train", num_train), ("test", "formatted_val", num_val)):
        sets = _random_positive_sets(rng, n, 81, 3, num_empty=1)
        rel = [f"{NUS_CONCEPTS[pos[0] if pos else 0]}/{i:04d}_{ours}.jpg" for i, pos in enumerate(sets)]
        labels = np.zeros((n, 81), dtype=np.float64)  # the reference saves float matrices
        for i, pos in enumerate(sets):
            labels[i, pos] = 1
            write_image(os.path.join(root, "Flickr", rel[i]), i)
        np.save(os.path.join(root, f"{prefix}_images.npy"), np.array(rel))
        np.save(os.path.join(root, f"{prefix}_labels.npy"), labels)
        positives[ours] = {os.path.join(root, "Flickr", r): {NUS_CONCEPTS[c] for c in pos} for r, pos in zip(rel, sets)}
        empty[ours] = sum(1 for pos in sets if not pos)
    return ExpectedTree(list(NUS_CONCEPTS), positives, empty)


CUB_ATTRIBUTES = [f"has_part_{i}::color_{i % 3}" for i in range(1, 13)]


def write_cub_tree(root: str, num_images: int = 40, seed: int = 0, attributes_at_top: bool = True) -> ExpectedTree:
    """Write ``CUB_200_2011/{images,train_test_split}.txt``, ``attributes/image_attribute_labels.txt``,
    ``attributes.txt`` (at the archive's top level, or inside ``CUB_200_2011/attributes/``) and images.

    12 attributes; about 70% of the images are training images; one image has no attribute present;
    a few label lines carry extra fields, as some official lines do; label lines are not grouped by image.
    """
    rng = np.random.default_rng(seed)
    cub = os.path.join(root, "CUB_200_2011")
    os.makedirs(os.path.join(cub, "attributes"), exist_ok=True)
    num_attributes = len(CUB_ATTRIBUTES)
    names_file = os.path.join(root, "attributes.txt") if attributes_at_top else os.path.join(
        cub, "attributes", "attributes.txt")
    with open(names_file, "w") as f:
        f.write("".join(f"{i} {name}\n" for i, name in enumerate(CUB_ATTRIBUTES, 1)))
    sets = _random_positive_sets(rng, num_images, num_attributes, 6, num_empty=1)
    sets = [sets[j] for j in rng.permutation(num_images)]
    is_train = rng.random(num_images) < 0.7
    rel = [f"{(i % 3) + 1:03d}.Bird_{(i % 3) + 1}/Bird_{i:04d}.jpg" for i in range(num_images)]
    with open(os.path.join(cub, "images.txt"), "w") as f:
        f.write("".join(f"{i + 1} {r}\n" for i, r in enumerate(rel)))
    with open(os.path.join(cub, "train_test_split.txt"), "w") as f:
        f.write("".join(f"{i + 1} {int(t)}\n" for i, t in enumerate(is_train)))
    lines = []
    for i, pos in enumerate(sets):
        for a in range(num_attributes):
            extra = " 0 0" if (i * num_attributes + a) % 17 == 0 else ""
            lines.append(f"{i + 1} {a + 1} {int(a in pos)} {int(rng.integers(1, 5))} {rng.random() * 20:.4f}{extra}")
    with open(os.path.join(cub, "attributes", "image_attribute_labels.txt"), "w") as f:
        f.write("\n".join(lines[j] for j in rng.permutation(len(lines))) + "\n")
    for i, r in enumerate(rel):
        write_image(os.path.join(cub, "images", r), i)
    positives = {"train": {}, "test": {}}
    for i, pos in enumerate(sets):
        split = "train" if is_train[i] else "test"
        positives[split][os.path.join(cub, "images", rel[i])] = {CUB_ATTRIBUTES[a] for a in pos}
    empty = {split: sum(1 for i, pos in enumerate(sets) if not pos and (is_train[i] == (split == "train")))
             for split in ("train", "test")}
    return ExpectedTree(list(CUB_ATTRIBUTES), positives, empty)


#: A listing's rows over the images of :func:`write_listing_images`: (path, labels).
GOOD_ROWS = [(f"img/{i}.png", "cat" if i % 2 else "cat|dog") for i in range(6)]


def write_listing_images(root) -> None:
    """Six 4x4 PNGs ``root/img/{0..5}.png`` (distinct pixels), the images :data:`GOOD_ROWS` lists."""
    for i in range(6):
        path = os.path.join(str(root), "img", f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (4, 4), (i, 0, 0)).save(path)


def listing_writer(root):
    """A function writing a ``path,labels`` listing of (path, labels) rows into ``root``; it returns its path."""
    def write(rows, name="all.csv"):
        with open(os.path.join(str(root), name), "w", encoding="utf-8") as f:
            f.write("path,labels\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
        return os.path.join(str(root), name)
    return write
