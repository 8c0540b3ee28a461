"""digits_mosaic: labels are the distinct digits shown, disjoint sources, determinism, SPML columns."""
import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from spl_losses.data import build_dataset, get_dataset_info
from spl_losses.data.digits_mosaic import DigitsMosaicConfig, make_mosaics, source_pools

SMALL = dict(num_train=120, num_validation=40, num_test=40)


@pytest.fixture(scope="module")
def digits():
    bunch = load_digits()
    return bunch.images, bunch.target


def test_pools_are_disjoint_and_cover_the_digits():
    pools = source_pools(1797, seed=1200)
    sizes = [len(pools[s]) for s in ("train", "validation", "test")]
    assert sizes == [1078, 359, 360]
    union = np.concatenate(list(pools.values()))
    assert len(np.unique(union)) == 1797
    assert not np.array_equal(pools["test"], source_pools(1797, seed=1)["test"])


def test_mosaic_labels_are_the_distinct_digits_shown(digits):
    images, targets = digits
    pool = source_pools(len(targets), 1200)["validation"]
    pixels, sources, labels = make_mosaics(images, targets, pool, 500, seed=1200, salt=12, image_size=32)
    assert pixels.shape == (500, 32, 32) and pixels.dtype == np.uint8
    assert np.isin(sources, pool).all()
    for src, lab in zip(sources, labels):
        assert lab == sorted(set(targets[src].tolist()))
    counts = np.bincount([len(lab) for lab in labels], minlength=5)
    assert counts[0] == 0 and counts[1:].sum() == 500 and counts[3] > 0 and counts[4] > 0
    # cell (row 1, col 0) of mosaic 0 is source digit sources[0, 2], upscaled 2x, 0..16 -> 0..255
    expected = np.rint(images[sources[0, 2]] * 255 / 16).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(pixels[0, 16:32, 0:16], expected)


def test_mean_label_count_matches_expected_num_pos(digits):
    images, targets = digits
    _, _, labels = make_mosaics(images, targets, np.arange(len(targets)), 3000, seed=0, salt=11)
    k = get_dataset_info("digits_mosaic").expected_num_pos
    assert k == pytest.approx(10 * (1 - 0.9 ** 4), abs=1e-3)
    assert np.mean([len(lab) for lab in labels]) == pytest.approx(k, abs=0.06)


def test_image_size_must_be_multiple_of_16(digits):
    images, targets = digits
    with pytest.raises(ValueError, match="multiple of 16"):
        make_mosaics(images, targets, np.arange(10), 2, seed=0, salt=0, image_size=30)


def test_defaults_are_thousands_of_32px_mosaics():
    cfg = DigitsMosaicConfig()
    assert (cfg.num_train, cfg.num_validation, cfg.num_test, cfg.image_size) == (4000, 1000, 1000, 32)
    assert cfg.seed == 1200 and cfg.split_seed == 1200


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("digits_cache"))
    return build_dataset("digits_mosaic", seed=1200, cache_dir=cache, **SMALL)


def test_built_dataset_columns_and_spml_rows(built):
    assert list(built) == ["train", "validation", "test"]
    assert [len(built[s]) for s in built] == [120, 40, 40]
    assert built["train"].features["labels"].feature.names == [str(d) for d in range(10)]
    for split in built:
        ds = built[split]
        assert list(ds["index"]) == list(range(len(ds)))
        for labels, observed in zip(ds["labels"], ds["observed_labels"]):
            assert 1 <= len(labels) <= 4
            assert len(observed) == 1 and observed[0] in labels
    image = built["test"][0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)


def test_built_images_come_from_the_split_pool(built, digits):
    images, targets = digits
    pool = source_pools(len(targets), 1200)["test"]
    row = built["test"].with_format(None)[3]
    pixels = np.asarray(row["image"].convert("L"))
    tile = pixels[:16:2, :16:2].astype(np.float64) * 16 / 255  # top-left digit at 8x8
    distances = np.abs(images[pool] - tile).max(axis=(1, 2))
    assert distances.min() < 0.05  # some source digit of the test pool
    assert targets[pool][distances < 0.05][0] in row["labels"]


def _png_bytes(dsd):
    from datasets import Image as ImageFeature

    return [r["bytes"] for r in dsd["train"].cast_column("image", ImageFeature(decode=False))["image"]]


def test_determinism_and_seed_roles(built, tmp_path):
    again = build_dataset("digits_mosaic", seed=1200, cache_dir=str(tmp_path / "a"), **SMALL)
    other_seed = build_dataset("digits_mosaic", seed=7, cache_dir=str(tmp_path / "b"), **SMALL)
    other_data = build_dataset("digits_mosaic", seed=1200, split_seed=7, cache_dir=str(tmp_path / "c"), **SMALL)
    assert list(again["train"]["labels"]) == list(built["train"]["labels"])
    assert list(again["train"]["observed_labels"]) == list(built["train"]["observed_labels"])
    assert _png_bytes(again) == _png_bytes(built)
    # seed: the observed positives; split_seed: the mosaics themselves
    assert _png_bytes(other_seed) == _png_bytes(built)
    assert list(other_seed["train"]["observed_labels"]) != list(built["train"]["observed_labels"])
    assert _png_bytes(other_data) != _png_bytes(built)


def test_png_bytes_are_rgb_png(built):
    from datasets import Image as ImageFeature

    row = built["validation"].cast_column("image", ImageFeature(decode=False))[0]["image"]
    with Image.open(io.BytesIO(row["bytes"])) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
        r, g, b = (np.asarray(c) for c in im.split())
        assert np.array_equal(r, g) and np.array_equal(g, b)
