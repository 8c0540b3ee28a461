"""Expected positive regularization (EPR) of Cole et al. (CVPR 2021)."""
from typing import Optional

import torch

from .._registry import register_loss
from .assume_negative import _check_num_classes, IgnoreUnobservedLoss

__all__ = ["ExpectedPositiveRegularizedLoss", "expected_positive_regularizer"]


def expected_positive_regularizer(probs: torch.Tensor, expected_num_pos: float) -> torch.Tensor:
    """``(mean_b sum_c p_bc - k)^2 / C^2``, the EPR regularizer (SPEC §3).

    Args:
        probs: (B, C) probabilities (model predictions or label estimates).
        expected_num_pos: k, the expected number of positives per image.
    """
    num_classes = probs.shape[1]
    return (probs.sum(dim=1).mean() - expected_num_pos) ** 2 / num_classes ** 2


def _check_expected_num_pos(expected_num_pos) -> float:
    if isinstance(expected_num_pos, bool) or not isinstance(expected_num_pos, (int, float)) or expected_num_pos < 0:
        raise ValueError(
            f"expected_num_pos must be a non-negative number (SPEC: VOC 1.5, COCO 2.9, NUS 1.9, CUB 31.4), "
            f"got {expected_num_pos!r}")
    return float(expected_num_pos)


@register_loss("epr")
class ExpectedPositiveRegularizedLoss(IgnoreUnobservedLoss):
    """Expected positive regularization (EPR, Cole et al., CVPR 2021).

    Observed positives ``nlog(p)``, observed negatives ``nlog(1-p)``, unobserved 0, reduced over all
    B·C entries, plus the unscaled regularizer ``(mean_b sum_c p - k)^2 / C^2``.
    Published mAP (VOC / COCO / NUS / CUB): 85.5 / 63.3 / 46.0 / 20.0.

    Args:
        expected_num_pos: k, the expected number of positives per image.
        num_classes: C; checked against the logits when given.
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    def __init__(self, expected_num_pos: float, num_classes: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.expected_num_pos = _check_expected_num_pos(expected_num_pos)
        self.num_classes = _check_num_classes(num_classes)

    def compute(self, logits, targets, index=None):
        a, b = self.weights(targets)
        return self.weighted_bce_mean(logits, a, b, exclusive=self.exclusive_weights,
                                      expected_num_pos=self.expected_num_pos)[0]

    def extra_repr(self) -> str:
        return f"expected_num_pos={self.expected_num_pos}, " + super().extra_repr()
