"""dataset_fingerprint: equal for the same rows however stored, different after any change."""
import datasets
import pytest

from spl_losses.data import dataset_fingerprint


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPL_LOSSES_CACHE", str(tmp_path / "cache"))


def _rows(n, bump=None):
    return {"x": [i + (1 if i == bump else 0) for i in range(n)], "s": [f"r{i}" for i in range(n)]}


def test_same_rows_same_fingerprint_in_memory_and_on_disk(tmp_path):
    a = datasets.Dataset.from_dict(_rows(9000))
    a.save_to_disk(str(tmp_path / "saved"), max_shard_size="20KB")
    saved = datasets.load_from_disk(str(tmp_path / "saved"))
    assert len(saved.cache_files) > 1  # several shards: chunking must not matter
    assert dataset_fingerprint(saved) == dataset_fingerprint(a) == dataset_fingerprint(datasets.Dataset.from_dict(_rows(9000)))


def test_selected_view_hashes_as_its_rows():
    a = datasets.Dataset.from_dict(_rows(100))
    assert dataset_fingerprint(a.select(range(10, 20))) == dataset_fingerprint(
        datasets.Dataset.from_dict({"x": list(range(10, 20)), "s": [f"r{i}" for i in range(10, 20)]}))


def test_any_change_changes_it():
    base = dataset_fingerprint(datasets.Dataset.from_dict(_rows(500)))
    assert dataset_fingerprint(datasets.Dataset.from_dict(_rows(500, bump=321))) != base  # one value
    assert dataset_fingerprint(datasets.Dataset.from_dict(_rows(499))) != base  # one row fewer
    order = datasets.Dataset.from_dict(_rows(500)).select(list(range(499, -1, -1)))
    assert dataset_fingerprint(order) != base  # same rows, other order


def test_rebuilt_files_are_rehashed(tmp_path):
    path = str(tmp_path / "d")
    datasets.Dataset.from_dict(_rows(300)).save_to_disk(path)
    first = dataset_fingerprint(datasets.load_from_disk(path))
    assert dataset_fingerprint(datasets.load_from_disk(path)) == first  # remembered
    datasets.Dataset.from_dict(_rows(300, bump=7)).save_to_disk(path + "_new")
    import shutil
    shutil.rmtree(path)
    shutil.move(path + "_new", path)
    assert dataset_fingerprint(datasets.load_from_disk(path)) != first


def test_rejects_a_dataset_dict():
    with pytest.raises(TypeError, match="one split"):
        dataset_fingerprint(datasets.DatasetDict({"train": datasets.Dataset.from_dict(_rows(3))}))
