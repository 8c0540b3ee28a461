"""Hostile or careless data, round 2 (issue 22): symlinks leaving the folder, stale builds, files changed in
place, images listed twice, decompression bombs, 16-bit images, feature values and widths, a full disk.

| case (issue item) | before | after |
|---|---|---|
| symlink (file or folder) leading out of the folder, split above the verification limit (2) | the target's bytes embedded | refused naming the row, path and target, whatever the split size |
| symlink inside the folder to a non-image, above the limit (2) | not opened, embedded | verified (every link or absolute row is) |
| listing / classes file / default listing under root changed in place (3) | the stale build reused | a new build; a reused build is said on stderr; ``force_rebuild=True`` |
| image rewritten in place (6) | same split fingerprint | another fingerprint (size + mtime_ns per referenced file) |
| image listed twice, in one listing or in train and test (7) | kept twice | refused naming both rows |
| decompression bomb (9) | raw ``DecompressionBombError`` | ``ImageDecodeError`` (a ValueError) from ``open_rgb`` |
| 16-bit grayscale PNG, EXIF orientation (14) | clipped to white; orientation ignored in training | scaled to 8 bits; orientation applied, as ``datasets`` does |
| float64 features beyond float32's range, widths differing per split (15) | infinite after the cast; an error inside ``datasets`` | refused naming row, column and file / both files |
| ``spl-data build`` on a full disk (13) | ``error: DatasetGenerationError`` only | the cause, errno name, file and a hint on one line |
"""
import os

import datasets
import pytest
from PIL import Image

from raw_trees import GOOD_ROWS, listing_writer, write_listing_images

import spl_losses.data.image_checks as image_checks
from spl_losses.data import build_dataset

datasets.disable_progress_bars()


def _image(path, value=0, size=(4, 4)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (value, 0, 0)).save(path)


@pytest.fixture
def listing_dir(tmp_path):
    """A folder with images and a helper writing a listing of (path, labels) rows into it."""
    root = tmp_path / "data"
    write_listing_images(root)
    return root, listing_writer(root)


def _build(path, tmp_path, **options):
    return build_dataset("multilabel_files", listing=path, cache_dir=str(tmp_path / "cache"), **options)


# ----------------------------------------------------------------------------------- item 2: symlinks
@pytest.fixture
def above_the_limit(monkeypatch):
    """Every split counts as large: images are not verified by default (as above 20,000 rows)."""
    monkeypatch.setattr(image_checks, "VERIFY_AUTO_LIMIT", 1)


def test_symlink_to_a_file_outside_is_refused_above_the_limit(listing_dir, tmp_path, above_the_limit):
    root, write = listing_dir
    (tmp_path / "token.txt").write_text("hf_secret_token")
    os.symlink(tmp_path / "token.txt", root / "img" / "link.png")
    with pytest.raises(ValueError, match=r"all\.csv, row 7: the image path 'img/link\.png' is a symbolic link.*"
                                         r"token\.txt.*leaves the folder"):
        _build(write(GOOD_ROWS + [("img/link.png", "dog")]), tmp_path)


def test_symlink_to_an_image_outside_is_refused_too(listing_dir, tmp_path, above_the_limit):
    root, write = listing_dir
    _image(str(tmp_path / "elsewhere" / "x.png"), 7)
    os.symlink(tmp_path / "elsewhere" / "x.png", root / "img" / "link.png")
    with pytest.raises(ValueError, match="leaves the folder"):
        _build(write(GOOD_ROWS + [("img/link.png", "dog")]), tmp_path, verify_images=False)


def test_linked_folder_leading_outside_is_refused(listing_dir, tmp_path, above_the_limit):
    root, write = listing_dir
    _image(str(tmp_path / "elsewhere" / "x.png"), 7)
    os.symlink(tmp_path / "elsewhere", root / "linked")
    with pytest.raises(ValueError, match=r"row 7: .*'linked/x\.png'.*leaves the folder"):
        _build(write(GOOD_ROWS + [("linked/x.png", "dog")]), tmp_path)


def test_symlink_inside_the_folder_is_verified_above_the_limit(listing_dir, tmp_path, above_the_limit):
    root, write = listing_dir
    (root / "notes.txt").write_text("not an image")
    os.symlink(root / "notes.txt", root / "img" / "link.png")
    with pytest.raises(ValueError, match=r"link\.png \(listed in .*all\.csv\) is not a readable image"):
        _build(write(GOOD_ROWS + [("img/link.png", "dog")]), tmp_path)
    os.remove(root / "img" / "link.png")
    os.symlink(root / "img" / "0.png", root / "img" / "link.png")  # a link to an image inside: fine
    ds = _build(write(GOOD_ROWS + [("img/link.png", "dog")]), tmp_path / "b")
    assert sum(len(ds[s]) for s in ds) == 7


def test_dataset_folder_that_is_itself_a_link_is_accepted(listing_dir, tmp_path, above_the_limit):
    root, write = listing_dir
    write(GOOD_ROWS)
    os.symlink(root, tmp_path / "alias")
    ds = _build(str(tmp_path / "alias" / "all.csv"), tmp_path)
    assert sum(len(ds[s]) for s in ds) == 6


# ------------------------------------------------------------------------------- item 3: stale builds
def _label_names(ds):
    return ds["train"].features["labels"].feature.names


def test_changed_listing_is_rebuilt_not_reused(listing_dir, tmp_path, capsys):
    root, write = listing_dir
    path = write(GOOD_ROWS[:5] + [("img/5.png", "dgo")])  # a typo
    assert "dgo" in _label_names(_build(path, tmp_path))
    capsys.readouterr()
    _build(path, tmp_path)  # unchanged: reused, and said so
    assert "reusing the cached build" in capsys.readouterr().err
    write(GOOD_ROWS)  # the typo fixed in place
    ds = _build(path, tmp_path)
    assert _label_names(ds) == ["cat", "dog"]
    assert "reusing" not in capsys.readouterr().err


def test_changed_classes_file_is_rebuilt(listing_dir, tmp_path):
    root, write = listing_dir
    path = write(GOOD_ROWS)
    (root / "classes.txt").write_text("cat\ndog\n")
    assert _label_names(_build(path, tmp_path, classes_file=str(root / "classes.txt"))) == ["cat", "dog"]
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    assert _label_names(_build(path, tmp_path, classes_file=str(root / "classes.txt"))) == ["cat", "dog", "bird"]


def test_changed_default_listing_under_root_is_rebuilt(listing_dir, tmp_path):
    root, write = listing_dir
    write(GOOD_ROWS[:3], "train.csv")
    write(GOOD_ROWS[3:5], "test.csv")
    build = lambda: build_dataset("multilabel_files", root=str(root), cache_dir=str(tmp_path / "cache"))  # noqa: E731
    assert len(build()["test"]) == 2
    write(GOOD_ROWS[3:], "test.csv")
    assert len(build()["test"]) == 3


def test_force_rebuild_through_the_loader(listing_dir, tmp_path, capsys):
    from spl_losses.data import load_spml_dataset

    root, write = listing_dir
    path = write(GOOD_ROWS)
    load_spml_dataset("multilabel_files", listing=path, cache_dir=str(tmp_path / "cache"))
    capsys.readouterr()
    load_spml_dataset("multilabel_files", listing=path, cache_dir=str(tmp_path / "cache"), force_rebuild=True)
    assert "reusing" not in capsys.readouterr().err


# -------------------------------------------------------------------- item 6: images changed in place
def _first_path(split):
    return split.cast_column("image", datasets.Image(decode=False))[0]["image"]["path"]


def test_fingerprint_changes_when_a_referenced_image_changes_in_place(listing_dir, tmp_path):
    from spl_losses.data import dataset_fingerprint

    root, write = listing_dir
    train = _build(write(GOOD_ROWS), tmp_path)["train"]
    before = dataset_fingerprint(train)
    assert dataset_fingerprint(train) == before == dataset_fingerprint(train, use_memo=False)  # untouched: same
    path = _first_path(train)
    stat = os.stat(path)
    Image.new("RGB", (4, 4), (0, 255, 255)).save(path)  # other pixels, same name
    if os.stat(path).st_mtime_ns == stat.st_mtime_ns:  # a coarse clock: make the rewrite visible
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = dataset_fingerprint(train)
    assert after != before
    assert dataset_fingerprint(train) == after == dataset_fingerprint(train, use_memo=False)


# ------------------------------------------------------------------------------ item 7: listed twice
def test_image_listed_twice_in_one_listing_is_refused_naming_both_rows(listing_dir, tmp_path):
    root, write = listing_dir
    path = write(GOOD_ROWS + [("./img/1.png", "dog")])
    with pytest.raises(ValueError, match=r"all\.csv, row 2 and .*all\.csv, row 7 list the same image .*1\.png"):
        _build(path, tmp_path)


def test_image_listed_in_train_and_test_is_refused(listing_dir, tmp_path):
    root, write = listing_dir
    write(GOOD_ROWS[:4], "train.csv")
    write(GOOD_ROWS[4:] + [(str(root / "img" / "0.png"), "cat")], "test.csv")  # absolute spelling of img/0.png
    with pytest.raises(ValueError, match=r"train\.csv, row 1 and .*test\.csv, row 3 list the same image"):
        build_dataset("multilabel_files", root=str(root), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------- items 9, 14: one decode rule (bombs, 16 bits, EXIF)
def test_open_rgb_reports_a_decompression_bomb_like_any_undecodable_image(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from spl_losses.data.image_checks import ImageDecodeError, open_rgb

    path = tmp_path / "bomb.png"
    _image(str(path), size=(64, 64))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 > 2 x 100: a "bomb"
    with pytest.raises(ImageDecodeError, match=r"decompression bomb"):
        open_rgb(str(path))
    with pytest.raises(ValueError, match="decompression bomb"):  # a ValueError: the training decode names the row
        open_rgb(path.read_bytes())
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageDecodeError):
        open_rgb(str(tmp_path / "text.png"))


def test_open_rgb_scales_16_bit_images_to_8_bits(tmp_path):
    import numpy as np

    from spl_losses.data.image_checks import open_rgb

    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG
    pixels = np.asarray(open_rgb(str(path)))
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 2, 3)
    assert pixels[..., 0].tolist() == [[0, 64], [128, 255]]  # scaled, not clipped to white
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_open_rgb_applies_the_exif_orientation(tmp_path):
    import numpy as np

    from spl_losses.data.image_checks import open_rgb

    image = Image.new("RGB", (4, 2), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    decoded = open_rgb(str(tmp_path / "rotated.jpg"))
    assert decoded.size == (2, 4) and decoded.mode == "RGB"
    via_datasets = datasets.Image(mode="RGB").decode_example({"path": str(tmp_path / "rotated.jpg"), "bytes": None})
    assert np.array_equal(np.asarray(decoded), np.asarray(via_datasets))  # the same rule as datasets


# ---------------------------------------------------------- item 15: feature values and widths
def _features_tree(root, train, test=None):
    import numpy as np

    os.makedirs(root, exist_ok=True)
    np.save(os.path.join(root, "train_features.npy"), train)
    np.save(os.path.join(root, "train_labels.npy"), np.eye(len(train), 3, dtype=np.int64)
            + np.eye(len(train), 3, -3, dtype=np.int64))
    test = np.ones((2, train.shape[1]), dtype=np.float32) if test is None else test
    np.save(os.path.join(root, "test_features.npy"), test)
    np.save(os.path.join(root, "test_labels.npy"), np.eye(len(test), 3, dtype=np.int64))


def test_float64_features_beyond_float32_range_are_refused(tmp_path):
    import numpy as np

    features = np.zeros((6, 4), dtype=np.float64)
    features[4, 1] = 1e39  # finite in float64, infinite once stored as float32
    _features_tree(str(tmp_path / "f"), features)
    with pytest.raises(ValueError, match=r"train_features\.npy, row 4, column 1: .*1e\+39.*float32"):
        build_dataset("multilabel_features", root=str(tmp_path / "f"), cache_dir=str(tmp_path / "cache"))


def test_feature_widths_differing_between_splits_are_refused_naming_the_files(tmp_path):
    import numpy as np

    _features_tree(str(tmp_path / "f"), np.zeros((6, 4), dtype=np.float32), test=np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"test_features\.npy has 5 features per row but .*train_features\.npy has 4"):
        build_dataset("multilabel_features", root=str(tmp_path / "f"), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------- item 13: a full disk
@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG"])
def test_cli_build_on_a_full_disk_names_the_cause_and_the_path(tmp_path, capsys, monkeypatch, code):
    import errno

    from spl_losses.data.__main__ import main

    def full(self, *args, **kwargs):
        number = getattr(errno, code)
        raise OSError(number, os.strerror(number), str(tmp_path / "cache" / "part-00000.arrow"))

    monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "write", full)
    assert main(["build", "digits_mosaic", "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                 "--dataset-option", "num_train=8", "--dataset-option", "num_validation=4",
                 "--dataset-option", "num_test=4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and code in err and os.strerror(getattr(errno, code)) in err
    assert "part-00000.arrow" in err
