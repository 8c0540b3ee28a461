"""The ``scores:PATH`` teacher: each file format read back, rows aligned by ``index``, and every refusal."""
import os
import pickle
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from safetensors.torch import save_file

from spl_losses.teachers import ScoresTeacher, create_teacher, export_teacher_scores, teacher_scores

NAMES = ["cat", "dog", "tree"]
SCORES = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.5], [1.0, 0.0, 0.25], [0.3, 0.3, 0.7], [0.05, 0.6, 0.95]],
                  dtype=np.float32)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPL_LOSSES_CACHE", str(tmp_path / "cache"))


def split(n=5, index=None):
    """An SPML split: ``index`` (default the row positions), List(ClassLabel) labels."""
    observed = [[i % 3] for i in range(n)]
    features = Features({"labels": List(ClassLabel(names=NAMES)), "observed_labels": List(ClassLabel(names=NAMES)),
                         "index": Value("int64")})
    return Dataset.from_dict({"labels": observed, "observed_labels": observed,
                              "index": list(range(n)) if index is None else index}, features=features)


def scores_of(path, data=None, **kwargs):
    return teacher_scores(create_teacher(f"scores:{path}", **kwargs), split() if data is None else data,
                          cache_dir=os.path.dirname(str(path)) + "/teacher_cache")


def write_parquet(path, index, scores=None, columns=None):
    table = {"index": pa.array(index, pa.int64())}
    if scores is not None:
        table["scores"] = pa.array([list(map(float, row)) for row in scores], pa.list_(pa.float32()))
    for name, values in (columns or {}).items():
        table[name] = pa.array(values)
    pq.write_table(pa.table(table), str(path))
    return path


# ---------------------------------------------------------------------------------------------- formats
def test_npy_round_trip_and_no_cache(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, SCORES.astype(np.float64))
    teacher = create_teacher(f"scores:{path}")
    assert isinstance(teacher, ScoresTeacher) and teacher.kind == "scores" and teacher.cacheable is False
    out = teacher_scores(teacher, split(), cache_dir=str(tmp_path / "cache_dir"), dataset_source=str(tmp_path))
    assert out.dtype == torch.float32 and out.shape == (5, 3)
    torch.testing.assert_close(out, torch.from_numpy(SCORES))
    assert not (tmp_path / "cache_dir").exists() and not (tmp_path / "cache").exists()  # nothing written
    np.save(path, SCORES[::-1].copy())  # read each time: a changed file gives its new scores
    torch.testing.assert_close(teacher_scores(teacher, split()), torch.from_numpy(SCORES[::-1].copy()))


def test_npy_of_labels_is_an_oracle(tmp_path):
    labels = (SCORES > 0.5).astype(np.int64)
    np.save(tmp_path / "labels.npy", labels)
    torch.testing.assert_close(scores_of(tmp_path / "labels.npy"), torch.from_numpy(labels).float())


def test_safetensors_one_tensor_and_keyed(tmp_path):
    save_file({"whatever": torch.from_numpy(SCORES).half()}, str(tmp_path / "one.safetensors"))
    torch.testing.assert_close(scores_of(tmp_path / "one.safetensors"), torch.from_numpy(SCORES), atol=1e-3, rtol=0)
    perm = torch.tensor([3, 0, 4, 1, 2])
    save_file({"scores": torch.from_numpy(SCORES)[perm], "index": perm}, str(tmp_path / "keyed.safetensors"))
    torch.testing.assert_close(scores_of(tmp_path / "keyed.safetensors"), torch.from_numpy(SCORES))
    save_file({"scores": torch.from_numpy(SCORES)}, str(tmp_path / "named.safetensors"))
    torch.testing.assert_close(scores_of(tmp_path / "named.safetensors"), torch.from_numpy(SCORES))


def test_parquet_list_column_and_class_columns(tmp_path):
    path = write_parquet(tmp_path / "list.parquet", range(5), SCORES)
    torch.testing.assert_close(scores_of(path), torch.from_numpy(SCORES))
    fixed = pa.table({"index": pa.array(range(5)), "scores": pa.array(SCORES.tolist(), pa.list_(pa.float64(), 3))})
    pq.write_table(fixed, str(tmp_path / "fixed.parquet"), row_group_size=2)  # fixed-size lists, 3 row groups
    torch.testing.assert_close(scores_of(tmp_path / "fixed.parquet"), torch.from_numpy(SCORES))
    # one column per class name, in another order than the split's classes, plus an ignored column
    columns = {"tree": SCORES[:, 2].tolist(), "note": ["x"] * 5, "cat": SCORES[:, 0].tolist(),
               "dog": SCORES[:, 1].tolist()}
    path = write_parquet(tmp_path / "columns.parquet", range(5), columns=columns)
    torch.testing.assert_close(scores_of(path), torch.from_numpy(SCORES))


def test_shuffled_parquet_aligns_by_index(tmp_path):
    # file rows: index 4, 2, 0, 3, 1, and one row of another split (index 9)
    rows = [(4, [0.4, 0.0, 0.1]), (2, [0.2, 0.3, 0.0]), (0, [0.0, 1.0, 0.5]), (9, [0.9, 0.9, 0.9]),
            (3, [0.3, 0.6, 0.7]), (1, [0.1, 0.2, 0.8])]
    path = write_parquet(tmp_path / "shuffled.parquet", [r[0] for r in rows], [r[1] for r in rows])
    expected = torch.tensor([[0.0, 1.0, 0.5], [0.1, 0.2, 0.8], [0.2, 0.3, 0.0], [0.3, 0.6, 0.7], [0.4, 0.0, 0.1]])
    torch.testing.assert_close(scores_of(path), expected)
    # a split stored in another row order gets each row's own scores: row r <- its index
    torch.testing.assert_close(scores_of(path, split(index=[3, 0, 4, 1, 2])), expected[[3, 0, 4, 1, 2]])


def test_export_of_a_scores_teacher_leaves_the_cache_empty(tmp_path):
    np.save(tmp_path / "s.npy", SCORES)
    target = export_teacher_scores(create_teacher(f"scores:{tmp_path / 's.npy'}"), split(), str(tmp_path / "ds"),
                                   cache_dir=str(tmp_path / "cache_dir"))
    assert os.path.isfile(target) and os.path.basename(os.path.dirname(target)) == "teacher_scores"
    assert not (tmp_path / "cache_dir").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------- refusals
def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.npy"))):
        create_teacher(f"scores:{tmp_path / 'absent.npy'}")
    (tmp_path / "s.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unknown format.*npy, .safetensors, .parquet"):
        create_teacher(f"scores:{tmp_path / 's.csv'}")
    with pytest.raises(ValueError, match="unknown teacher"):
        create_teacher("scores:")


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[0.1, None, 0.2]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy: not a plain numeric array \(an object or pickled"):
        scores_of(path, split(1))
    with open(tmp_path / "pickle.npy", "wb") as f:  # a pickle under a .npy name
        pickle.dump(SCORES, f)
    with pytest.raises(ValueError, match="pickle.npy: not a plain numeric array"):
        scores_of(tmp_path / "pickle.npy")


def test_wrong_class_count(tmp_path):
    np.save(tmp_path / "four.npy", np.zeros((5, 4), np.float32))
    message = re.escape(f"teacher scores file {tmp_path / 'four.npy'}: expected 3 scores per row (the split's 3 "
                        "class names), got 4")
    with pytest.raises(ValueError, match=message):
        scores_of(tmp_path / "four.npy")
    save_file({"scores": torch.zeros(5, 2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match=r"two\.safetensors: expected 3 scores per row .*got 2"):
        scores_of(tmp_path / "two.safetensors")
    path = write_parquet(tmp_path / "ragged.parquet", range(5), [[0.1] * 3] * 2 + [[0.1] * 2] + [[0.1] * 3] * 2)
    with pytest.raises(ValueError, match=r"ragged\.parquet: expected 3 scores per row .*got 2 values in row 2 "
                                         r"\(index 2\)"):
        scores_of(path)
    table = pa.table({"index": pa.array(range(5)), "scores": pa.array([[0.1] * 3] * 4 + [None], pa.list_(pa.float32()))})
    pq.write_table(table, str(tmp_path / "nolist.parquet"))
    with pytest.raises(ValueError, match=r"expected 3 scores per row .*got no list in row 4 \(index 4\)"):
        scores_of(tmp_path / "nolist.parquet")
    path = write_parquet(tmp_path / "cols.parquet", range(5), columns={"cat": [0.1] * 5, "dog": [0.2] * 5})
    with pytest.raises(ValueError, match=r"cols\.parquet: expected a 'scores' list column or one column per class "
                                         r".*missing class column\(s\) \['tree'\]"):
        scores_of(path)
    np.save(tmp_path / "flat.npy", np.zeros(15, np.float32))
    with pytest.raises(ValueError, match=r"expected an \(N, C\) array, got shape \(15,\)"):
        scores_of(tmp_path / "flat.npy")


def test_non_finite_and_out_of_range_values_name_the_row(tmp_path):
    bad = SCORES.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"nan\.npy, row 3, class 1: scores must be finite, got nan"):
        scores_of(tmp_path / "nan.npy")
    bad = SCORES.copy()
    bad[2, 0] = np.inf
    path = write_parquet(tmp_path / "inf.parquet", [3, 4, 5, 6, 7], bad)
    with pytest.raises(ValueError, match=r"inf\.parquet, row 2 \(index 5\), class 0: scores must be finite, got inf"):
        scores_of(path)
    table = pa.table({"index": pa.array(range(5)), "dog": pa.array([0.1, 0.2, None, 0.4, 0.5]),
                      "cat": pa.array([0.0] * 5), "tree": pa.array([1.0] * 5)})
    pq.write_table(table, str(tmp_path / "null.parquet"))  # a missing value is refused as NaN, with its row
    with pytest.raises(ValueError, match=r"null\.parquet, row 2 \(index 2\), class 1: scores must be finite, got nan"):
        scores_of(tmp_path / "null.parquet")
    logits = SCORES.copy()
    logits[1, 2] = 2.5
    np.save(tmp_path / "logits.npy", logits)
    with pytest.raises(ValueError, match=r"row 1, class 2: scores must be in \[0, 1\], got 2.5; scores are "
                                         "probabilities: apply a sigmoid to logits"):
        scores_of(tmp_path / "logits.npy")


def test_index_checks(tmp_path):
    np.save(tmp_path / "short.npy", SCORES[:4])
    with pytest.raises(ValueError, match=r"short\.npy: has 4 rows but the split has 5 examples \(a file without an "
                                         r"index holds exactly one row per example, row i for index i\)"):
        scores_of(tmp_path / "short.npy")
    path = write_parquet(tmp_path / "gap.parquet", [0, 1, 2, 4], SCORES[:4])
    with pytest.raises(ValueError, match=r"gap\.parquet: index 3 of the split is missing from the file \(1 of the "
                                         r"split's 5 index values missing\)"):
        scores_of(path)
    path = write_parquet(tmp_path / "dup.parquet", [0, 1, 2, 3, 4, 2], np.concatenate([SCORES, SCORES[:1]]))
    with pytest.raises(ValueError, match=r"dup\.parquet: index 2 appears 2 times \(1 duplicated index value\(s\)\)"):
        scores_of(path)
    save_file({"scores": torch.from_numpy(SCORES), "index": torch.tensor([0, 1, 1, 3, 4])},
              str(tmp_path / "dup.safetensors"))
    with pytest.raises(ValueError, match=r"dup\.safetensors: index 1 appears 2 times"):
        scores_of(tmp_path / "dup.safetensors")
    pq.write_table(pa.table({"scores": pa.array(SCORES.tolist())}), str(tmp_path / "noindex.parquet"))
    with pytest.raises(ValueError, match="a Parquet file needs an 'index' column"):
        scores_of(tmp_path / "noindex.parquet")
    save_file({"scores": torch.from_numpy(SCORES), "other": torch.zeros(5)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"expected one tensor, or a 'scores' tensor with an optional 'index' "
                                         r"tensor; got tensors \['other', 'scores'\]"):
        scores_of(tmp_path / "extra.safetensors")
    np.save(tmp_path / "s.npy", SCORES)
    with pytest.raises(ValueError, match="the split has no 'index' column"):
        scores_of(tmp_path / "s.npy", split().remove_columns("index"))
    with pytest.raises(ValueError, match="class_names .* differ from the split's"):
        scores_of(tmp_path / "s.npy", class_names=["a", "b", "c"])
