"""spl_losses.data.columns: whole columns read from Arrow, against hand-built expectations."""
import os
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch

from spl_losses.data.columns import (ListColumn, equal_list_rows, feature_matrix, feature_tensor, index_column,
                                     label_matrix, list_column)
from spl_losses.training.label_matrices import check_index_column, dense_labels, has_full_labels

NAMES = ["a", "b", "c", "d"]
FEATURES = np.arange(15, dtype=np.float32).reshape(5, 3) / 4
LABELS = [[0], [2, 1], [], [3], [1, 3]]
OBSERVED = [[0], [1], [], [3], [3]]
DENSE = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1]], dtype=torch.float32)


def _dataset(features=FEATURES.tolist(), feature_type=None, labels=LABELS):
    feature_type = feature_type or datasets.List(datasets.Value("float32"), length=3)
    label_type = datasets.List(datasets.ClassLabel(names=NAMES))
    return datasets.Dataset.from_dict(
        {"features": features, "labels": labels, "observed_labels": OBSERVED, "index": list(range(len(labels)))},
        features=datasets.Features({"features": feature_type, "labels": label_type, "observed_labels": label_type,
                                    "index": datasets.Value("int64")}))


@pytest.fixture(params=["memory", "disk"])
def where(request, tmp_path):
    def load(ds):
        if request.param == "memory":
            return ds
        ds.save_to_disk(str(tmp_path / "ds"))
        return datasets.load_from_disk(str(tmp_path / "ds"))
    return load


def test_fixed_size_features(where):
    ds = where(_dataset())
    out = feature_matrix(ds)
    assert out.dtype == np.float32 and out.shape == (5, 3)
    np.testing.assert_array_equal(out, FEATURES)
    tensor = feature_tensor(ds)
    assert tensor.dtype == torch.float32 and torch.equal(tensor, torch.from_numpy(FEATURES))


def test_saved_float32_column_is_read_without_a_copy(tmp_path):
    _dataset().save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    out = feature_matrix(ds)
    assert not out.flags.writeable  # a view of the memory-mapped Arrow buffer
    chunk = ds.data.table.column("features").chunk(0)
    assert out.ctypes.data == chunk.flatten().buffers()[1].address


def test_variable_length_lists_of_equal_length(where):
    ds = where(_dataset(feature_type=datasets.List(datasets.Value("float32"))))
    np.testing.assert_array_equal(feature_matrix(ds), FEATURES)


def test_float64_is_cast_to_float32(where):
    values = FEATURES.astype(np.float64) + 1e-9
    ds = where(_dataset(values.tolist(), datasets.List(datasets.Value("float64"), length=3)))
    out = feature_matrix(ds)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_float64_beyond_float32_range_is_refused():
    values = FEATURES.astype(np.float64)
    values[3, 1] = 1e300
    with pytest.raises(ValueError, match=r"'features'.*row 3.*beyond float32's range"):
        feature_matrix(_dataset(values.tolist(), datasets.List(datasets.Value("float64"), length=3)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_refused_naming_the_row(where, bad):
    values = FEATURES.copy()
    values[2, 0] = bad
    with pytest.raises(ValueError, match=r"'features'.*row 2 .*must be finite"):
        feature_matrix(where(_dataset(values.tolist())))


def test_ragged_rows_are_refused_naming_the_row(where):
    rows = FEATURES.tolist()
    rows[3] = rows[3][:2]
    ds = where(_dataset(rows, datasets.List(datasets.Value("float32"))))
    with pytest.raises(ValueError, match=r"'features'.*row 3 has 2 values, expected 3"):
        feature_matrix(ds)


def test_null_rows_and_entries_are_refused():
    rows = FEATURES.tolist()
    rows[1] = None
    with pytest.raises(ValueError, match=r"'features': row 1 is null"):
        feature_matrix(_dataset(rows, datasets.List(datasets.Value("float32"))))
    rows = FEATURES.tolist()
    rows[4][2] = None
    with pytest.raises(ValueError, match=r"'features': row 4 holds a null entry"):
        feature_matrix(_dataset(rows))


def test_wrong_types_and_missing_columns():
    with pytest.raises(ValueError, match=r"'labels' must be a fixed-length list of floats"):
        feature_matrix(_dataset(), "labels")
    with pytest.raises(ValueError, match=r"no 'image' column; columns are \['features', 'labels'"):
        feature_matrix(_dataset(), "image")
    with pytest.raises(ValueError, match=r"'features' must hold integer class indices"):
        label_matrix(_dataset(), "features", 4)
    with pytest.raises(ValueError, match=r"'labels' must hold integers"):
        index_column(_dataset(), "labels")
    with pytest.raises(TypeError, match="datasets.Dataset or a pyarrow.Table"):
        feature_matrix({"features": FEATURES})


def test_indices_mapping_is_read_in_the_split_order(where):
    ds = where(_dataset())
    views = ((ds.select([4, 0, 2]), [4, 0, 2]), (ds.shuffle(seed=3), None), (ds.select(range(1, 4)), [1, 2, 3]))
    for view, order in views:
        order = order if order is not None else view["index"][:]
        np.testing.assert_array_equal(feature_matrix(view), FEATURES[order])
        assert torch.equal(label_matrix(view, "labels", 4), DENSE[order])
        np.testing.assert_array_equal(index_column(view), order)
        assert list_column(view, "labels").values.tolist() == [c for i in order for c in LABELS[i]]


def test_bad_rows_of_a_mapped_view_are_named_in_its_order(where):
    values = FEATURES.copy()
    values[2, 1] = np.nan
    view = where(_dataset(values.tolist())).select([4, 2, 0])
    with pytest.raises(ValueError, match=r"'features': row 1 holds nan"):
        feature_matrix(view)
    feature_matrix(where(_dataset(values.tolist())).select([4, 0]))  # the bad row is not in the view
    rows = FEATURES.tolist()
    rows[3] = None
    with pytest.raises(ValueError, match=r"'features': row 0 is null"):
        feature_matrix(where(_dataset(rows)).select([3, 1]))


def test_several_chunks():
    ds = datasets.concatenate_datasets([_dataset(), _dataset()])
    assert ds.data.table.column("features").num_chunks == 2
    np.testing.assert_array_equal(feature_matrix(ds), np.concatenate([FEATURES, FEATURES]))
    assert torch.equal(label_matrix(ds, "labels", 4), torch.cat([DENSE, DENSE]))
    bad = FEATURES.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 6 "):  # the second chunk's row 1
        feature_matrix(datasets.concatenate_datasets([_dataset(), _dataset(bad.tolist())]))


def test_label_matrix_equals_a_hand_written_matrix(where):
    ds = where(_dataset())
    assert torch.equal(label_matrix(ds, "labels", 4), DENSE)
    assert torch.equal(dense_labels(ds, "labels", 4), DENSE)
    assert label_matrix(ds, "observed_labels", 4).sum(dim=1).tolist() == [1, 1, 0, 1, 1]
    column = list_column(ds, "labels")
    assert isinstance(column, ListColumn) and len(column) == 5 and column.lengths.tolist() == [1, 2, 0, 1, 2]
    assert column.offsets.tolist() == [0, 1, 3, 3, 4, 6] and column.values.tolist() == [0, 2, 1, 3, 1, 3]
    assert column.rows.tolist() == [0, 1, 1, 3, 4, 4]


def test_label_index_out_of_range_is_refused_naming_the_row():
    table = pa.table({"labels": pa.array([[0], [1, 2], [5]], type=pa.list_(pa.int64()))})
    with pytest.raises(ValueError, match=r"'labels': row 2 lists class 5, outside \[0, 3\]"):
        label_matrix(table, "labels", 4)
    table = pa.table({"labels": pa.array([[0], [-1]], type=pa.list_(pa.int64()))})
    with pytest.raises(ValueError, match=r"row 1 lists class -1"):
        label_matrix(table, "labels", 4)
    with pytest.raises(ValueError, match="num_classes"):
        label_matrix(table, "labels", 0)


def test_scalar_class_column_is_one_index_per_row():
    table = pa.table({"label": pa.array([2, 0], type=pa.int64())})
    assert label_matrix(table, "label", 3).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_full_labels_and_index_checks(where):
    ds = where(_dataset())
    assert equal_list_rows(ds, "labels", "observed_labels").tolist() == [True, False, True, True, False]
    assert has_full_labels(ds)
    same = _dataset().remove_columns("labels").add_column(
        "labels", [[0], [1], [], [3], [3]], feature=datasets.List(datasets.ClassLabel(names=NAMES)))
    assert not has_full_labels(same)
    reordered = pa.table({"labels": pa.array([[2, 1, 1], [0]]), "observed_labels": pa.array([[1, 2, 1], [0]])})
    assert equal_list_rows(reordered, "labels", "observed_labels").tolist() == [True, True]
    check_index_column(ds, "train")
    with pytest.raises(ValueError, match=r"split 'train'.*row 0 has index 4"):
        check_index_column(ds.select([4, 0, 2]), "train")


def test_bulk_read_of_a_large_split(tmp_path):
    """200,000 x 64 rows read through Arrow (per-row Python would take many seconds; not timed here)."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((200_000, 64), dtype=np.float32)
    feature = datasets.List(datasets.Value("float32"), length=64)
    arrow = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 64)
    ds = datasets.Dataset(pa.table({"features": arrow}).cast(
        datasets.Features({"features": feature}).arrow_schema))
    np.testing.assert_array_equal(feature_matrix(ds), values)
    order = rng.permutation(200_000)[:1000]
    np.testing.assert_array_equal(feature_matrix(ds.select(order)), values[order])


def test_import_loads_no_optional_module():
    code = ("import sys, spl_losses; spl_losses.create_loss('an'); "
            "print(','.join(m for m in ('datasets', 'optuna', 'matplotlib', 'accelerate', 'open_clip', 'sklearn', "
            "'scipy', 'pandas') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""


def test_lazy_names_still_resolve():
    import spl_losses

    assert spl_losses.LinearProbe.__name__ == "LinearProbe" and spl_losses.BoostLU.__name__ == "BoostLU"
    for name in ("data", "hub", "teachers", "metrics", "models", "transforms", "optim", "checkpoints"):
        assert getattr(spl_losses, name).__name__ == f"spl_losses.{name}"
    assert callable(spl_losses.data.columns.feature_matrix)
    with pytest.raises(AttributeError):
        spl_losses.no_such_name
