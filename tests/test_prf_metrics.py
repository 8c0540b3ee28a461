"""CP, CR, CF1, OP, OR, OF1 against a hand-computed case."""
import numpy as np
import pytest

from spl_losses.metrics import compute_metrics, precision_recall_f1

# 3 images, 3 classes
PROBS = np.array([[0.9, 0.6, 0.2],
                  [0.4, 0.8, 0.7],
                  [0.55, 0.1, 0.3]])
LABELS = np.array([[1, 0, 0],
                   [0, 1, 1],
                   [1, 0, 1]])


def test_threshold_predictions_by_hand():
    # predicted at 0.5: row0 {0, 1}, row1 {1, 2}, row2 {0}
    # class 0: predicted 2, correct 2, positives 2 -> P 1, R 1
    # class 1: predicted 2, correct 1, positives 1 -> P 1/2, R 1
    # class 2: predicted 1, correct 1, positives 2 -> P 1, R 1/2
    out = precision_recall_f1(PROBS, LABELS, threshold=0.5)
    cp, cr = (1 + 0.5 + 1) / 3, (1 + 1 + 0.5) / 3
    assert out["CP"] == pytest.approx(100 * cp) and out["CR"] == pytest.approx(100 * cr)
    assert out["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    # overall: 5 predicted, 4 correct, 5 positives
    assert out["OP"] == pytest.approx(80.0) and out["OR"] == pytest.approx(80.0) and out["OF1"] == pytest.approx(80.0)


def test_top_k_keeps_only_each_images_best_classes_above_the_threshold():
    # top-1: row0 {0}, row1 {1}, row2 {0} -> class 0: 2/2 correct of 2 positives; class 1: 1/1 of 1; class 2: none of 2
    out = precision_recall_f1(PROBS, LABELS, threshold=0.5, top_k=1)
    assert out["CP"] == pytest.approx(100 * (1 + 1 + 0) / 3)  # a class never predicted has precision 0
    assert out["CR"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    assert out["OP"] == pytest.approx(100.0) and out["OR"] == pytest.approx(60.0)
    assert out["OF1"] == pytest.approx(100 * 2 * 0.6 / 1.6)


def test_compute_metrics_takes_logits_and_adds_the_top3_variant():
    logits = np.log(PROBS / (1 - PROBS))
    out = compute_metrics(logits, LABELS)
    assert out["CP"] == pytest.approx(precision_recall_f1(PROBS, LABELS)["CP"])
    assert out["OF1_top3"] == pytest.approx(precision_recall_f1(PROBS, LABELS, top_k=3)["OF1"])
    assert "CP" not in compute_metrics(logits, LABELS, threshold=None)
