"""Regularized online label estimation (ROLE) of Cole et al. (CVPR 2021)."""
from typing import Optional

import torch

from .._registry import register_loss
from ._checks import check_expected_num_pos, check_num_classes
from ._citations import COLE_2021
from ._functional import epr_of_sum, positive_mask
from .estimator import EstimatorLoss, LabelEstimator

__all__ = ["ROLELoss", "LabelEstimator"]


@register_loss("role")
class ROLELoss(EstimatorLoss):
    """Regularized online label estimation (ROLE, Cole et al., CVPR 2021).

    Per entry, with ``y_hat`` the estimator's probabilities and ``sg`` stop-gradient::

        L = 0.5·(pos(p) + pos(y_hat)) + 0.5·(bce(p; sg(y_hat)) + bce(y_hat; sg(p)))
        R = 0.5·(epr_reg(p) + epr_reg(y_hat))

    reduced as ``sum(L)/(B·C) + R``. Observed negatives add ``0.5·(nlog(1-p) + nlog(1-y_hat))``.
    The model gets gradient only from its own terms and the estimator only from its own.
    Published mAP (VOC / COCO / NUS / CUB): end-to-end 87.9 / 66.3 / 43.1 / 15.0;
    linear-init 88.2 / 69.0 / 51.0 / 16.8.

    The estimator is ``loss.estimator`` (a :class:`LabelEstimator`); put its parameters in their own
    optimizer group with 10× the learning rate (see :class:`LabelEstimator`). Every call needs the
    batch's example ``index``.

    Args:
        num_classes: C.
        num_examples: N, the training-set size.
        expected_num_pos: k, the expected number of positives per image.
        observed_labels: Optional (N, C) {-1, 0, 1} training labels to initialise the estimator.
        sparse: Give the estimator sparse gradients (pair with ``spl_losses.optim.LazyAdam``: Adam at O(B·C) per step).
        seed: Seed of the estimator's initialisation.
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    paper = "Cole et al., CVPR 2021"
    citation = COLE_2021
    batch_reduction = "mean"
    split_statistics = 2  # the sums of p and of y_hat over the batch

    def __init__(
            self,
            num_classes: int,
            num_examples: int,
            expected_num_pos: float,
            observed_labels: Optional[torch.Tensor] = None,
            sparse: bool = False,
            seed: Optional[int] = None,
            **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes)
        self.expected_num_pos = check_expected_num_pos(expected_num_pos)
        self.estimator = LabelEstimator(num_examples, num_classes, observed_labels, sparse=sparse, seed=seed)

    def compute(self, logits, targets, index=None):
        return self._terms(logits, targets, index, self.expected_num_pos)[0]

    def split_compute(self, logits, targets, index=None):
        value, estimator_logits = self._terms(logits, targets, index, None)
        return value, torch.stack([torch.sigmoid(logits).sum(), torch.sigmoid(estimator_logits).sum()])

    def split_regularizer(self, statistics, batch_size, num_classes):
        k = self.expected_num_pos
        return 0.5 * (epr_of_sum(statistics[0], batch_size, num_classes, k)
                      + epr_of_sum(statistics[1], batch_size, num_classes, k))

    def _terms(self, logits, targets, index, k: Optional[float]):
        """The loss (with the regularisers when ``k`` is given) and the batch's estimator logits."""
        estimator_logits = self.batch_estimator_logits(logits, targets, index)
        # Each side's per-entry loss is a weighted BCE whose weights hold the other side's
        # stop-gradient probabilities: pos(v) + neg(v) + bce(v; sg(u)) =
        #   (pos + sg(u))·nlog(v) + (neg + 1 - sg(u))·nlog(1 - v)
        p, q = torch.sigmoid(logits.detach()), torch.sigmoid(estimator_logits.detach())
        pos = positive_mask(targets)
        neg_plus_one = (pos - targets).add_(1.0)
        model_term = self.weighted_bce_mean(logits, pos + q, neg_plus_one - q, probs=p, expected_num_pos=k)[0]
        # the model's weights are built; reuse their inputs in place for the estimator's
        estimator_term = self.weighted_bce_mean(
            estimator_logits, pos.add_(p), neg_plus_one.sub_(p), probs=q, expected_num_pos=k)[0]
        return 0.5 * (model_term + estimator_term), estimator_logits

    def extra_repr(self) -> str:
        return f"expected_num_pos={self.expected_num_pos}, " + super().extra_repr()
