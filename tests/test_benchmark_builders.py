"""The four benchmark builders (voc2012, coco2014, nuswide, cub200) on tiny raw trees in the official layouts.

The trees are written by ``tests/raw_trees.py``, which also states independently what a correct
build contains (kept images, their classes, the row order of the reference, images without a
positive). Nothing is downloaded.
"""
import json
import os
import shutil

import datasets
import numpy as np
import pytest

from raw_trees import write_coco_tree, write_cub_tree, write_nus_tree, write_voc_tree
from spl_losses.data import build_dataset, get_dataset_info
from spl_losses.data.coco2014 import coco_label_matrix, read_coco_columns
from spl_losses.data.cub200 import read_cub200, read_cub_image_attribute_labels
from spl_losses.data.nuswide import NUSWIDE_CONCEPTS81, read_nuswide_split
from spl_losses.data.raw_files import find_missing_files

datasets.disable_progress_bars()

WRITERS = {"voc2012": write_voc_tree, "coco2014": write_coco_tree, "nuswide": write_nus_tree,
           "cub200": write_cub_tree}
NAMES = sorted(WRITERS)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """One raw tree per benchmark and what it must yield."""
    out = {}
    for name, writer in WRITERS.items():
        root = str(tmp_path_factory.mktemp(f"raw_{name}"))
        out[name] = (root, writer(root))
    return out


@pytest.fixture(scope="module")
def built(trees, tmp_path_factory):
    """Each benchmark built with the default seed."""
    return {name: build_dataset(name, root=root, cache_dir=str(tmp_path_factory.mktemp(f"cache_{name}")))
            for name, (root, _) in trees.items()}


def _paths(split: datasets.Dataset):
    return [row["path"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]


def _names(split: datasets.Dataset, column: str):
    names = split.features[column].feature.names
    return [{names[i] for i in row} for row in split[column]]


@pytest.mark.parametrize("name", NAMES)
def test_columns_and_class_order(built, trees, name):
    ds = built[name]
    expected = trees[name][1]
    assert set(ds) == {"train", "validation", "test"}
    for split in ds.values():
        assert split.column_names == ["image", "labels", "observed_labels", "index"]
        assert isinstance(split.features["image"], datasets.Image)
        assert split.features["labels"].feature.names == expected.class_names
        assert split.features["observed_labels"].feature.names == expected.class_names
        assert split.features["index"] == datasets.Value("int64")
        assert list(split["index"]) == list(range(len(split)))


@pytest.mark.parametrize("name", NAMES)
def test_rows_split_sizes_and_order(built, trees, name):
    ds = built[name]
    expected = trees[name][1]
    official_train = list(expected.positives["train"])
    # validation is 20% of the kept official train images, the rest is train, test is the official val/test set
    assert len(ds["validation"]) == int(round(0.2 * len(official_train)))
    assert len(ds["train"]) + len(ds["validation"]) == len(official_train)
    for ours, official in (("train", "train"), ("validation", "train"), ("test", "test")):
        paths = _paths(ds[ours])
        position = {p: i for i, p in enumerate(expected.positives[official])}
        assert all(p in position for p in paths)
        assert [position[p] for p in paths] == sorted(position[p] for p in paths)  # the reference's row order
        assert _names(ds[ours], "labels") == [expected.positives[official][p] for p in paths]
    assert sorted(_paths(ds["train"]) + _paths(ds["validation"])) == sorted(official_train)
    assert _paths(ds["test"]) == list(expected.positives["test"])


@pytest.mark.parametrize("name", NAMES)
def test_one_observed_positive_among_true_labels(built, name):
    ds = built[name]
    for split in ("train", "validation"):
        for labels, observed in zip(ds[split]["labels"], ds[split]["observed_labels"]):
            if labels:
                assert len(observed) == 1 and observed[0] in labels
            else:  # NUS-WIDE / CUB keep images without positives: nothing can be observed
                assert observed == []


@pytest.mark.parametrize("name", NAMES)
def test_images_without_positive_counted(built, trees, name):
    expected = trees[name][1]
    ds = built[name]
    empty_rows = {split: sum(1 for row in ds[split]["labels"] if not row) for split in ds}
    if name in ("voc2012", "coco2014"):  # dropped, as the reference does
        assert sum(empty_rows.values()) == 0
        assert expected.num_without_positive == {"train": 2, "test": 2}
    else:  # kept with an all-zero row
        assert empty_rows["train"] + empty_rows["validation"] == expected.num_without_positive["train"]
        assert empty_rows["test"] == expected.num_without_positive["test"]
    assert sum(expected.num_without_positive.values()) >= 1


@pytest.mark.parametrize("name", NAMES)
def test_build_report_counts(trees, tmp_path, name):
    from spl_losses.data.builder import create_builder

    root, expected = trees[name]
    builder = create_builder(name, root=root, cache_dir=str(tmp_path))
    builder.download_and_prepare()
    report = builder.build_report["splits"]
    dropped = {s: report[s]["dropped_without_positive"] for s in report}
    kept = {s: report[s]["kept_without_positive"] for s in report}
    if name in ("voc2012", "coco2014"):
        assert dropped["train"] == expected.num_without_positive["train"]
        assert dropped["test"] == expected.num_without_positive["test"]
        assert sum(kept.values()) == 0
    else:
        assert sum(dropped.values()) == 0
        assert kept["train"] + kept["validation"] == expected.num_without_positive["train"]
        assert kept["test"] == expected.num_without_positive["test"]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed_and_different_across_seeds(built, trees, tmp_path, name):
    root = trees[name][0]
    again = build_dataset(name, root=root, cache_dir=str(tmp_path / "again"))
    other = build_dataset(name, root=root, seed=7, cache_dir=str(tmp_path / "other"))
    for split in ("train", "validation", "test"):
        assert list(again[split]["observed_labels"]) == list(built[name][split]["observed_labels"])
        assert _paths(again[split]) == _paths(built[name][split])
        # the seed changes the draws, not the split (split_seed) nor the labels
        assert _paths(other[split]) == _paths(built[name][split])
        assert list(other[split]["labels"]) == list(built[name][split]["labels"])
    draws = lambda ds: list(ds["train"]["observed_labels"]) + list(ds["validation"]["observed_labels"])  # noqa: E731
    assert draws(other) != draws(built[name])


def test_images_decode_lazily_to_rgb(built):
    image = built["voc2012"]["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (4, 4)


def test_expected_num_pos_metadata():
    assert {n: get_dataset_info(n).expected_num_pos for n in NAMES} == {
        "voc2012": 1.5, "coco2014": 2.9, "nuswide": 1.9, "cub200": 31.4}


# ---------------------------------------------------------------------------------------- errors
@pytest.fixture
def copy_tree(trees, tmp_path):
    def _copy(name):
        root = str(tmp_path / f"raw_{name}")
        shutil.copytree(trees[name][0], root)
        return root, trees[name][1]
    return _copy


def _build_fails(name, root, tmp_path, match):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=match):
        build_dataset(name, root=root, cache_dir=str(cache))
    written = [f for _, _, files in os.walk(cache) for f in files if f.endswith(".arrow")]
    assert written == []  # failed before any split was written


def _remove_listed_image(expected, root, trees_root):
    path = list(expected.positives["train"])[3]
    os.remove(path.replace(trees_root, root))
    return os.path.basename(path)


@pytest.mark.parametrize("name", NAMES)
def test_error_image_listed_but_absent(copy_tree, trees, tmp_path, name):
    root, expected = copy_tree(name)
    missing = _remove_listed_image(expected, root, trees[name][0])
    _build_fails(name, root, tmp_path, missing)


@pytest.mark.parametrize("name, relative", [
    ("voc2012", "VOCdevkit/VOC2012/ImageSets/Main/cow_val.txt"),
    ("coco2014", "annotations/instances_val2014.json"),
    ("nuswide", "formatted_val_labels.npy"),
    ("cub200", "CUB_200_2011/attributes/image_attribute_labels.txt"),
])
def test_error_missing_annotation_file(copy_tree, tmp_path, name, relative):
    root, _ = copy_tree(name)
    os.remove(os.path.join(root, relative))
    _build_fails(name, root, tmp_path, os.path.basename(relative))


def test_error_voc_class_files_disagree(copy_tree, tmp_path):
    root, _ = copy_tree("voc2012")
    path = os.path.join(root, "VOCdevkit/VOC2012/ImageSets/Main/sheep_train.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[1:]) + "\n")
    _build_fails("voc2012", root, tmp_path, "sheep_train.txt")


def test_error_coco_class_list_mismatch(copy_tree, tmp_path):
    root, _ = copy_tree("coco2014")
    path = os.path.join(root, "annotations", "instances_val2014.json")
    with open(path) as f:
        data = json.load(f)
    data["categories"][2]["name"] = "orange"
    with open(path, "w") as f:
        json.dump(data, f)
    _build_fails("coco2014", root, tmp_path, "instances_val2014.json")


def test_error_coco_category_ids_mismatch(copy_tree, tmp_path):
    root, _ = copy_tree("coco2014")
    path = os.path.join(root, "annotations", "instances_val2014.json")
    with open(path) as f:
        data = json.load(f)
    old_id = data["categories"][0]["id"]
    data["categories"][0]["id"] = 99
    for ann in data["annotations"]:
        if ann["category_id"] == old_id:
            ann["category_id"] = 99
    with open(path, "w") as f:
        json.dump(data, f)
    _build_fails("coco2014", root, tmp_path, "instances_val2014.json")


def test_error_nuswide_class_list_mismatch(copy_tree, tmp_path):
    root, _ = copy_tree("nuswide")
    path = os.path.join(root, "formatted_val_labels.npy")
    np.save(path, np.load(path)[:, :80])
    _build_fails("nuswide", root, tmp_path, "formatted_val_labels.npy")


def test_error_nuswide_concept_list_mismatch(copy_tree, tmp_path):
    root, _ = copy_tree("nuswide")
    with open(os.path.join(root, "Concepts81.txt"), "w") as f:
        f.write("\n".join(f"c{i}" for i in range(80)) + "\n")
    _build_fails("nuswide", root, tmp_path, "formatted_train_labels.npy")


def test_error_cub_attribute_names_mismatch(copy_tree, tmp_path):
    root, _ = copy_tree("cub200")
    path = os.path.join(root, "attributes.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    _build_fails("cub200", root, tmp_path, "attributes.txt")


def test_error_cub_incomplete_attribute_labels(copy_tree, tmp_path):
    root, _ = copy_tree("cub200")
    path = os.path.join(root, "CUB_200_2011", "attributes", "image_attribute_labels.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    _build_fails("cub200", root, tmp_path, "image_attribute_labels.txt")


def test_error_missing_root(tmp_path):
    with pytest.raises(ValueError, match="does_not_exist"):
        build_dataset("voc2012", root=str(tmp_path / "does_not_exist"), cache_dir=str(tmp_path / "cache"))


# ------------------------------------------------------------------------------ raw readers, direct
def test_voc_accepts_voc2012_folder_as_root(trees, tmp_path):
    root, expected = trees["voc2012"]
    ds = build_dataset("voc2012", root=os.path.join(root, "VOCdevkit", "VOC2012"), cache_dir=str(tmp_path))
    assert len(ds["test"]) == len(expected.positives["test"])


def test_nuswide_byte_paths_with_flickr_prefix_and_builtin_concepts(tmp_path):
    root = str(tmp_path / "raw")
    expected = write_nus_tree(root, num_train=6, num_val=3, write_concepts=False)
    path = os.path.join(root, "formatted_val_images.npy")
    np.save(path, np.array([b"Flickr/" + p.encode() for p in np.load(path).tolist()]))
    split = read_nuswide_split(root, "formatted_val")
    assert split.class_names == NUSWIDE_CONCEPTS81
    assert split.images == list(expected.positives["test"])
    assert len(NUSWIDE_CONCEPTS81) == 81 and NUSWIDE_CONCEPTS81 == sorted(NUSWIDE_CONCEPTS81)


def test_cub_attributes_file_inside_archive_folder(tmp_path):
    root = str(tmp_path / "raw")
    expected = write_cub_tree(root, num_images=12, attributes_at_top=False)
    test = read_cub200(root)["test"]
    assert test.class_names == expected.class_names
    got = {p: {test.class_names[c] for c in row} for p, row in zip(test.images, test.labels)}
    assert got == expected.positives["test"]


@pytest.mark.parametrize("extra", ["", " 0 0"])
def test_cub_label_lines_read_first_three_fields(tmp_path, extra):
    path = tmp_path / "image_attribute_labels.txt"
    path.write_text(f"1 1 0 3 27.7080\n1 2 1 4 3.1{extra}\n2 1 1 1 0.5\n2 2 0 2 11.25\n")
    table = read_cub_image_attribute_labels(str(path))
    assert sorted(table.tolist()) == [[1, 1, 0], [1, 2, 1], [2, 1, 1], [2, 2, 0]]


@pytest.mark.parametrize("line", ["1 2", "1 x 1 3 2.0", "1 2 x"])
def test_cub_label_lines_malformed(tmp_path, line):
    path = tmp_path / "image_attribute_labels.txt"
    path.write_text(f"1 1 0 3 27.7080\n{line}\n")
    with pytest.raises(ValueError, match="image_attribute_labels.txt"):
        read_cub_image_attribute_labels(str(path))


def test_coco_label_matrix_by_hand():
    annotations = {
        "categories": [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}],
        "images": [{"id": 10, "file_name": "x10.jpg"}, {"id": 9, "file_name": "x9.jpg"},
                   {"id": 100, "file_name": "x100.jpg"}, {"id": 2, "file_name": "x2.jpg"}],
        "annotations": [{"image_id": 9, "category_id": 4}, {"image_id": 10, "category_id": 9},
                        {"image_id": 10, "category_id": 4}, {"image_id": 9, "category_id": 4},
                        {"image_id": 2, "category_id": 9}],
    }
    names, ids, files, labels = coco_label_matrix(annotations)
    assert names == ["b", "a"] and ids.tolist() == [9, 4]
    # rows in string order of the image id: "10" < "100" < "2" < "9"; 100 has no annotation
    assert files == ["x10.jpg", "x100.jpg", "x2.jpg", "x9.jpg"]
    assert labels.tolist() == [[1, 1], [0, 0], [1, 0], [0, 1]]


@pytest.mark.parametrize("indent", [None, 2])
def test_coco_columns_single_line_and_pretty_printed(tmp_path, indent):
    # one line: read by pyarrow, skipping the polygons (one is an RLE dict, as crowd annotations are);
    # several lines: read by the json module; both give the same columns
    data = {"info": {"description": "x"}, "images": [{"id": 3, "file_name": "3.jpg", "width": 4}],
            "annotations": [{"segmentation": [[0.5, 1.0, 2.0]], "image_id": 3, "category_id": 8, "id": 1},
                            {"segmentation": {"counts": [1, 2], "size": [4, 4]}, "image_id": 3, "category_id": 2,
                             "iscrowd": 1, "id": 2}],
            "categories": [{"id": 2, "name": "b", "supercategory": "s"}, {"id": 8, "name": "a"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data, indent=indent))
    columns = read_coco_columns(str(path))
    assert columns.category_names == ["b", "a"] and columns.category_ids.tolist() == [2, 8]
    assert columns.image_ids.tolist() == [3] and columns.file_names.tolist() == ["3.jpg"]
    assert columns.ann_image_ids.tolist() == [3, 3] and columns.ann_category_ids.tolist() == [8, 2]


def test_coco_columns_missing_field(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 3, "file_name": "3.jpg"}], "categories": [{"id": 1, "name": "a"}],
                                "annotations": [{"image_id": 3}]}))
    with pytest.raises(ValueError, match="instances.json.*category_id"):
        read_coco_columns(str(path))


def test_coco_label_matrix_rejects_unknown_ids():
    base = {"categories": [{"id": 1, "name": "a"}], "images": [{"id": 5, "file_name": "5.jpg"}]}
    with pytest.raises(ValueError, match="category_id 3"):
        coco_label_matrix({**base, "annotations": [{"image_id": 5, "category_id": 3}]}, "inst.json")
    with pytest.raises(ValueError, match="image_id 6"):
        coco_label_matrix({**base, "annotations": [{"image_id": 6, "category_id": 1}]}, "inst.json")


def test_find_missing_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    paths = [str(tmp_path / "a" / "y.jpg"), str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")]
    assert find_missing_files(paths) == [paths[0], paths[2]]


@pytest.mark.parametrize("name, dropped", [("voc2012", True), ("cub200", False)])
def test_card_states_how_rows_without_positive_were_handled(trees, tmp_path, name, dropped):
    from spl_losses.data.builder import create_builder
    from spl_losses.data.card import make_dataset_card

    builder = create_builder(name, root=trees[name][0], cache_dir=str(tmp_path))
    builder.download_and_prepare()
    report = builder.build_report
    assert report["drop_without_positive"] is dropped
    text = str(make_dataset_card(builder.as_dataset(), name=name, report=report))
    assert ("without any positive label are dropped" in text) is dropped
    assert ("without any positive label are kept" in text) is not dropped
