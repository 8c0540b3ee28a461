"""Hostile or broken inputs to the data builders and the data command line.

One rule: every input is checked where it enters, before any work, with a message naming the
file, row or flag; nothing read can smuggle another file into a dataset. Symbolic links may not lead
out of the folder (tests/test_hostile_data_round2.py); images kept elsewhere are listed by absolute path. One test per case, then the general rule over several spellings.

| case | before | after |
|---|---|---|
| listing row ``../../../../etc/passwd,cat`` | the file was listed, and Parquet export embedded it | refused: listing, row and the path that leaves the folder |
| listing row with an absolute path to a non-image | embedded | refused as not an image (absolute rows are always verified by default) |
| listed ``.png`` that is a text file | written, failed later at decoding | refused naming file and listing (``verify_images``) |
| ``verify_images=False`` | (no option) | files are not opened; escaping paths still refused |
| split above the automatic verification limit | (no option) | relative rows not opened, absolute rows still verified |
| symlink inside the folder to a non-image outside | embedded | refused: its real path leaves the folder (round 2) |
| empty path, NUL byte, non-string JSON path | joined to the folder / TypeError traceback | refused naming the row / line |
| listing not UTF-8 | UnicodeDecodeError traceback | refused naming the file |
| CSV row missing its labels field | AttributeError traceback | refused naming the row |
| COCO ``file_name`` leaving ``train2014/`` | read outside the tree | refused naming the image id and annotation file |
| VOC image id ``../../x`` | read outside the tree | refused naming the id and the class list files |
| NUS-WIDE formatted path leaving ``Flickr/`` | read outside the tree | refused naming the row and the .npy file |
| CUB ``images.txt`` path leaving ``images/`` | read outside the tree | refused naming the image id and images.txt |
| ``multilabel_features`` NaN / inf feature | written into the dataset | refused naming the row, column and file |
| ``multilabel_features`` complex features | written as garbage | refused naming the dtype and file |
| bad option values (``verify_images=yes``, ``test_fraction`` without ``listing``) | accepted or odd failures | refused naming the option |
| CLI ``--dataset-option`` the builder does not have, or one with its own flag (``seed``) | TypeError from deep inside | ``error:`` naming the option and the builder's options / the flag |
| CLI ``--output`` that cannot be created | traceback after the whole build | ``error:`` and exit 2 before the build |
| CLI ``--push-to-hub`` without a token | the build ran, then the push failed | ``error:`` and exit 2 before the build |
| CLI ``--push-to-hub`` with the Hub unreachable | the build ran, then the push failed | ``error:`` and exit 2 before the build |
| CLI unexpected failure inside the build | raw traceback | ``error: <Type>: ...`` and exit 2 |
| CLI ``--private`` | (untested) | the Hub repository is created private |
"""
import json
import os

import datasets
import numpy as np
import pytest
from PIL import Image

import spl_losses.data.image_checks as image_checks
from raw_trees import (GOOD_ROWS, listing_writer, write_coco_tree, write_cub_tree, write_listing_images,
                       write_nus_tree, write_voc_tree)
from spl_losses.data import build_dataset
from spl_losses.data.__main__ import main

datasets.disable_progress_bars()


def _image(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (value, 0, 0)).save(path)


@pytest.fixture
def listing_dir(tmp_path):
    """A folder with images and a helper writing a listing of (path, labels) rows into it."""
    root = tmp_path / "data"
    write_listing_images(root)
    return root, listing_writer(root)


def _build_listing(path, tmp_path, **options):
    return build_dataset("multilabel_files", listing=path, cache_dir=str(tmp_path / "cache"), **options)


def _no_arrow_written(tmp_path):
    return [f for _, _, files in os.walk(tmp_path / "cache") for f in files if f.endswith(".arrow")] == []


# ------------------------------------------------------------------------------------- listings
def test_listing_row_escaping_the_folder(listing_dir, tmp_path):
    root, write = listing_dir
    path = write(GOOD_ROWS + [("../../../../etc/passwd", "cat")])
    with pytest.raises(ValueError, match=r"all\.csv, row 7: the image path '\.\./\.\./\.\./\.\./etc/passwd' leaves "
                                         r"the folder .*data"):
        _build_listing(path, tmp_path)
    assert _no_arrow_written(tmp_path)


def test_absolute_path_to_a_non_image_is_refused(listing_dir, tmp_path):
    root, write = listing_dir
    secret = tmp_path / "secret.txt"
    secret.write_text("password=1234\n")
    with pytest.raises(ValueError, match=r"secret\.txt \(listed in .*all\.csv\) is not a readable image"):
        _build_listing(write(GOOD_ROWS + [(str(secret), "dog")]), tmp_path)


def test_absolute_path_to_an_image_is_accepted(listing_dir, tmp_path):
    root, write = listing_dir
    _image(str(tmp_path / "elsewhere" / "x.png"), 99)
    ds = _build_listing(write(GOOD_ROWS + [(str(tmp_path / "elsewhere" / "x.png"), "dog")]), tmp_path)
    assert sum(len(ds[s]) for s in ds) == 7


def test_listed_file_that_is_not_an_image(listing_dir, tmp_path):
    root, write = listing_dir
    (root / "img" / "fake.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"fake\.png \(listed in .*all\.csv\) is not a readable image.*verify_images"):
        _build_listing(write(GOOD_ROWS + [("img/fake.png", "dog")]), tmp_path)


def test_verify_images_false_skips_decoding_but_not_the_path_rule(listing_dir, tmp_path):
    root, write = listing_dir
    (root / "img" / "fake.png").write_text("not an image")
    ds = _build_listing(write(GOOD_ROWS + [("img/fake.png", "dog")]), tmp_path, verify_images=False)
    assert sum(len(ds[s]) for s in ds) == 7
    with pytest.raises(ValueError, match="leaves the folder"):
        _build_listing(write(GOOD_ROWS + [("img/../../x.png", "dog")]), tmp_path / "b", verify_images=False)


def test_automatic_verification_above_the_limit_still_opens_absolute_rows(listing_dir, tmp_path, monkeypatch):
    root, write = listing_dir
    monkeypatch.setattr(image_checks, "VERIFY_AUTO_LIMIT", 2)
    (root / "img" / "fake.png").write_text("not an image")
    ds = _build_listing(write(GOOD_ROWS + [("img/fake.png", "dog")]), tmp_path)  # relative: not opened
    assert sum(len(ds[s]) for s in ds) == 7
    with pytest.raises(ValueError, match="is not a readable image"):
        _build_listing(write(GOOD_ROWS + [(str(root / "img" / "fake.png"), "dog")]), tmp_path / "b")


def test_symlink_to_a_non_image_outside_the_folder(listing_dir, tmp_path):
    root, write = listing_dir
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", root / "img" / "link.png")
    with pytest.raises(ValueError, match=r"'img/link\.png' is a symbolic link.*leaves the folder"):  # issue 22
        _build_listing(write(GOOD_ROWS + [("img/link.png", "dog")]), tmp_path)


@pytest.mark.parametrize("row, match", [
    ((" ", "cat"), "row 7: the image path must be a non-empty string"),
    (("img/a\x00.png", "cat"), "row 7: .*(NUL|not a readable CSV)"),
])
def test_empty_or_nul_paths(listing_dir, tmp_path, row, match):
    root, write = listing_dir
    with pytest.raises(ValueError, match=match):
        _build_listing(write(GOOD_ROWS + [row]), tmp_path)


def test_json_line_with_a_non_string_path(listing_dir, tmp_path):
    root, _ = listing_dir
    path = root / "all.jsonl"
    path.write_text(json.dumps({"path": "img/0.png", "labels": ["cat"]}) + "\n\n"
                    + json.dumps({"path": 5, "labels": []}))
    with pytest.raises(ValueError, match=r"all\.jsonl, line 3: the image path must be a non-empty string, got 5"):
        _build_listing(str(path), tmp_path)


def test_listing_that_is_not_utf8(listing_dir, tmp_path):
    root, _ = listing_dir
    (root / "all.csv").write_bytes(b"path,labels\nimg/0.png,caf\xe9\n")
    with pytest.raises(ValueError, match=r"all\.csv: not a UTF-8 text listing"):
        _build_listing(str(root / "all.csv"), tmp_path)


def test_csv_row_without_its_labels_field(listing_dir, tmp_path):
    root, _ = listing_dir
    (root / "all.csv").write_text("path,labels\nimg/0.png,cat\nimg/1.png\n")
    with pytest.raises(ValueError, match=r"all\.csv, row 2: expected the fields 'path' and 'labels'"):
        _build_listing(str(root / "all.csv"), tmp_path)


# ----------------------------------------------------------------------------------- benchmarks
def _json_edit(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_coco_file_name_escaping_the_image_folder(tmp_path):
    root = str(tmp_path / "raw")
    write_coco_tree(root)
    annotations = os.path.join(root, "annotations", "instances_val2014.json")
    image_id = json.load(open(annotations))["images"][0]["id"]
    _json_edit(annotations, lambda d: d["images"][0].update(file_name="../../../../etc/passwd"))
    with pytest.raises(ValueError, match=rf"instances_val2014\.json, image id {image_id}: the image path "
                                         r"'\.\./\.\./\.\./\.\./etc/passwd' leaves the folder .*val2014"):
        build_dataset("coco2014", root=root, cache_dir=str(tmp_path / "cache"))


def test_voc_image_id_escaping_the_image_folder(tmp_path):
    root = str(tmp_path / "raw")
    write_voc_tree(root)
    main_dir = os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Main")
    for name in os.listdir(main_dir):
        if name.endswith("_train.txt"):
            with open(os.path.join(main_dir, name), "a") as f:
                f.write("../../../x  1\n")
    with pytest.raises(ValueError,
                       match=r"\*_train\.txt, image id '\.\./\.\./\.\./x': .* leaves the folder .*JPEGImages"):
        build_dataset("voc2012", root=root, cache_dir=str(tmp_path / "cache"))


def test_nuswide_path_escaping_flickr(tmp_path):
    root = str(tmp_path / "raw")
    write_nus_tree(root)
    path = os.path.join(root, "formatted_train_images.npy")
    images = np.load(path)
    images[4] = "../outside.jpg"
    np.save(path, images)
    with pytest.raises(ValueError, match=r"formatted_train_images\.npy, row 5: the image path '\.\./outside\.jpg' "
                                         r"leaves the folder .*Flickr"):
        build_dataset("nuswide", root=root, cache_dir=str(tmp_path / "cache"))


def test_cub_path_escaping_the_image_folder(tmp_path):
    root = str(tmp_path / "raw")
    write_cub_tree(root)
    path = os.path.join(root, "CUB_200_2011", "images.txt")
    lines = open(path).read().splitlines()
    lines[2] = "3 ../../../../etc/passwd"
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"images\.txt, image id 3: the image path .* leaves the folder"):
        build_dataset("cub200", root=root, cache_dir=str(tmp_path / "cache"))


# -------------------------------------------------------------------------------------- features
def _features_tree(root, features):
    os.makedirs(root, exist_ok=True)
    np.save(os.path.join(root, "train_features.npy"), features)
    labels = np.eye(len(features), 3, dtype=np.int64) + np.eye(len(features), 3, -3, dtype=np.int64)
    np.save(os.path.join(root, "train_labels.npy"), labels)
    np.save(os.path.join(root, "test_features.npy"), np.ones((2, features.shape[1]), dtype=np.float32))
    np.save(os.path.join(root, "test_labels.npy"), np.eye(2, 3, dtype=np.int64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_features_nan_or_inf(tmp_path, bad):
    features = np.zeros((6, 4), dtype=np.float32)
    features[3, 2] = bad
    _features_tree(str(tmp_path / "f"), features)
    with pytest.raises(ValueError, match=r"train_features\.npy, row 3, column 2: features must be finite numbers"):
        build_dataset("multilabel_features", root=str(tmp_path / "f"), cache_dir=str(tmp_path / "cache"))


def test_features_of_a_non_real_dtype(tmp_path):
    _features_tree(str(tmp_path / "f"), np.zeros((6, 4), dtype=np.complex64))
    with pytest.raises(ValueError, match=r"train_features\.npy: features must be real numbers, got dtype complex64"):
        build_dataset("multilabel_features", root=str(tmp_path / "f"), cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("options, match", [
    ({"verify_images": "yes"}, "verify_images must be true, false or null"),
    ({"test_fraction": 0.3}, "test_fraction=0.3 carves the test set out of listing"),
    ({"sampling_rng": "mt"}, "sampling_rng='mt' is not available"),
])
def test_bad_option_values_are_named(listing_dir, tmp_path, options, match):
    root, write = listing_dir
    write(GOOD_ROWS, "train.csv")
    write(GOOD_ROWS, "test.csv")
    with pytest.raises(ValueError, match=match):
        build_dataset("multilabel_files", root=str(root), cache_dir=str(tmp_path / "cache"), **options)


# ------------------------------------------------------------------------------------ command line
def test_cli_output_that_cannot_be_created(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["build", "digits_mosaic", "--output", str(tmp_path / "a_file" / "out"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "error: --output" in capsys.readouterr().err and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("option, message", [
    ("colour=red", "error: --dataset-option: dataset 'digits_mosaic' has no option 'colour'; its options: "),
    ("seed=3", "error: --dataset-option seed=...: give it as --seed"),
])
def test_cli_unknown_or_reserved_dataset_option(tmp_path, capsys, option, message):
    assert main(["build", "digits_mosaic", "--output", str(tmp_path / "out"), "--dataset-option", option]) == 2
    assert capsys.readouterr().err.startswith(message) and not (tmp_path / "out").exists()


def test_cli_push_without_token_fails_before_the_build(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["build", "digits_mosaic", "--push-to-hub", "org/x", "--output", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token to push the dataset 'org/x'")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_cli_push_with_the_hub_unreachable_fails_before_the_build(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    assert main(["build", "digits_mosaic", "--push-to-hub", "org/x", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "error: could not reach the Hub at" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_cli_unexpected_failure_prints_error_not_traceback(tmp_path, capsys, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("spl_losses.data.__main__.create_builder", explode)
    assert main(["build", "digits_mosaic", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "error: RuntimeError: disk on fire\n"
    assert not (tmp_path / "out").exists()  # the empty output folder it had created is removed


def test_cli_private_reaches_the_hub(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo_id, **kw: calls.update(kw))
    monkeypatch.setattr("huggingface_hub.DatasetCard.push_to_hub", lambda self, repo_id, **kw: None)
    monkeypatch.setattr("huggingface_hub.DatasetCard.load", classmethod(lambda cls, repo_id, **kw: cls("---\n---\n")))
    assert main(["build", "digits_mosaic", "--push-to-hub", "org/x", "--private", "--cache-dir", str(tmp_path / "c"),
                 "--dataset-option", "num_train=8", "--dataset-option", "num_validation=4",
                 "--dataset-option", "num_test=4"]) == 0
    assert calls["private"] is True


# --------------------------------------------------------------------------------- the general rule
@pytest.mark.parametrize("spelling", ["../x.png", "img/../../x.png", "./../x.png", "img/./../../x.png",
                                      "img//..//..//x.png", "..", "img/../.."])
def test_no_spelling_leaves_the_folder(tmp_path, spelling):
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(ValueError, match="leaves the folder"):
        image_checks.join_inside(str(folder), [spelling], "listing.csv")


@pytest.mark.parametrize("spelling", ["img/../x.png", "a/b/../../x.png", "x..png", "..x.png", "./x.png"])
def test_spellings_that_stay_inside_are_accepted(tmp_path, spelling):
    folder = str(tmp_path / "data")
    path = image_checks.join_inside(folder, [spelling], "listing.csv")[0]
    assert path.startswith(folder + os.sep) and ".." not in path.split(os.sep)
