"""Pseudo-label rules against hand-made score matrices."""
import pytest
import torch

from spl_losses.teachers import PrevalenceRule, SoftRule, ThresholdRule, TopKRule, create_rule

SCORES = torch.tensor([[0.9, 0.5, 0.1],
                       [0.2, 0.8, 0.4],
                       [0.6, 0.3, 0.7],
                       [0.1, 0.2, 0.95]])
OBSERVED = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])


def test_threshold_rule():
    assert ThresholdRule(0.5)(SCORES).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]
    assert ThresholdRule(0.5, strict=False)(SCORES)[0].tolist() == [1, 1, 0]
    # observed entries get nothing; negatives below 0.25
    assert ThresholdRule(0.5, negative_threshold=0.25)(SCORES, OBSERVED).tolist() == \
        [[0, 0, -1], [-1, 0, 0], [1, 0, 0], [-1, -1, 0]]
    # VLPL's "partial": floor(0.5 * 3) = 1 lowest class per row
    assert ThresholdRule(0.5, negative_fraction=0.5)(SCORES).tolist() == \
        [[1, 0, -1], [-1, 1, 0], [1, -1, 1], [-1, 0, 1]]
    soft = ThresholdRule(0.5, negative_threshold=0.25, soft=True)(SCORES, OBSERVED)
    torch.testing.assert_close(soft, torch.tensor([[0, 0, -0.9], [-0.8, 0, 0], [0.6, 0, 0], [-0.9, -0.8, 0]]))


def test_topk_rule():
    assert TopKRule(k=2)(SCORES).tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 1, 1]]
    assert TopKRule(k=2, threshold=0.45)(SCORES).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]
    assert TopKRule(k=2, threshold=0.45)(SCORES, OBSERVED).tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert TopKRule(k=5)(SCORES).sum().item() == 12


def test_prevalence_rule_by_hand():
    # k = 3: h_c = 2 * n_c hidden positives expected -> class 0: 2, class 1: 2, class 2: 4
    rule = PrevalenceRule(expected_num_pos=3.0, positive_margin=0.0, negative_margin=0.0)
    # class 0 unknown rows 1, 2, 3 (0.2, 0.6, 0.1): top 2 = rows 2, 1; row 3 negative
    # class 1 unknown rows 0, 2, 3 (0.5, 0.3, 0.2): rows 0, 2 positive; row 3 negative
    # class 2 unknown rows 0, 1: both within the top 4
    assert rule(SCORES, OBSERVED).tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0], [-1, -1, 0]]
    # margins: positives = floor(0.5 * 2) = 1 per class 0/1; negatives from rank ceil(1.5 * 2) = 3 on
    rule = PrevalenceRule(expected_num_pos=3.0, positive_margin=0.5, negative_margin=0.5)
    assert rule(SCORES, OBSERVED).tolist() == [[0, 1, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="observed_labels"):
        rule(SCORES)


def test_soft_rule_and_factory():
    torch.testing.assert_close(SoftRule(min_score=0.5)(SCORES, OBSERVED),
                               torch.tensor([[0, 0.5, 0], [0, 0, 0], [0.6, 0, 0], [0, 0, 0]]))
    assert isinstance(create_rule("topk", k=3), TopKRule)
    with pytest.raises(ValueError, match="unknown pseudo-label rule"):
        create_rule("median")
    with pytest.raises(ValueError, match="k must"):
        create_rule("topk", k=0)
    with pytest.raises(ValueError, match="'threshold'"):
        create_rule("threshold", threshhold=0.3)
    with pytest.raises(ValueError, match="shape"):
        ThresholdRule(0.5)(SCORES, OBSERVED[:2])
