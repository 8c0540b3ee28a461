"""load_spml_dataset: builder names, save_to_disk folders, Parquet folders, Hub ids (never contacted)."""
import datasets
import pytest

import spl_losses.data.loading as loading
from spl_losses.data import build_dataset, load_spml_dataset
from spl_losses.data.sampling import hash_keys

TINY = dict(num_train=30, num_validation=10, num_test=10)
NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return build_dataset("digits_mosaic", seed=5, cache_dir=str(tmp_path_factory.mktemp("cache")), **TINY)


def _plain_dsd(splits=("train", "test"), observed=True):
    label = datasets.List(datasets.ClassLabel(names=NAMES))
    columns = {"features": datasets.List(datasets.Value("float32")), "labels": label}
    if observed:
        columns["observed_labels"] = label
    out = {}
    for split in splits:
        n = 10 if split == "train" else 4
        rows = {"features": [[float(i)] for i in range(n)], "labels": [[i % 3, (i + 1) % 3] for i in range(n)]}
        if observed:
            rows["observed_labels"] = [[i % 3] for i in range(n)]
        out[split] = datasets.Dataset.from_dict(rows, features=datasets.Features(columns))
    return datasets.DatasetDict(out)


def test_builder_name_builds(tmp_path):
    dsd = load_spml_dataset("digits_mosaic", seed=5, cache_dir=str(tmp_path), **TINY)
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [30, 10, 10]


def test_benchmark_name_without_data_dir_is_explained():
    with pytest.raises(ValueError, match="pass data_dir="):
        load_spml_dataset("voc2012")


def test_save_to_disk_round_trip(digits, tmp_path):
    digits.save_to_disk(str(tmp_path / "saved"))
    dsd = load_spml_dataset(str(tmp_path / "saved"))
    assert list(dsd) == ["train", "validation", "test"]
    for split in dsd:
        for column in ("labels", "observed_labels", "index"):
            assert list(dsd[split][column]) == list(digits[split][column])
    assert dsd["train"].features == digits["train"].features


def test_parquet_folder(digits, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for split in digits:
        digits[split].to_parquet(str(folder / f"{split}.parquet"))
    dsd = load_spml_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert dsd["test"].features["labels"].feature.names == [str(d) for d in range(10)]
    assert list(dsd["validation"]["observed_labels"]) == list(digits["validation"]["observed_labels"])
    assert dsd["train"][0]["image"].size == (32, 32)


def test_missing_validation_is_carved_and_index_set(tmp_path):
    _plain_dsd().save_to_disk(str(tmp_path / "d"))
    dsd = load_spml_dataset(str(tmp_path / "d"))
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [8, 2, 4]
    # validation = the 2 rows of the 10 with the smallest split keys (seed 1200), in order
    expected = sorted(sorted(range(10), key=lambda r: int(hash_keys(1200, 0x56414C, [r])[0]))[:2])
    assert [row[0] for row in dsd["validation"]["features"]] == [float(r) for r in expected]
    for split in dsd:
        assert list(dsd[split]["index"]) == list(range(len(dsd[split])))


def test_missing_observed_labels_raises_or_is_drawn(tmp_path):
    _plain_dsd(("train", "validation", "test"), observed=False).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"split 'train' has no 'observed_labels' column"):
        load_spml_dataset(str(tmp_path / "d"))
    dsd = load_spml_dataset(str(tmp_path / "d"), sample_if_missing=True, seed=2)
    for split in dsd:
        for labels, observed in zip(dsd[split]["labels"], dsd[split]["observed_labels"]):
            assert len(observed) == 1 and observed[0] in labels


def test_single_dataset_folder_is_rejected(tmp_path):
    _plain_dsd()["train"].save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ValueError, match="single saved Dataset"):
        load_spml_dataset(str(tmp_path / "one"))


def test_unknown_name_lists_what_was_tried(monkeypatch):
    def refuse(path, **kwargs):
        raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setattr(loading.datasets, "load_dataset", refuse)
    with pytest.raises(ValueError) as info:
        load_spml_dataset("digits_mosiac")
    message = str(info.value)
    assert "Did you mean the builder 'digits_mosaic'?" in message
    assert "registered builders (" in message and "multilabel_files" in message
    assert "does not exist" in message and "Hub id (FileNotFoundError" in message


def test_missing_local_path_never_reaches_the_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(loading.datasets, "load_dataset", lambda *a, **k: pytest.fail("contacted the Hub"))
    with pytest.raises(ValueError, match="not a Hub id"):
        load_spml_dataset(str(tmp_path / "no" / "such" / "folder"))
