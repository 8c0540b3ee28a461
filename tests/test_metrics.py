"""spl_losses.metrics against sklearn and hand-computed cases (the metrics of Cole et al., 2021)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spl_losses import metrics

# 3 images x 4 classes; the last image has no positive
SCORES = [[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]]
LABELS = [[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]


def random_case(n=60, c=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.int64)
    labels[0] = 1  # every class has a positive
    scores = rng.normal(size=(n, c)) + labels
    return scores, labels


def test_per_class_ap_matches_sklearn_on_random_data():
    scores, labels = random_case()
    ap = metrics.per_class_average_precision(scores, labels)
    expected = [average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    np.testing.assert_allclose(ap, expected, rtol=1e-12)
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(100 * np.mean(expected), rel=1e-12)


@pytest.mark.parametrize("levels", [2, 5, 1000])
def test_per_class_ap_matches_sklearn_with_tied_scores(levels, monkeypatch):
    """Tie groups take the precision at their end, as sklearn; also across the blocks of classes."""
    scores, labels = random_case(n=300, c=9, seed=levels)
    scores = np.round(scores * levels) / levels
    expected = [average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    np.testing.assert_allclose(metrics.per_class_average_precision(scores, labels), expected, rtol=1e-12)
    monkeypatch.setattr(metrics, "_AP_BLOCK_ELEMENTS", 2 * 300)  # two classes per pass
    np.testing.assert_allclose(metrics.per_class_average_precision(scores, labels), expected, rtol=1e-12)


def test_logits_thresholded_as_the_logistic_function():
    from scipy.special import expit

    logits = np.array([[-800.0, 0.0, 3.0], [800.0, -3.0, 0.1]])
    np.testing.assert_array_equal(metrics._sigmoid(logits), expit(logits))


def test_average_precision_hand_case():
    # positives ranked 1st and 3rd: AP = (1/1 + 2/3) / 2
    ap = metrics.per_class_average_precision([[0.9], [0.8], [0.7], [0.6]], [[1], [0], [1], [0]])
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_class_without_positive_zero_and_skip_conventions():
    scores, labels = random_case(c=5)
    labels[:, 2] = 0
    ap = metrics.per_class_average_precision(scores, labels)
    assert np.isnan(ap[2])
    others = [average_precision_score(labels[:, c], scores[:, c]) for c in (0, 1, 3, 4)]
    zero = metrics.mean_average_precision(scores, labels, no_positive="zero")
    skip = metrics.mean_average_precision(scores, labels, no_positive="skip")
    assert zero == pytest.approx(100 * sum(others) / 5, rel=1e-12)
    assert skip == pytest.approx(100 * sum(others) / 4, rel=1e-12)
    assert metrics.mean_average_precision(scores, labels) == zero  # the reference's convention is the default
    with pytest.raises(ValueError, match="no_positive"):
        metrics.mean_average_precision(scores, labels, no_positive="ignore")


def test_skip_convention_without_any_positive_is_nan_with_warning():
    with pytest.warns(UserWarning, match="no class"):
        value = metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)), no_positive="skip")
    assert np.isnan(value)
    assert metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2))) == 0.0


def test_precision_recall_hit_at_k_hand_case():
    # top-1: image 0 -> class 0 (hit), image 1 -> class 1 (miss), image 2 -> class 0 (miss)
    assert metrics.precision_at_k(SCORES, LABELS, 1) == pytest.approx(100 / 3)
    assert metrics.recall_at_k(SCORES, LABELS, 1) == pytest.approx(100 * (1 / 2 + 0) / 2)
    assert metrics.top_k_hit_rate(SCORES, LABELS, 1) == pytest.approx(100 / 3)
    # top-2: {0, 2} -> 1 hit; {1, 2} -> 1 hit; {0, 1} -> 0
    assert metrics.precision_at_k(SCORES, LABELS, 2) == pytest.approx(100 * (1 / 2 + 1 / 2 + 0) / 3)
    assert metrics.recall_at_k(SCORES, LABELS, 2) == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert metrics.top_k_hit_rate(SCORES, LABELS, 2) == pytest.approx(200 / 3)
    # top-3: {0, 2, 3} -> 2 hits; {1, 2, 0} -> 1; {0, 1, 2} -> 0
    assert metrics.precision_at_k(SCORES, LABELS, 3) == pytest.approx(100 * (2 / 3 + 1 / 3 + 0) / 3)
    assert metrics.recall_at_k(SCORES, LABELS, 3) == pytest.approx(100.0)
    # k larger than C uses all classes
    assert metrics.recall_at_k(SCORES, LABELS, 10) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_at_k(SCORES, LABELS, 0)


def test_numpy_and_torch_inputs_agree():
    scores, labels = random_case(seed=3)
    from_numpy = metrics.compute_metrics(scores, labels)
    from_torch = metrics.compute_metrics(torch.from_numpy(scores), torch.from_numpy(labels).float())
    assert from_numpy.keys() == from_torch.keys()
    for key in from_numpy:
        assert from_numpy[key] == pytest.approx(from_torch[key], rel=1e-12), key
    # half-precision torch scores are accepted
    assert np.isfinite(metrics.mean_average_precision(torch.from_numpy(scores).bfloat16(), torch.from_numpy(labels)))


def test_compute_metrics_keys_and_values():
    out = metrics.compute_metrics(SCORES, LABELS, ks=(1, 3))
    prf = {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert set(out) == {"map", "map_skip_empty", "precision@1", "recall@1", "top1_hit",
                        "precision@3", "recall@3", "top3_hit"} | prf | {f"{k}_top3" for k in prf}
    assert out["precision@1"] == pytest.approx(100 / 3)
    assert out["map_skip_empty"] > out["map"]  # class 1 has no positive


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="does not match"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="full multi-hot"):
        metrics.mean_average_precision(np.zeros((2, 2)), np.array([[1, -1], [0, 1]]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mean_average_precision(np.array([[np.nan, 0.0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="2-D"):
        metrics.mean_average_precision(np.zeros(3), np.zeros(3))
