"""Label encodings: index lists <-> dense tensors, and the encoding checks."""
import numpy as np
import pytest
import torch

from spl_losses.labels import check_multi_hot, check_observed_labels, dense_to_indices, indices_to_dense


def test_indices_to_dense_hand_case_with_negatives():
    dense = indices_to_dense([[0, 2], [1], []], num_classes=4, negatives=[[3], [], [0, 1]])
    expected = torch.tensor([[1, 0, 1, -1], [0, 1, 0, 0], [-1, -1, 0, 0]], dtype=torch.float32)
    assert torch.equal(dense, expected)


def test_indices_to_dense_accepts_one_int_per_row():
    expected = torch.tensor([[0, 0, 1], [1, 0, 0]], dtype=torch.int8)
    assert torch.equal(indices_to_dense([2, 0], 3, dtype=torch.int8), expected)
    assert torch.equal(indices_to_dense(np.array([2, 0]), 3, dtype=torch.int8), expected)
    assert torch.equal(indices_to_dense(torch.tensor([2, 0]), 3, dtype=torch.int8), expected)
    assert torch.equal(indices_to_dense([np.int64(2), [0]], 3, dtype=torch.int8), expected)


def test_round_trip_dense_to_indices():
    rng = np.random.default_rng(0)
    dense = torch.from_numpy(rng.integers(-1, 2, size=(20, 6))).float()
    positives = dense_to_indices(dense)
    negatives = dense_to_indices(dense, value=-1)
    assert torch.equal(indices_to_dense(positives, 6, negatives=negatives), dense)
    assert dense_to_indices(np.array([[0, 1, 1], [0, 0, 0]])) == [[1, 2], []]


def test_indices_to_dense_errors():
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        indices_to_dense([[3]], 3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        indices_to_dense([[-1]], 3)
    with pytest.raises(ValueError, match="num_classes"):
        indices_to_dense([[0]], 0)
    with pytest.raises(ValueError, match="rows"):
        indices_to_dense([[0], [1]], 3, negatives=[[2]])
    with pytest.raises(ValueError, match="both as positive and as negative"):
        indices_to_dense([[0], [1]], 3, negatives=[[2], [1]])
    with pytest.raises(ValueError, match="2-D"):
        dense_to_indices(np.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int8])
def test_check_observed_labels_accepts_the_encoding_in_any_dtype(dtype):
    check_observed_labels(torch.tensor([[1, 0, -1], [0, 0, 1]], dtype=dtype))
    check_observed_labels(torch.zeros(0, 3, dtype=dtype))


@pytest.mark.parametrize("bad", [0.5, 2.0, -2.0, 1e-30, 1 - 2 ** -24, float("nan"), float("inf")])
def test_check_observed_labels_rejects_values_outside_the_encoding(bad):
    labels = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    labels[1, 1] = bad
    with pytest.raises(ValueError, match="observed encoding|NaN or inf"):
        check_observed_labels(labels)


def test_check_observed_labels_names_bad_values_and_shapes():
    with pytest.raises(ValueError, match=r"found values \[2"):
        check_observed_labels(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="does not match logits shape"):
        check_observed_labels(torch.zeros(2, 3), expected_shape=(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        check_observed_labels(torch.zeros(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_observed_labels([[0, 1]])


def test_check_multi_hot():
    check_multi_hot(torch.tensor([[1.0, 0.0, 0.3]]))  # soft targets are fine
    check_multi_hot(torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="observed negative"):
        check_multi_hot(torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_multi_hot(torch.tensor([[1.5, 0.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        check_multi_hot(torch.tensor([[float("nan"), 0.0]]))


def test_check_observed_labels_in_chunks(monkeypatch):
    from spl_losses import labels as labels_module

    monkeypatch.setattr(labels_module, "_CHECK_CHUNK_ELEMENTS", 6)  # 2 rows of 3 per chunk
    labels = torch.zeros(7, 3)
    labels[:, 0] = 1
    check_observed_labels(labels)
    labels[6, 2] = 0.5  # in the last, partial chunk
    with pytest.raises(ValueError, match=r"found values \[0.5\]"):
        check_observed_labels(labels)
    labels[6, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        check_observed_labels(labels)
