"""ROLE's online label estimator (Cole et al., CVPR 2021) combined with any registered SPML loss.

Users of the original asked to pair the label estimator with other losses; no public
implementation does this. ``create_loss("label_estimation", base_loss="em", ...)``,
``create_loss("em", label_estimation=True, ...)`` or :func:`with_label_estimator` builds it.
"""
from typing import Any, Dict, Optional, Union

import torch

from .._registry import get_loss_class, loss_kwargs, register_loss
from ._checks import check_expected_num_pos, check_num_classes, check_number
from ._citations import COLE_2021
from ._distributed import combine_terms, split_shape
from ._functional import epr_of_sum, epr_value_and_grad, fused_loss, needs_grad, nlog_terms_and_grads
from .base import SPLoss
from .estimator import EstimatorLoss, LabelEstimator

__all__ = ["LabelEstimationLoss", "with_label_estimator"]


def _build_base_loss(base_loss: Union[str, SPLoss], base_kwargs: Optional[Dict[str, Any]],
                     shared: Dict[str, Any]) -> SPLoss:
    if isinstance(base_loss, str):
        base_loss = get_loss_class(base_loss)(**loss_kwargs(base_loss, available=shared, options=base_kwargs))
    elif base_kwargs:
        raise ValueError("base_kwargs is only used when base_loss is a registry name, not a loss instance")
    if not isinstance(base_loss, SPLoss):
        raise TypeError(f"base_loss must be a registered loss name or an SPLoss, got {type(base_loss).__name__}")
    if base_loss.target_encoding != "observed":
        raise ValueError(f"base_loss {base_loss.loss_name!r} takes full multi-hot labels; label estimation "
                         "needs a single-positive loss on {-1, 0, 1} targets")
    if isinstance(base_loss, EstimatorLoss):
        raise ValueError(f"base_loss {base_loss.loss_name!r} already has a label estimator")
    return base_loss


@register_loss("label_estimation")
class LabelEstimationLoss(EstimatorLoss):
    """A registered SPML loss plus ROLE's online label estimator (Cole et al., CVPR 2021).

    With ``y_hat = sigmoid(estimator[index])``, ``sg`` stop-gradient, ``w = estimate_weight``, and
    means over the B·C entries::

        total = (1 - w)·base(logits, targets)                     # the chosen loss
                + w·mean(bce(p; sg(y_hat)))                       # classifier follows the estimates
                + 0.5·[mean(pos(y_hat) + bce(y_hat; sg(p))) + epr_reg(y_hat)]   # the estimator's ROLE terms

    where ``pos`` is ``nlog`` on observed positives (``nlog(1 - y_hat)`` on observed negatives) and
    ``bce(u; t) = t·nlog(u) + (1-t)·nlog(1-u)``. The classifier gets gradient from the first two
    lines only, the estimator from the last only. With ``base_loss="epr"`` and ``w = 0.5`` this is
    exactly ROLE (published mAP VOC / COCO / NUS / CUB 87.9 / 66.3 / 43.1 / 15.0 end-to-end,
    88.2 / 69.0 / 51.0 / 16.8 linear-init); no published number exists for other base losses.

    The estimator is ``loss.estimator`` (a :class:`~spl_losses.losses.LabelEstimator`, as in
    ``role``): give its parameters their own optimizer group with 10× the learning rate. The training
    protocol (``set_epoch``, ``update_from_predictions``) is forwarded to the base loss, whose state
    is part of this module's state dict. Every call needs the batch's ``index``. As with ``role``,
    the estimator's gradient is a dense (N, C) tensor unless ``sparse=True`` (then a step costs
    O(B·C) whatever N; pair it with ``spl_losses.optim.LazyAdam``, dense Adam's result).

    Example::

        loss_fn = spl_losses.create_loss("label_estimation", base_loss="em", base_kwargs=dict(alpha=0.1),
                                         num_classes=80, num_examples=len(train), expected_num_pos=2.9)
        optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": lr},
                                      {"params": loss_fn.estimator.parameters(), "lr": 10 * lr}])

    Args:
        num_classes: C, the number of classes (estimator columns).
        num_examples: N, the number of training examples (estimator rows).
        expected_num_pos: k, the expected number of positives per image (EPR regularizer of the estimator).
        base_loss: Registry name (``"em"``, ``"ll_r"``, ...) or an :class:`SPLoss` instance. Built by
            name, it receives ``num_classes``, ``num_examples``, ``expected_num_pos``, ``observed_labels``,
            ``num_epochs``, ``eps``, ``stable``, ``check_inputs`` where its constructor takes them
            (:func:`spl_losses.loss_kwargs`).
        base_kwargs: Further constructor arguments of the base loss (only with a name); one it does
            not take is an error.
        observed_labels: Optional (N, C) {-1, 0, 1} training labels; they initialise the estimator.
        estimate_weight: w, weight of the classifier's BCE towards the estimates (0.5, ROLE's weighting).
        sparse: Sparse estimator gradients (then use ``spl_losses.optim.LazyAdam`` for the estimator).
        seed: Seed of the estimator's random initialisation (None: torch's global generator).
        num_epochs: T, passed to a base loss with epoch schedules (``em_apl``, ``gr``); unused otherwise.
        eps: Epsilon of the reference log ``-log(p + eps)``, here and in the base loss.
        stable: Use the log-sigmoid form, here and in the base loss.
        check_inputs: Validate inputs on every call.
    """

    citation = COLE_2021
    paper = "Cole et al., CVPR 2021 (label estimator)"
    batch_reduction = "mean"  # of its own terms; the base loss combines its own way
    split_statistics = 1  # the sum of y_hat over the batch

    def __init__(
            self,
            num_classes: int,
            num_examples: int,
            expected_num_pos: float,
            base_loss: Union[str, SPLoss] = "an",
            base_kwargs: Optional[Dict[str, Any]] = None,
            observed_labels: Optional[torch.Tensor] = None,
            estimate_weight: float = 0.5,
            sparse: bool = False,
            seed: Optional[int] = None,
            num_epochs: Optional[int] = None,
            **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes)
        self.expected_num_pos = check_expected_num_pos(expected_num_pos)
        self.estimate_weight = check_number("estimate_weight", estimate_weight, 0.0, 1.0)
        shared = dict(num_classes=num_classes, num_examples=num_examples, expected_num_pos=expected_num_pos,
                      observed_labels=observed_labels, num_epochs=num_epochs, **kwargs)
        self.base_loss = _build_base_loss(base_loss, base_kwargs, shared)
        base_classes = getattr(self.base_loss, "num_classes", None)
        if base_classes is not None and base_classes != num_classes:
            raise ValueError(f"base_loss was built for num_classes={base_classes}, expected {num_classes}")
        self.estimator = LabelEstimator(num_examples, num_classes, observed_labels, sparse=sparse, seed=seed)

    @property
    def unbounded_terms(self) -> str:
        """The base loss's unbounded terms, and the stable form's."""
        return f"base loss {self.base_loss.loss_name!r}: {self.base_loss.unbounded_terms}; {SPLoss.unbounded_terms}"

    @property
    def needs_predictions(self) -> bool:
        """Whether the base loss wants ``update_from_predictions`` after each epoch."""
        return self.base_loss.needs_predictions

    @property
    def predictions_due(self) -> bool:
        """Whether the base loss's ``update_from_predictions`` would do anything after this epoch."""
        return self.base_loss.predictions_due

    def set_epoch(self, epoch: int) -> None:
        """Set the current epoch (0-based) here and in the base loss.

        Args:
            epoch: 0-based epoch number.
        """
        super().set_epoch(epoch)
        self.base_loss.set_epoch(epoch)

    def update_from_predictions(self, probs: torch.Tensor):
        """Forward the (N, C) training-set probabilities to the base loss.

        Args:
            probs: (N, C) sigmoid probabilities, row i for the example with ``index == i``.
        """
        return self.base_loss.update_from_predictions(probs)

    def compute(self, logits, targets, index=None):
        estimator_logits = self.batch_estimator_logits(logits, targets, index)
        base_value = self.base_loss.compute(logits, targets, index if self.base_loss.requires_index else None)
        return (1.0 - self.estimate_weight) * base_value + self._own_terms(logits, targets, estimator_logits, True)

    def split_compute(self, logits, targets, index=None):
        estimator_logits = self.batch_estimator_logits(logits, targets, index)
        value = self._own_terms(logits, targets, estimator_logits, False)
        return value, torch.sigmoid(estimator_logits).sum().reshape(1)

    def split_regularizer(self, statistics, batch_size, num_classes):
        return 0.5 * epr_of_sum(statistics[0], batch_size, num_classes, self.expected_num_pos)

    def _forward_split(self, logits, targets, index, share, failure=None):
        """The base loss on the split batch (its own exchanges), then this wrapper's terms (one exchange)."""
        value, stats, failure = self._local_stage(logits, targets, index, failure)
        base_index = index if self.base_loss.requires_index else None
        base_value = self.base_loss._forward_split(logits, targets, base_index, share, failure)
        own = combine_terms(share, value, stats, self.split_statistics, *split_shape(logits), "mean",
                            self.split_regularizer, None, getattr(logits, "device", None))
        return (1.0 - self.estimate_weight) * base_value + own

    def _own_terms(self, logits, targets, estimator_logits, with_regularizer: bool):
        """The classifier's pull towards the estimates and the estimator's ROLE terms (its regulariser if asked)."""
        n = logits.numel()
        logits_need_grad, estimator_needs_grad = needs_grad(logits), needs_grad(estimator_logits)
        with torch.no_grad():  # values with closed-form gradients; each side gets only its own terms
            p, a, b, da, db = nlog_terms_and_grads(logits.detach(), self.stable, self.eps)
            q, a_q, b_q, da_q, db_q = nlog_terms_and_grads(estimator_logits.detach(), self.stable, self.eps)
            # classifier: bce(p; sg(q)) = q·a + (1-q)·b
            follow_value = (a - b).mul_(q).add_(b).sum()
            follow_grad = (da - db).mul_(q).add_(db) if logits_need_grad else None
            # estimator: 0.5·[pos(q) + bce(q; sg(p)) + epr_reg(q)]
            weight_a = p + (targets == 1).float()
            weight_b = (1.0 - p).add_((targets == -1).float())
            estimator_value = (weight_a * a_q).add_(weight_b * b_q).sum().mul_(0.5 / n)
            estimator_grad = None
            if estimator_needs_grad:
                estimator_grad = (weight_a.mul_(da_q)).add_(weight_b.mul_(db_q)).mul_(0.5 / n)
            if with_regularizer:
                reg_value, reg_grad = epr_value_and_grad(q, self.expected_num_pos)
                estimator_value += 0.5 * reg_value
                if estimator_grad is not None:
                    estimator_grad.add_(q.mul(1.0 - q).mul_(0.5 * reg_grad))
        return (fused_loss(logits, follow_value, follow_grad, self.estimate_weight / n)
                + fused_loss(estimator_logits, estimator_value, estimator_grad, 1.0))

    def extra_repr(self) -> str:
        return (f"expected_num_pos={self.expected_num_pos}, estimate_weight={self.estimate_weight}, "
                + super().extra_repr())


def with_label_estimator(
        loss: Union[str, SPLoss],
        num_examples: int,
        expected_num_pos: float,
        num_classes: Optional[int] = None,
        **kwargs,
) -> LabelEstimationLoss:
    """Wrap a loss (instance or registry name) with ROLE's online label estimator.

    Args:
        loss: An :class:`SPLoss` on {-1, 0, 1} targets, or a registry name.
        num_examples: N, the training-set size.
        expected_num_pos: k, the expected number of positives per image.
        num_classes: C; read from ``loss.num_classes`` when omitted.
        **kwargs: Further arguments of :class:`LabelEstimationLoss` (``observed_labels``,
            ``estimate_weight``, ``base_kwargs``, ``sparse``, ``seed``, ...).

    Returns:
        The wrapped loss, called as ``loss(logits, targets, index=index)``.

    Example::

        >>> em = spl_losses.create_loss("em", alpha=0.1)
        >>> loss_fn = with_label_estimator(em, num_examples=N, expected_num_pos=2.9, num_classes=80)
    """
    if num_classes is None:
        num_classes = getattr(loss, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes is required: the loss does not record its number of classes")
    return LabelEstimationLoss(num_classes=num_classes, num_examples=num_examples,
                               expected_num_pos=expected_num_pos, base_loss=loss, **kwargs)
