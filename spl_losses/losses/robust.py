"""Robust multi-label losses used as SPML baselines: Hill, SPLC and ASL (unknown treated as negative).

These losses come from full/missing-label multi-label learning. In the single-positive encoding
{-1, 0, 1} the unknown entries (0) are treated as negatives, like observed negatives (-1).
Their original implementations sum the loss over the batch and classes; each takes a
``reduction`` option:

- ``"sum"`` (default, the originals): sum over all B·C entries;
- ``"mean"``: sum / (B·C), the reduction of Cole et al. used by the rest of this package;
- ``"batchmean"``: sum / B (timm's default for ``AsymmetricLossMultiLabel``).
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel

from .._registry import register_loss
from ._checks import check_num_classes, check_non_negative_int, check_number, check_reduction
from ._citations import RIDNIK_2021, ZHANG_2021
from ._functional import focal_margin_positive, fused_loss, needs_grad, overwrite_entries, reduction_scale
from .base import SPLoss

__all__ = ["HillLoss", "SPLCLoss", "AsymmetricAssumeNegativeLoss"]


@register_loss("hill")
class HillLoss(SPLoss):
    """Hill loss (Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing
    Labels", 2021), unknown entries treated as negatives.

    Per entry, with ``p = sigmoid(x)`` and the margin-shifted ``p_m = sigmoid(x - margin)``:

    - observed positive: ``(1 - p_m)^gamma · (-log p_m)`` (a focal loss with margin);
    - unknown or observed negative: ``(lamb - p) · p^2`` (the Hill-shaped loss, which down-weights
      confident "negatives" that are likely missing positives).

    No SPML result on the benchmark of Cole et al. has been published for Hill.

    Args:
        lamb: λ of the negative term (1.5).
        margin: m, the logit margin of the positive term (1.0).
        gamma: γ, focusing exponent of the positive term (2.0).
        reduction: ``"sum"`` (default, the original), ``"mean"`` (sum / (B·C)) or ``"batchmean"`` (sum / B).
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    paper = "Zhang et al., 2021 (Hill)"
    citation = ZHANG_2021
    #: The split-batch combination follows the ``reduction`` option.
    batch_reduction = property(lambda self: self.reduction)
    unbounded_terms = "the positive term (1 - p_m)^gamma·(-log p_m) is infinite for an observed positive at logit -inf"

    def __init__(self, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0, reduction: str = "sum",
                 num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(check_inputs=check_inputs)
        self.lamb = check_number("lamb", lamb)
        self.margin = check_number("margin", margin)
        self.gamma = check_number("gamma", gamma, minimum=0.0)
        self.reduction = check_reduction(reduction)
        self.num_classes = check_num_classes(num_classes)

    def compute(self, logits, targets, index=None):
        with_grad = needs_grad(logits)
        with torch.no_grad():
            x = logits.detach()
            p = torch.sigmoid(x)
            p2 = p * p
            loss = p2 * (self.lamb - p)  # unknown / negative: (lamb - p)·p^2
            grad = p2.mul_((1.0 - p) * (2.0 * self.lamb - 3.0 * p)) if with_grad else None
            overwrite_entries(loss, grad, targets == 1,
                              lambda idx: focal_margin_positive(x[idx], self.margin, self.gamma))
            value = loss.sum()
        return fused_loss(logits, value, grad, reduction_scale(x.shape, self.reduction))

    def extra_repr(self) -> str:
        return f"lamb={self.lamb}, margin={self.margin}, gamma={self.gamma}, reduction={self.reduction!r}"


@register_loss("splc")
class SPLCLoss(SPLoss):
    """Self-paced loss correction (SPLC, Zhang et al., "Simple and Robust Loss Design for Multi-Label
    Learning with Missing Labels", 2021): a focal-margin BCE whose confident unknowns become positives.

    With ``p = sigmoid(x)`` and the margin-shifted ``p_m = sigmoid(x - margin)``, per entry:

    - observed positive: ``(1 - p_m)^gamma·(-log p_m)`` (the margin applies to observed positives only);
    - unknown entry with ``p > tau``, from epoch ``change_epoch`` on: corrected to positive for the
      current batch (nothing is stored) and scored ``(1 - p)^gamma·(-log p)``, without the margin;
    - any other entry: ``p^gamma·(-log(1 - p))``.

    This is the original implementation's order (``losses.py``, class ``SPLC``): the margin shifts
    the observed positives' logits, then the correction reads the unshifted probabilities of the
    unknown entries and scores them unshifted. Observed negatives (-1), which the original's {0, 1}
    targets do not have, are never corrected. No SPML result on the benchmark of Cole et al. has
    been published for SPLC.

    Args:
        tau: τ, probability threshold above which an unknown entry is corrected to positive (0.6).
        change_epoch: First epoch, 0-based like :meth:`set_epoch`, with corrections (1: from the
            second epoch on, the original's convention).
        margin: m, logit margin of the observed positives (1.0).
        gamma: γ, focusing exponent (2.0).
        reduction: How the per-entry losses are combined: ``"sum"`` (the original's, default),
            ``"mean"`` over the B·C entries or ``"batchmean"`` (sum / B).
        num_classes: C, compared with the logits' second dimension when given.
        check_inputs: Check the targets' encoding and shape on every call.
    """

    citation = ZHANG_2021
    paper = "Zhang et al., 2021 (SPLC)"
    #: The split-batch combination follows the ``reduction`` option.
    batch_reduction = property(lambda self: self.reduction)
    unbounded_terms = ("the positive term (1 - p)^gamma·(-log p) is infinite for a positive at logit -inf, and the "
                       "negative term p^gamma·(-log(1 - p)) for an uncorrected negative at +inf (an observed negative, "
                       "or an unknown entry before change_epoch)")

    def __init__(self, tau: float = 0.6, change_epoch: int = 1, margin: float = 1.0, gamma: float = 2.0,
                 reduction: str = "sum", num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(check_inputs=check_inputs)
        self.tau = check_number("tau", tau, 0.0, 1.0)
        self.change_epoch = check_non_negative_int("change_epoch", change_epoch)
        self.margin = check_number("margin", margin)
        self.gamma = check_number("gamma", gamma, minimum=0.0)
        self.reduction = check_reduction(reduction)
        self.num_classes = check_num_classes(num_classes)

    def corrected_targets(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the batch's {0, 1} targets after this epoch's correction.

        Args:
            logits: (B, C) float32 logits.
            targets: (B, C) {-1, 0, 1} observed labels.
        """
        return self._positives(targets, torch.sigmoid(logits.detach())).float()

    def _positives(self, targets: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        positive = targets == 1
        if self.epoch >= self.change_epoch:
            positive = positive | ((targets == 0) & (probs > self.tau))
        return positive

    def compute(self, logits, targets, index=None):
        with_grad = needs_grad(logits)
        with torch.no_grad():
            x = logits.detach()
            p = torch.sigmoid(x)
            nlog_1mp = F.softplus(x)
            p_gamma = p.pow(self.gamma)
            loss = p_gamma * nlog_1mp  # target 0: p^gamma·(-log(1-p))
            grad = p_gamma.mul_(self.gamma * (1.0 - p) * nlog_1mp + p) if with_grad else None

            def positive_terms(idx):  # the margin only on observed positives, not on corrected entries
                return focal_margin_positive(x[idx], self.margin * (targets[idx] == 1), self.gamma)

            overwrite_entries(loss, grad, self._positives(targets, p), positive_terms)
            value = loss.sum()
        return fused_loss(logits, value, grad, reduction_scale(x.shape, self.reduction))

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, change_epoch={self.change_epoch}, margin={self.margin}, gamma={self.gamma}, "
                f"reduction={self.reduction!r}")


@register_loss("asl")
class AsymmetricAssumeNegativeLoss(SPLoss):
    """Asymmetric loss (ASL, Ridnik et al., ICCV 2021) with unknown labels treated as negatives.

    A thin adapter around :class:`timm.loss.AsymmetricLossMultiLabel` (not a re-implementation): the
    {-1, 0, 1} targets become multi-hot ``targets == 1`` and the rest is timm's loss. The defaults
    are the paper's recommended setting, used by its training script: ``gamma_pos=0``,
    ``gamma_neg=4``, ``clip=0.05``, the focusing weight detached from the graph
    (``disable_torch_grad_focal_loss=True``) and the sum over entries. (timm's own defaults differ:
    ``gamma_pos=1``, a focusing weight with gradient and ``"batchmean"``.) No SPML result on the
    benchmark of Cole et al. has been published for ASL.

    Args:
        gamma_neg: Focusing exponent of negatives (4).
        gamma_pos: Focusing exponent of positives (0).
        clip: Probability margin added to negatives (asymmetric clipping); None or 0 disables it.
        eps: Probabilities are clamped to at least ``eps`` before the log (timm's ``eps``).
        disable_torch_grad_focal_loss: Treat the focusing weight as a constant in the backward pass.
        smoothing: timm's label smoothing of the multi-hot targets towards 0.5 (0: none).
        weight: Optional (C,) per-class weight (timm's ``weight``).
        pos_weight: Optional weight of the positive term, a number or (C,) (timm's ``pos_weight``).
        reduction: ``"sum"`` (default, the original), ``"mean"`` (sum / (B·C)) or ``"batchmean"`` (sum / B).
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    citation = RIDNIK_2021
    paper = "Ridnik et al., ICCV 2021"
    #: The split-batch combination follows the ``reduction`` option.
    batch_reduction = property(lambda self: self.reduction)
    unbounded_terms = "with eps=0 the log of a probability is -inf at an infinite logit"

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: Optional[float] = 0.05,
                 eps: float = 1e-8, disable_torch_grad_focal_loss: bool = True, smoothing: float = 0.0,
                 weight: Optional[torch.Tensor] = None, pos_weight: Optional[Union[torch.Tensor, float]] = None,
                 reduction: str = "sum", num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(eps=eps, check_inputs=check_inputs)
        check_number("gamma_neg", gamma_neg, minimum=0.0)
        check_number("gamma_pos", gamma_pos, minimum=0.0)
        if clip is not None:
            check_number("clip", clip, 0.0, 1.0)
        check_number("smoothing", smoothing, 0.0, 1.0, strict_maximum=True)
        if isinstance(pos_weight, (int, float)):
            check_number("pos_weight", pos_weight)
        self.num_classes = check_num_classes(num_classes)
        self.asl = AsymmetricLossMultiLabel(
            gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps,
            disable_torch_grad_focal_loss=bool(disable_torch_grad_focal_loss), smoothing=smoothing,
            reduction=check_reduction(reduction), weight=weight, pos_weight=pos_weight)

    @property
    def reduction(self) -> str:
        return self.asl.reduction

    def compute(self, logits, targets, index=None):
        return self.asl(logits, (targets == 1).float())

    def extra_repr(self) -> str:
        a = self.asl
        return (f"gamma_neg={a.gamma_neg}, gamma_pos={a.gamma_pos}, clip={a.clip}, eps={a.eps}, "
                f"disable_torch_grad_focal_loss={a.disable_torch_grad_focal_loss}, reduction={a.reduction!r}")
