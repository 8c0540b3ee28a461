"""Biased single positives on COCO (Arroyo, Perona & Cole, ICLR 2023 Tiny Papers) and per-class weights.

A hand-written COCO 2014 tree: the probabilities of each rule are worked out by hand below from the
annotations (areas, boxes, image sizes), then compared with the empirical frequencies of 20,000
draws per image, one seed per draw. Tolerance: five binomial standard errors,
``5 * sqrt(p (1 - p) / 20000)`` (at most 0.018; exactly 0 where p is 0 or 1), which a correct
sampler exceeds with probability below 1e-6 per entry; the seeds are fixed, so the test is
deterministic.
"""
import json
import math
import os
import random

import datasets
import numpy as np
import pytest
from PIL import Image

from spl_losses.data import build_dataset, create_builder, sample_single_positive

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 8, "name": "bird"}, {"id": 5, "name": "fish"}]
NAMES = ["cat", "dog", "bird", "fish"]
IMAGES = {  # id: (width, height)
    7: (100, 80), 12: (60, 60), 100: (50, 50), 3: (40, 40), 55: (30, 30)}
ANNOTATIONS = [  # (image id, category id, area, bbox [x, y, w, h])
    (7, 3, 300.0, [60, 36, 20, 8]),      # cat: centre (70, 40), 20 from the image centre (50, 40)
    (12, 5, 150.0, [0, 25, 10, 10]),     # fish: centre (5, 30), 25 from (30, 30)
    (7, 1, 100.0, [55, 35, 10, 10]),     # dog: centre (60, 40), distance 10
    (100, 8, 0.0, [0, 0, 0, 0]),         # bird: zero area, 35.36 from (25, 25)
    (7, 8, 500.0, [70, 0, 20, 0]),       # bird: centre (80, 0), distance 50
    (12, 3, 50.0, [25, 25, 10, 10]),     # cat: centre (30, 30) = the image centre, d = 0 -> 0.0005
    (3, 1, 10.0, [0, 0, 4, 4]),          # dog alone
    (7, 1, 100.0, [40, 0, 20, 0]),       # dog: centre (50, 0), distance 40
    (100, 5, 0.0, [0, 0, 0, 0]),         # fish: the same box as the bird
]
CLASS_WEIGHTS = {"cat": 1.0, "dog": 3.0, "bird": 0.0, "fish": 0.0}

# rows in the reference's order (image ids as strings: "100" < "12" < "3" < "7"; 55 has no annotation)
ROWS = [100, 12, 3, 7]
EXPECTED = {  # per row, {class: probability}, worked out by hand
    "size": [{"bird": 0.5, "fish": 0.5},                          # no area at all: uniform
             {"cat": 50 / 200, "fish": 150 / 200},
             {"dog": 1.0},
             {"cat": 300 / 1000, "dog": 200 / 1000, "bird": 500 / 1000}],
    "loc": [{"bird": 0.5, "fish": 0.5},                           # the same distance
            {"cat": 2000 / (2000 + 1 / 25), "fish": (1 / 25) / (2000 + 1 / 25)},
            {"dog": 1.0},
            {"cat": (1 / 20) / 0.195, "dog": (1 / 10 + 1 / 40) / 0.195, "bird": (1 / 50) / 0.195}],
    "weights": [{"bird": 0.5, "fish": 0.5},                       # both weigh 0: uniform
                {"cat": 1.0, "fish": 0.0},
                {"dog": 1.0},
                {"cat": 0.25, "dog": 0.75, "bird": 0.0}],
}
NUM_DRAWS = 20_000


def write_tree(root: str, indent=None) -> None:
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for official in ("train2014", "val2014"):
        os.makedirs(os.path.join(root, official), exist_ok=True)
        images = []
        for image_id, (w, h) in IMAGES.items():
            name = f"COCO_{official}_{image_id:012d}.jpg"
            Image.new("RGB", (4, 4), (image_id, 0, 0)).save(os.path.join(root, official, name))
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        anns = [{"id": k + 1, "image_id": i, "category_id": c, "area": a, "bbox": b, "iscrowd": 0,
                 "segmentation": [[0, 0, 1, 1]]} for k, (i, c, a, b) in enumerate(ANNOTATIONS)]
        with open(os.path.join(root, "annotations", f"instances_{official}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f, indent=indent)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_bias"))
    write_tree(root)
    with open(os.path.join(root, "weights.json"), "w") as f:
        json.dump(CLASS_WEIGHTS, f)
    return root


def _rule_options(rule, root):
    return {"observed_sampling": rule, **({"class_weights_file": os.path.join(root, "weights.json")}
                                          if rule == "weights" else {})}


def test_empirical_frequencies_match_the_rule(coco_root, tmp_path):
    rules = ("size", "loc", "weights")
    labels, weights = [], []  # the four annotated images once per rule, drawn together
    for rule in rules:
        builder = create_builder("coco2014", root=coco_root, cache_dir=str(tmp_path / rule),
                                 **_rule_options(rule, coco_root))
        raw = next(p.raw for p in builder._prepare_splits() if p.name == "train")  # weights attached
        kept = [i for i, row in enumerate(raw.labels) if row]
        assert [os.path.basename(raw.images[i]) for i in kept] == [f"COCO_train2014_{i:012d}.jpg" for i in ROWS]
        labels += [raw.labels[i] for i in kept]
        weights += [raw.label_weights[i] for i in kept]
    counts = np.zeros((len(labels), len(NAMES)))
    for seed in range(NUM_DRAWS):  # one seed per draw
        for row, drawn in enumerate(sample_single_positive(labels, seed=seed, weights=weights).positives):
            counts[row, drawn[0]] += 1
    for k, rule in enumerate(rules):
        for row, expected in enumerate(EXPECTED[rule]):
            p = np.array([expected.get(name, 0.0) for name in NAMES])
            tolerance = 5 * np.sqrt(p * (1 - p) / NUM_DRAWS)
            frequency = counts[k * len(ROWS) + row] / NUM_DRAWS
            assert np.all(np.abs(frequency - p) <= tolerance + 1e-12), (rule, ROWS[row], frequency, p)


def _reference_weights(rule, data):
    """Per annotated image, its per-class weights computed as the reference's script computes them, and
    its positive classes."""
    index = {c["id"]: i for i, c in enumerate(data["categories"])}
    dims = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = {}
    for image_id, anns in by_image.items():
        w = [0] * len(index)
        if rule == "size":
            total = 0
            for ann in anns:
                total += ann["area"]
            for ann in anns:
                w[index[ann["category_id"]]] += ann["area"] / total if total > 0 else 0.0
        else:
            inverse = 0
            for ann in anns:  # the normalising constant: distances to (width, height), 0 counted as 1
                d = math.sqrt((ann["bbox"][0] + ann["bbox"][2] / 2 - dims[image_id][0]) ** 2
                              + (ann["bbox"][1] + ann["bbox"][3] / 2 - dims[image_id][1]) ** 2)
                inverse += 1 / (d if d != 0 else 1)
            for ann in anns:
                d = math.sqrt((ann["bbox"][0] + ann["bbox"][2] / 2 - 0.5 * dims[image_id][0]) ** 2
                              + (ann["bbox"][1] + ann["bbox"][3] / 2 - 0.5 * dims[image_id][1]) ** 2)
                w[index[ann["category_id"]]] += (1 / inverse) / (d if d != 0 else 0.0005)
        out[image_id] = (w, sorted({index[ann["category_id"]] for ann in anns}))
    return out


@pytest.mark.parametrize("rule", ["size", "loc"])
def test_reference_rng_reproduces_random_choices(coco_root, tmp_path, rule):
    ds = build_dataset("coco2014", root=coco_root, cache_dir=str(tmp_path), observed_sampling=rule,
                       sampling_rng="reference", seed=5)
    drawn = {}
    for official, ours in (("train2014", ("train", "validation")), ("val2014", ("test",))):
        with open(os.path.join(coco_root, "annotations", f"instances_{official}.json")) as f:
            weights = _reference_weights(rule, json.load(f))
        rng = random.Random(5)  # random.seed(5), one draw per annotated image in string order
        for image_id in sorted(weights, key=str):
            w, positives = weights[image_id]
            drawn[(official, image_id)] = rng.choices(range(4), weights=w)[0] if sum(w) > 0 else rng.choice(positives)
        for split in ours:
            for row in ds[split].cast_column("image", datasets.Image(decode=False)):
                image_id = int(os.path.basename(row["image"]["path"])[-16:-4])
                assert row["observed_labels"] == [drawn[(official, image_id)]], (split, image_id)


def test_builder_records_the_rule_and_checks_its_inputs(coco_root, tmp_path):
    builder = create_builder("coco2014", root=coco_root, cache_dir=str(tmp_path / "a"), observed_sampling="loc")
    builder.download_and_prepare()
    report = builder.build_report
    assert (report["observed_sampling"], report["sampling_rng"]) == ("loc", "hash")
    with pytest.raises(ValueError, match="observed_sampling='size' is not available for dataset 'voc2012'"):
        build_dataset("voc2012", root=coco_root, observed_sampling="size", cache_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="choose one of"):
        build_dataset("coco2014", root=coco_root, observed_sampling="biggest", cache_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="class_weights_file"):
        build_dataset("coco2014", root=coco_root, observed_sampling="weights", cache_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="num_positives=1, num_negatives=0"):
        build_dataset("coco2014", root=coco_root, observed_sampling="size", sampling_rng="reference",
                      num_negatives=1, cache_dir=str(tmp_path / "b"))


@pytest.mark.parametrize("content, match", [
    ({"cat": 1, "dog": 1, "bird": 1}, "missing: \\['fish'\\]"),
    ({**CLASS_WEIGHTS, "zebra": 1}, "unknown: \\['zebra'\\]"),
    ({**CLASS_WEIGHTS, "dog": -1}, "weight of 'dog' must be a finite number >= 0"),
    ({**CLASS_WEIGHTS, "dog": "x"}, "weight of 'dog'"),
    ([1, 2, 3, 4], "expected a JSON object"),
])
def test_class_weights_file_errors_name_the_file(coco_root, tmp_path, content, match):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"w.json.*{match}|{match}"):
        build_dataset("coco2014", root=coco_root, observed_sampling="weights", class_weights_file=str(path),
                      cache_dir=str(tmp_path / "c"))


def test_geometry_read_the_same_from_one_line_and_pretty_printed_files(tmp_path):
    from spl_losses.data.coco2014 import read_coco_split

    one, pretty = str(tmp_path / "one"), str(tmp_path / "pretty")
    write_tree(one)
    write_tree(pretty, indent=2)  # several lines: the json-module fallback
    for rule in ("size", "loc"):
        a = read_coco_split(one, "train2014", observed_sampling=rule)[2]
        b = read_coco_split(pretty, "train2014", observed_sampling=rule)[2]
        assert a.labels == b.labels and a.label_weights == b.label_weights
        last = np.array(a.label_weights[-1])  # image 7, the last in string order
        assert last / last.sum() == pytest.approx([EXPECTED[rule][3][n] for n in ("cat", "dog", "bird")])
    uniform = read_coco_split(one, "train2014")[2]
    assert uniform.label_weights is None and uniform.labels == a.labels


def test_bad_geometry_is_refused_naming_the_annotation(tmp_path):
    root = str(tmp_path / "raw")
    write_tree(root)
    path = os.path.join(root, "annotations", "instances_train2014.json")
    with open(path) as f:
        data = json.load(f)
    data["annotations"][2]["bbox"] = [1, 2, 3]
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"instances_train2014.json.*annotations\[2\] has bbox \[1, 2, 3\]"):
        build_dataset("coco2014", root=root, observed_sampling="size", cache_dir=str(tmp_path / "c"))
    data["annotations"][2]["bbox"] = [1, 2, 3, 4]
    data["annotations"][4]["area"] = -5
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"annotations\[4\] has area -5.0"):
        build_dataset("coco2014", root=root, observed_sampling="size", cache_dir=str(tmp_path / "c"))
    # the uniform rule reads no geometry, so it does not care
    assert len(build_dataset("coco2014", root=root, cache_dir=str(tmp_path / "d"))["test"]) == 4
