"""The generic builders multilabel_files / multilabel_features, and the shared SPMLBuilder protocol."""
import json
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from spl_losses.data import build_dataset, get_dataset_info, list_datasets


def _write_images(folder, names):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (4, 4), (i * 20 % 256, 0, 0)).save(os.path.join(folder, name))


def _write_csv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("path,labels\n")
        for p, labels in rows:
            f.write(f"{p},{labels}\n")


@pytest.fixture
def csv_tree(tmp_path):
    root = tmp_path / "raw"
    train = [(f"img/tr{i}.png", ["cat", "dog|cat", "bird", "dog", "traffic light|bird"][i % 5]) for i in range(10)]
    train.append(("img/tr_empty.png", ""))  # no positive: dropped and counted
    test = [(f"img/te{i}.png", ["dog", "cat|bird"][i % 2]) for i in range(4)]
    _write_images(root / "img", [os.path.basename(p) for p, _ in train + test])
    _write_csv(root / "train.csv", train)
    _write_csv(root / "test.csv", test)
    return root


def test_registry_lists_generic_and_demo():
    names = list_datasets()
    assert {"multilabel_files", "multilabel_features", "digits_mosaic"} <= set(names)
    assert get_dataset_info("multilabel_files").expected_num_pos is None


def test_csv_builder_columns_classes_and_splits(csv_tree, tmp_path):
    ds = build_dataset("multilabel_files", root=csv_tree, cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train", "validation", "test"]
    names = ds["train"].features["labels"].feature.names
    assert names == ["bird", "cat", "dog", "traffic light"]  # sorted union of the listings
    assert ds["train"].features["observed_labels"].feature.names == names
    # 10 labelled train rows (1 dropped): validation = round(0.2 * 10) = 2
    assert (len(ds["train"]), len(ds["validation"]), len(ds["test"])) == (8, 2, 4)
    for split in ds:
        assert set(ds[split].column_names) == {"image", "labels", "observed_labels", "index"}
        assert list(ds[split]["index"]) == list(range(len(ds[split])))
    for split in ("train", "validation"):
        for labels, observed in zip(ds[split]["labels"], ds[split]["observed_labels"]):
            assert len(observed) == 1 and observed[0] in labels
    # test rows keep their listing order: te0 dog, te1 cat|bird, ...
    assert list(ds["test"]["labels"]) == [[2], [0, 1], [2], [0, 1]]
    assert ds["test"][0]["image"].mode == "RGB"


def test_csv_builder_report_counts_dropped_rows(csv_tree, tmp_path):
    from spl_losses.data import create_builder

    builder = create_builder("multilabel_files", root=csv_tree, cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    report = builder.build_report
    assert report["splits"]["train"]["dropped_without_positive"] == 1
    assert report["splits"]["test"]["dropped_without_positive"] == 0
    assert report["seed"] == 1200 and report["num_classes"] == 4


def test_jsonl_with_class_names_and_validation_file(tmp_path):
    root = tmp_path / "raw"
    _write_images(root, [f"{s}{i}.png" for s in ("a", "b", "c") for i in range(3)])
    for split, prefix in (("train", "a"), ("validation", "b"), ("test", "c")):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(3):
                f.write(json.dumps({"path": f"{prefix}{i}.png", "labels": ["y", "x"][: i % 2 + 1]}) + "\n")
    ds = build_dataset("multilabel_files", root=root, class_names=("y", "x", "z"), cache_dir=str(tmp_path / "c"))
    assert ds["train"].features["labels"].feature.names == ["y", "x", "z"]
    assert [len(ds[s]) for s in ds] == [3, 3, 3]  # the validation listing is used as is
    assert list(ds["validation"]["labels"]) == [[0], [0, 1], [0]]


def test_unknown_class_name_names_file_and_row(csv_tree, tmp_path):
    with pytest.raises(ValueError, match=r"train\.csv, row 2: unknown class name"):
        build_dataset("multilabel_files", root=csv_tree, class_names=("cat", "bird", "traffic light"),
                      cache_dir=str(tmp_path / "c"))


def test_missing_image_is_named(csv_tree, tmp_path):
    os.remove(csv_tree / "img" / "te3.png")
    with pytest.raises(ValueError, match=r"missing, first: .*te3\.png"):
        build_dataset("multilabel_files", root=csv_tree, cache_dir=str(tmp_path / "c"))


def test_missing_listing_and_root_are_named(csv_tree, tmp_path):
    os.remove(csv_tree / "test.csv")
    with pytest.raises(ValueError, match="missing test listing"):
        build_dataset("multilabel_files", root=csv_tree, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset("multilabel_files", root=tmp_path / "nowhere", cache_dir=str(tmp_path / "c"))


def _feature_tree(root, num_classes_test=3):
    rng = np.random.RandomState(0)
    os.makedirs(root, exist_ok=True)
    train_labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0], [0, 0, 1]] * 2, dtype=np.int64)
    test_labels = np.eye(3, num_classes_test, dtype=np.int64)
    np.save(root / "train_features.npy", rng.randn(10, 6).astype(np.float32))
    np.save(root / "train_labels.npy", train_labels)
    np.save(root / "test_features.npy", rng.randn(3, 6).astype(np.float32))
    np.save(root / "test_labels.npy", test_labels)
    return train_labels


def test_features_builder_rows_match_source(tmp_path):
    root = tmp_path / "feat"
    train_labels = _feature_tree(root)
    ds = build_dataset("multilabel_features", root=root, seed=5, cache_dir=str(tmp_path / "c"))
    assert ds["train"].features["labels"].feature.names == ["0", "1", "2"]
    assert set(ds["train"].column_names) == {"features", "labels", "observed_labels", "index"}
    # test: no row dropped, same order as the file
    np.testing.assert_array_equal(np.array(ds["test"]["features"], dtype=np.float32), np.load(root / "test_features.npy"))
    assert list(ds["test"]["labels"]) == [[0], [1], [2]]
    # train + validation: the 8 rows with a positive, each with its own labels
    source_x = np.load(root / "train_features.npy")
    seen = []
    for split in ("train", "validation"):
        for x, labels, observed in zip(ds[split]["features"], ds[split]["labels"], ds[split]["observed_labels"]):
            row = int(np.flatnonzero(np.all(np.isclose(source_x, np.array(x, dtype=np.float32)), axis=1))[0])
            assert labels == np.flatnonzero(train_labels[row]).tolist()
            assert len(observed) == 1 and observed[0] in labels
            seen.append(row)
    assert sorted(seen) == [0, 1, 2, 4, 5, 6, 7, 9]


def test_features_class_list_mismatch_names_file(tmp_path):
    root = tmp_path / "feat"
    _feature_tree(root, num_classes_test=4)
    with pytest.raises(ValueError, match=r"class list mismatch: .*test_labels\.npy"):
        build_dataset("multilabel_features", root=root, cache_dir=str(tmp_path / "c"))


def test_cache_never_mixes_seeds(tmp_path):
    root = tmp_path / "feat"
    _feature_tree(root)
    cache = str(tmp_path / "c")
    observed = {}
    for seed in (1, 2, 1):
        ds = build_dataset("multilabel_features", root=root, seed=seed, cache_dir=cache)
        observed.setdefault(seed, []).append(list(ds["train"]["observed_labels"]) + list(ds["validation"]["observed_labels"]))
    assert observed[1][0] == observed[1][1]
    assert observed[1][0] != observed[2][0]


def test_observed_negatives_column(tmp_path):
    root = tmp_path / "feat"
    train_labels = _feature_tree(root)
    ds = build_dataset("multilabel_features", root=root, num_negatives=1, cache_dir=str(tmp_path / "c"))
    for labels, negatives in zip(ds["train"]["labels"], ds["train"]["observed_negatives"]):
        expected = 0 if len(labels) == 3 else 1  # a row with all classes positive has no negative
        assert len(negatives) == expected and not set(negatives) & set(labels)


def test_cache_is_keyed_by_root_and_reused_with_its_report(tmp_path):
    from spl_losses.data import create_builder

    root_a, root_b = tmp_path / "a", tmp_path / "b"
    _feature_tree(root_a)
    _feature_tree(root_b)
    np.save(root_b / "test_labels.npy", np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]))
    cache = str(tmp_path / "c")
    a = build_dataset("multilabel_features", root=root_a, cache_dir=cache)
    b = build_dataset("multilabel_features", root=root_b, cache_dir=cache)
    assert list(a["test"]["labels"]) == [[0], [1], [2]] and list(b["test"]["labels"]) == [[2], [1], [0]]
    # same root, parameters and files: the cached build and its report are reused
    again = create_builder("multilabel_features", root=root_a, cache_dir=cache)
    assert again.build_report["splits"]["test"]["num_examples"] == 3  # read back from the cache folder
    assert list(again.as_dataset()["test"]["labels"]) == [[0], [1], [2]]
    # a file changed in place is a new build (issue 22: a stale build was reused)
    np.save(root_a / "test_labels.npy", np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]]))
    assert not create_builder("multilabel_features", root=root_a, cache_dir=cache).build_report
    assert list(build_dataset("multilabel_features", root=root_a, cache_dir=cache)["test"]["labels"]) == \
        [[0, 1], [1], [0]]
    forced = build_dataset("multilabel_features", root=root_a, cache_dir=cache, force_rebuild=True)
    assert list(forced["test"]["labels"]) == [[0, 1], [1], [0]]


# ------------------------------------------------------------------------------- one listing of all images
def _all_listing(root, n=20):
    rows = [(f"img/{i:02d}.png", ["cat", "dog|cat", "bird"][i % 3] if i != 7 else "") for i in range(n)]
    _write_images(root / "img", [os.path.basename(p) for p, _ in rows])
    _write_csv(root / "all.csv", rows)
    return rows


def test_single_listing_carves_test_then_validation(tmp_path):
    from test_sampling import _key_py

    root = tmp_path / "raw"
    rows = _all_listing(root)
    ds = build_dataset("multilabel_files", root=root, listing="all.csv", test_fraction=0.25,
                       cache_dir=str(tmp_path / "c"))
    # test: the 5 listing rows with the smallest keys of the test salt ("TES") for split_seed 1200, in listing order
    test_rows = sorted(sorted(range(20), key=lambda r: _key_py(1200, 0x544553, r, 0))[:5])
    paths = lambda split: [os.path.basename(p["path"]) for p in  # noqa: E731
                           ds[split].cast_column("image", datasets.Image(decode=False))["image"]]
    assert paths("test") == [os.path.basename(rows[r][0]) for r in test_rows if r != 7]
    # the other 15 rows, less row 7 (no label), are split 80/20 into train and validation
    rest = [os.path.basename(rows[r][0]) for r in range(20) if r not in test_rows and r != 7]
    assert sorted(paths("train") + paths("validation")) == rest
    assert len(ds["validation"]) == round(0.2 * len(rest))


def test_single_listing_options_are_checked(tmp_path):
    root = tmp_path / "raw"
    _all_listing(root)
    with pytest.raises(ValueError, match=r"listing='.*all.csv' replaces the per-split listings; drop \['test_file'\]"):
        build_dataset("multilabel_files", root=root, listing="all.csv", test_file="all.csv",
                      cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        build_dataset("multilabel_files", root=root, listing="all.csv", test_fraction=1.0,
                      cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="missing listing"):
        build_dataset("multilabel_files", root=root, listing="nothing.csv", cache_dir=str(tmp_path / "c"))


def test_single_listing_without_root_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    _all_listing(root)
    monkeypatch.chdir(tmp_path)
    ds = build_dataset("multilabel_files", listing="raw/all.csv", cache_dir=str(tmp_path / "c"))
    assert sum(len(ds[s]) for s in ds) == 19
    monkeypatch.chdir(root)  # the same relative string from elsewhere names another file: not the cached build
    with pytest.raises(ValueError, match="missing listing"):
        build_dataset("multilabel_files", listing="raw/all.csv", cache_dir=str(tmp_path / "c"))
