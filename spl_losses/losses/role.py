"""Regularized online label estimation (ROLE) of Cole et al. (CVPR 2021), and its label estimator."""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import register_loss
from ..labels import check_observed_labels
from .assume_negative import _check_num_classes, positive_mask
from .base import SPLoss
from .epr import _check_expected_num_pos

__all__ = ["LabelEstimator", "ROLELoss"]

_UNOBSERVED_INIT = math.log(0.6 / 0.4)  # logit(0.6): unobserved estimates start in (0.4, 0.6)
_POSITIVE_INIT = math.log(0.995 / 0.005)  # logit(0.995)
_NEGATIVE_INIT = -_POSITIVE_INIT  # logit(0.005)


class LabelEstimator(nn.Module):
    """One free logit per (training example, class): ``y_hat = sigmoid(logits[index])``.

    The estimator is held once, in float32, as the parameter ``logits`` of shape (N, C). Train it in
    its own optimizer parameter group with 10× the model's learning rate (the reference uses Adam)::

        optimizer = torch.optim.Adam([
            {"params": model.parameters(), "lr": lr},
            {"params": loss_fn.estimator.parameters(), "lr": 10 * lr},
        ])

    By default the gradient is dense, as the reference's Adam expects: every backward pass
    materialises an (N, C) float32 gradient (400 MB at N = 100,000, C = 1,000), so its cost grows
    with N. With ``sparse=True`` the gradient is a sparse tensor holding only the batch's rows, so a
    step costs O(B·C); ``torch.optim.Adam`` rejects sparse gradients, so give the estimator its own
    optimizer and step both::

        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        estimator_optimizer = torch.optim.SparseAdam(loss_fn.estimator.parameters(), lr=10 * lr)

    (SparseAdam updates its moments only for the rows seen, which differs slightly from dense Adam,
    whose moments decay for every row on every step.) Keep the estimator in float32: cast the model,
    not the loss, to half precision; the loss reads the estimator in float32 either way.

    Args:
        num_examples: N, the number of training examples.
        num_classes: C, the number of classes.
        observed_labels: Optional (N, C) {-1, 0, 1} observed labels to initialise from (SPEC §3).
            Without them every entry is initialised as unobserved.
        sparse: Produce sparse gradients (see above).
        seed: Seed of the uniform initialisation of unobserved entries; None uses torch's global RNG.
    """

    def __init__(
            self,
            num_examples: int,
            num_classes: int,
            observed_labels: Optional[torch.Tensor] = None,
            sparse: bool = False,
            seed: Optional[int] = None,
    ):
        super().__init__()
        for name, value in (("num_examples", num_examples), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_examples = num_examples
        self.num_classes = num_classes
        self.sparse = bool(sparse)
        self.logits = nn.Parameter(torch.empty(num_examples, num_classes, dtype=torch.float32))
        self.init_from_observed(observed_labels, seed=seed)

    @torch.no_grad()
    def init_from_observed(self, observed_labels: Optional[torch.Tensor] = None, seed: Optional[int] = None) -> None:
        """(Re)initialise per SPEC §3: unobserved uniform in (-logit(0.6), logit(0.6)), observed
        positives at logit(0.995), observed negatives at logit(0.005).

        Args:
            observed_labels: (N, C) {-1, 0, 1} tensor, or None (everything unobserved).
            seed: Seed of the uniform draw; None uses torch's global RNG.
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.logits.device).manual_seed(int(seed))
        self.logits.uniform_(-_UNOBSERVED_INIT, _UNOBSERVED_INIT, generator=generator)
        if observed_labels is None:
            return
        observed_labels = torch.as_tensor(observed_labels)
        check_observed_labels(observed_labels, self.logits.shape, name="observed_labels")
        observed_labels = observed_labels.to(self.logits.device)
        self.logits.masked_fill_(observed_labels == 1, _POSITIVE_INIT)
        self.logits.masked_fill_(observed_labels == -1, _NEGATIVE_INIT)

    @torch.no_grad()
    def init_from_estimates(self, estimates: torch.Tensor, clamp: float = 1e-6) -> None:
        """Initialise from an earlier estimate, e.g. hand-off from linear training to fine-tuning.

        Args:
            estimates: (N, C) probabilities, as returned by :meth:`estimates` (or an estimator's
                ``logits`` via ``load_state_dict`` for an exact copy).
            clamp: Probabilities are clamped to [clamp, 1 - clamp] before taking the logit.
        """
        estimates = torch.as_tensor(estimates)
        if tuple(estimates.shape) != tuple(self.logits.shape):
            raise ValueError(f"estimates have shape {tuple(estimates.shape)}, expected {tuple(self.logits.shape)}")
        if not bool(torch.isfinite(estimates).all()) or bool(((estimates < 0) | (estimates > 1)).any()):
            raise ValueError("estimates must be finite probabilities in [0, 1]")
        self.logits.copy_(torch.logit(estimates.float().clamp(clamp, 1.0 - clamp)))

    @torch.no_grad()
    def estimates(self) -> torch.Tensor:
        """Return the current (N, C) label estimates ``sigmoid(logits)`` (a detached copy)."""
        return torch.sigmoid(self.logits.detach())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Return the (B, C) estimator logits of the examples ``index``.

        Args:
            index: (B,) int64 example indices.
        """
        return F.embedding(index, self.logits, sparse=self.sparse)

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}, num_classes={self.num_classes}, sparse={self.sparse}"


@register_loss("role")
class ROLELoss(SPLoss):
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
        sparse: Give the estimator sparse gradients (pair with ``torch.optim.SparseAdam``).
        seed: Seed of the estimator's initialisation.
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    requires_index = True

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
        self.num_classes = _check_num_classes(num_classes)
        self.expected_num_pos = _check_expected_num_pos(expected_num_pos)
        self.estimator = LabelEstimator(num_examples, num_classes, observed_labels, sparse=sparse, seed=seed)

    def compute(self, logits, targets, index=None):
        index = self.check_index(index, logits.shape[0], self.estimator.num_examples)
        estimator_logits = self.estimator(index.to(self.estimator.logits.device)).to(logits.device, torch.float32)
        # Each side's per-entry loss is a weighted BCE whose weights hold the other side's
        # stop-gradient probabilities: pos(v) + neg(v) + bce(v; sg(u)) =
        #   (pos + sg(u))·nlog(v) + (neg + 1 - sg(u))·nlog(1 - v)
        p, q = torch.sigmoid(logits.detach()), torch.sigmoid(estimator_logits.detach())
        pos = positive_mask(targets)
        neg_plus_one = (pos - targets).add_(1.0)
        k = self.expected_num_pos
        model_term = self.weighted_bce_mean(logits, pos + q, neg_plus_one - q, probs=p, expected_num_pos=k)[0]
        # the model's weights are built; reuse their inputs in place for the estimator's
        estimator_term = self.weighted_bce_mean(
            estimator_logits, pos.add_(p), neg_plus_one.sub_(p), probs=q, expected_num_pos=k)[0]
        return 0.5 * (model_term + estimator_term)

    def extra_repr(self) -> str:
        return f"expected_num_pos={self.expected_num_pos}, " + super().extra_repr()
