"""Single-positive sampling and the train/validation split: golden values from an independent
pure-Python SplitMix64, uniformity, invariants, errors."""
import numpy as np
import pytest
import torch

from spl_losses.data.sampling import (add_observed_labels, hash_keys, sample_single_positive,
                                      split_train_validation)

M64 = (1 << 64) - 1


def _mix_py(x: int) -> int:
    """SplitMix64 (Steele, Lea & Flood 2014; Vigna's reference constants) on Python ints."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _key_py(seed: int, salt: int, row: int, cls: int) -> int:
    return _mix_py((_mix_py((_mix_py((_mix_py(seed) + salt) & M64) + row) & M64) + cls) & M64)


def test_hash_keys_match_pure_python_splitmix():
    rows = np.array([0, 1, 7, 123456])
    classes = np.array([0, 3, 79, 311])
    got = hash_keys(1200, 5, rows, classes)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [_key_py(1200, 5, int(r), int(c)) for r, c in zip(rows, classes)]
    # the first SplitMix64 output for state 0 is the published 0xE220A8397B1DCDAF
    assert _mix_py(0) == 0xE220A8397B1DCDAF


def test_golden_single_positive_rule():
    rows = [[2, 5, 7], [1], [0, 3], [], [4, 6, 8, 9]]
    got = sample_single_positive(rows, seed=1200, salt=0).positives
    expected = [[min(r, key=lambda c: _key_py(1200, 0, i, c))] if r else [] for i, r in enumerate(rows)]
    assert got == expected
    assert got[1] == [1] and got[3] == []


def test_dense_list_and_tensor_inputs_agree():
    rng = np.random.RandomState(0)
    dense = (rng.rand(50, 8) < 0.3).astype(np.int64)
    lists = [np.flatnonzero(r).tolist() for r in dense]
    a = sample_single_positive(dense, seed=7).positives
    b = sample_single_positive(lists, seed=7).positives
    c = sample_single_positive(torch.from_numpy(dense).float(), seed=7).positives
    assert a == b == c


def test_uniform_among_positives():
    n = 4000
    got = sample_single_positive([[1, 3, 4, 9]] * n, seed=1200).positives
    counts = np.bincount([r[0] for r in got], minlength=10)
    assert counts[[0, 2, 5, 6, 7, 8]].sum() == 0
    # binomial(4000, 1/4): sd ~27; 5 sd bounds
    assert np.all(np.abs(counts[[1, 3, 4, 9]] - 1000) < 140), counts


def test_every_row_gets_one_of_its_positives_and_empty_rows_stay_empty():
    rng = np.random.RandomState(1)
    dense = (rng.rand(200, 12) < 0.2).astype(np.int64)
    got = sample_single_positive(dense, seed=3).positives
    for row, obs in zip(dense, got):
        if row.any():
            assert len(obs) == 1 and row[obs[0]] == 1
        else:
            assert obs == []


def test_deterministic_row_independent_and_seed_dependent():
    rows = [[0, 1, 2, 3, 4]] * 100
    a = sample_single_positive(rows, seed=11).positives
    assert a == sample_single_positive(rows, seed=11).positives
    assert sample_single_positive(rows[:10], seed=11).positives == a[:10]  # a row's draw ignores other rows
    assert a != sample_single_positive(rows, seed=12).positives
    assert a != sample_single_positive(rows, seed=11, salt=1).positives


def test_num_positives_subset_without_replacement():
    rows = [[0, 2, 4, 6], [1, 3], [5], []]
    got = sample_single_positive(rows, num_positives=2, seed=0).positives
    assert [len(r) for r in got] == [2, 2, 1, 0]
    for obs, full in zip(got, rows):
        assert set(obs) <= set(full) and obs == sorted(set(obs))
    # the two kept are the two smallest keys
    keys = {c: _key_py(0, 0, 0, c) for c in rows[0]}
    assert got[0] == sorted(sorted(rows[0], key=keys.get)[:2])
    assert sample_single_positive(rows, num_positives=0).positives == [[], [], [], []]


def test_observed_negatives():
    rows = [[0], [1, 2], [0, 1, 2, 3]]
    drawn = sample_single_positive(rows, seed=5, num_negatives=2, num_classes=4)
    assert [len(n) for n in drawn.negatives] == [2, 2, 0]
    for pos, neg in zip(rows, drawn.negatives):
        assert not set(pos) & set(neg)
    expected0 = sorted(sorted([1, 2, 3], key=lambda c: _key_py(5, 1, 0, c))[:2])
    assert drawn.negatives[0] == expected0
    assert sample_single_positive(rows, seed=5).negatives == [[], [], []]


def test_sampling_errors():
    with pytest.raises(ValueError, match=r"multi-hot"):
        sample_single_positive(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="seed"):
        sample_single_positive([[0]], seed=-1)
    with pytest.raises(ValueError, match="num_positives"):
        sample_single_positive([[0]], num_positives=-1)
    with pytest.raises(ValueError, match="out of range"):
        sample_single_positive([[5]], num_classes=3)
    with pytest.raises(TypeError, match="dense"):
        sample_single_positive("abc")


def test_split_train_validation_golden_and_invariants():
    train, val = split_train_validation(10, 0.2, seed=1200)
    expected_val = sorted(sorted(range(10), key=lambda r: _key_py(1200, 0x56414C, r, 0))[:2])
    assert val.tolist() == expected_val
    assert train.tolist() == sorted(set(range(10)) - set(expected_val))
    train, val = split_train_validation(1001, 0.2, seed=3)
    assert len(val) == 200 and len(train) == 801
    assert not set(train.tolist()) & set(val.tolist())
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not np.array_equal(val, split_train_validation(1001, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="fraction"):
        split_train_validation(10, 1.0)


def test_add_observed_labels_to_any_dataset():
    import datasets

    feature = datasets.List(datasets.ClassLabel(names=["a", "b", "c"]))
    ds = datasets.Dataset.from_dict({"labels": [[0, 2], [1], []]},
                                    features=datasets.Features({"labels": feature}))
    out = add_observed_labels(ds, seed=9, num_negatives=1)
    assert out.features["observed_labels"] == feature
    obs = list(out["observed_labels"])
    assert obs[1] == [1] and obs[2] == [] and obs[0][0] in (0, 2)
    assert obs[0] == [min([0, 2], key=lambda c: _key_py(9, 0, 0, c))]
    assert [len(n) for n in out["observed_labels_negatives"]] == [1, 1, 1]
    with pytest.raises(ValueError, match="no column"):
        add_observed_labels(ds, labels_column="tags")


# ------------------------------------------------------------------------------------- weighted draws
def test_weighted_golden_exponential_race():
    """Row r keeps the positive c with the smallest -log(1 - u) / w, u = top 53 bits of the key / 2**53."""
    import math

    rows = [[0, 2, 5], [1, 3], [4]]
    weights = [[1.0, 3.0, 0.5], [0.0, 2.0], [7.0]]
    got = sample_single_positive(rows, seed=1200, salt=3, weights=weights).positives

    def race(i, c, w):
        u = (_key_py(1200, 6, i, c) >> 11) / 2.0 ** 53
        return -math.log1p(-u) / w if w > 0 else math.inf

    expected = [[min(zip(r, w), key=lambda cw: race(i, *cw))[0]] for i, (r, w) in enumerate(zip(rows, weights))]
    assert got == expected and got[1] == [3] and got[2] == [4]


def test_weighted_frequencies_match_the_weights():
    # 40,000 rows, one draw each (independent keys per row): P(c) = w_c / sum(w)
    n = 40_000
    probabilities = np.array([0.1, 0.6, 0.3])
    got = sample_single_positive([[2, 5, 7]] * n, seed=11, weights=[[1.0, 6.0, 3.0]] * n).positives
    freq = np.bincount([r[0] for r in got], minlength=8)[[2, 5, 7]] / n
    # binomial standard error sqrt(p (1 - p) / n) <= 0.0025; 5 standard errors
    assert np.all(np.abs(freq - probabilities) < 5 * np.sqrt(probabilities * (1 - probabilities) / n)), freq


def test_equal_weights_give_the_unweighted_draws_and_zero_weights_fall_back_to_uniform():
    rng = np.random.RandomState(1)
    lists = [sorted(rng.choice(10, size=rng.randint(1, 6), replace=False).tolist()) for _ in range(300)]
    plain = sample_single_positive(lists, seed=4, num_positives=2).positives
    equal = sample_single_positive(lists, seed=4, num_positives=2, weights=[[2.5] * len(r) for r in lists]).positives
    zeros = sample_single_positive(lists, seed=4, num_positives=2, weights=[[0.0] * len(r) for r in lists]).positives
    assert equal == plain and zeros == plain
    # a zero weight is never drawn while another positive weighs more
    never = sample_single_positive([[0, 1]] * 500, seed=2, weights=[[0.0, 1.0]] * 500).positives
    assert never == [[1]] * 500


def test_weights_dense_and_lists_agree_and_duplicates_sum():
    dense = np.array([[1, 0, 1], [0, 1, 1]])
    dense_w = np.array([[2.0, 9.0, 1.0], [9.0, 0.5, 4.0]])  # entries at negatives are ignored
    lists, list_w = [[0, 2], [1, 2]], [[2.0, 1.0], [0.5, 4.0]]
    for seed in range(20):
        assert (sample_single_positive(dense, seed=seed, weights=dense_w).positives
                == sample_single_positive(lists, seed=seed, weights=list_w).positives)
    # a class listed twice counts once, with the sum of its weights
    twice = sample_single_positive([[0, 1, 0]], seed=3, weights=[[0.5, 1.0, 0.5]]).positives
    assert twice == sample_single_positive([[0, 1]], seed=3, weights=[[1.0, 1.0]]).positives


def test_weight_errors_name_the_row():
    with pytest.raises(ValueError, match="row 1 has 1 entries for 2"):
        sample_single_positive([[0], [1, 2]], weights=[[1.0], [1.0]])
    with pytest.raises(ValueError, match="row 1 has -1.0"):
        sample_single_positive([[0], [1]], weights=[[1.0], [-1.0]])
    with pytest.raises(ValueError, match="finite"):
        sample_single_positive([[0]], weights=[[float("nan")]])
    with pytest.raises(ValueError, match="shape"):
        sample_single_positive(np.eye(2), weights=np.ones((2, 3)))


def test_add_observed_labels_with_a_weights_column():
    import datasets

    feature = datasets.List(datasets.ClassLabel(names=["a", "b", "c"]))
    ds = datasets.Dataset.from_dict({"labels": [[0, 2]] * 50, "w": [[0.0, 1.0]] * 50},
                                    features=datasets.Features({"labels": feature,
                                                                "w": datasets.List(datasets.Value("float32"))}))
    assert list(add_observed_labels(ds, weights_column="w")["observed_labels"]) == [[2]] * 50
    with pytest.raises(ValueError, match="no column 'x'"):
        add_observed_labels(ds, weights_column="x")


def test_split_salt_separates_carves():
    a = split_train_validation(100, 0.2, seed=1200)[1]
    b = split_train_validation(100, 0.2, seed=1200, salt=7)[1]
    assert b.tolist() == sorted(sorted(range(100), key=lambda r: _key_py(1200, 7, r, 0))[:20])
    assert a.tolist() != b.tolist()
