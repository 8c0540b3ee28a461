"""Robust multi-label losses used as SPML baselines: Hill, SPLC and ASL (unknown treated as negative).

These losses come from full/missing-label multi-label learning. In the single-positive encoding
{-1, 0, 1} the unknown entries (0) are treated as negatives, like observed negatives (-1).
Their original implementations sum the loss over the batch and classes; each takes a
``reduction`` option:

- ``"sum"`` (default, the originals): sum over all B·C entries;
- ``"mean"``: sum / (B·C), the reduction of Cole et al. used by the rest of this package;
- ``"batchmean"``: sum / B (timm's default for ``AsymmetricLossMultiLabel``).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel
from torch.autograd.function import once_differentiable

from .._registry import register_loss
from .assume_negative import _check_num_classes
from .base import SPLoss

__all__ = ["HillLoss", "SPLCLoss", "AsymmetricAssumeNegativeLoss", "REDUCTIONS", "fused_loss", "needs_grad",
           "overwrite_entries", "focal_margin_positive"]

REDUCTIONS = ("sum", "mean", "batchmean")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_number(name: str, value, minimum: float = -math.inf, maximum: float = math.inf,
                  strict_minimum: bool = False) -> float:
    """Return ``value`` as a float after checking it is a real number in the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_small = value <= minimum if strict_minimum else value < minimum
    if too_small or value > maximum:
        low = "(" if strict_minimum else "["
        raise ValueError(f"{name} must lie in {low}{minimum}, {maximum}], got {value!r}")
    return float(value)


def _reduction_scale(shape, reduction: str) -> float:
    """The factor that turns the sum over a (B, C) loss matrix into the requested reduction."""
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / (shape[0] * shape[1])
    return 1.0 / shape[0]


class _GivenGradient(torch.autograd.Function):
    """A scalar ``scale·value`` whose gradient with respect to ``logits`` is ``scale·grad``.

    The losses below compute their value and their closed-form gradient together, without building
    an autograd graph: about half the elementwise passes of autograd, which matters at (256, 1000).
    First-order only: a double backward (``create_graph=True``) raises instead of returning zeros.
    """

    @staticmethod
    def forward(ctx, logits, value, grad, scale):
        ctx.save_for_backward(grad)
        ctx.scale = scale
        return value * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * (grad_output * ctx.scale), None, None, None


def fused_loss(logits: torch.Tensor, value: torch.Tensor, grad: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """Return ``scale·value`` with gradient ``scale·grad`` towards ``logits`` (first-order only).

    Args:
        logits: (B, C) float32 logits the loss was computed from.
        value: 0-dim tensor, the loss summed over entries, computed without autograd.
        grad: (B, C) derivative of ``value`` with respect to each logit, or None when no gradient is needed.
        scale: Reduction factor (1, 1/B or 1/(B·C)).
    """
    if grad is None or not logits.requires_grad:
        return value * scale
    return _GivenGradient.apply(logits, value, grad, scale)


def needs_grad(logits: torch.Tensor) -> bool:
    """Whether a gradient towards ``logits`` will be asked for.

    Args:
        logits: The loss's input logits.
    """
    return logits.requires_grad and torch.is_grad_enabled()


def overwrite_entries(loss: torch.Tensor, grad: Optional[torch.Tensor], mask: torch.Tensor, terms) -> None:
    """Replace the entries ``mask`` of ``loss`` (and ``grad``) by ``terms(idx)`` computed on those entries only.

    Most entries of a single-positive batch are unknown: the dense formula is computed for every
    entry and the few others (observed, corrected, pseudo-labelled) are recomputed and overwritten.

    Args:
        loss: (B, C) per-entry loss, modified in place.
        grad: (B, C) per-entry gradient or None, modified in place.
        mask: (B, C) bool, the entries to replace.
        terms: Function of the index tuple ``mask.nonzero(as_tuple=True)`` returning ``(loss, grad)`` vectors.
    """
    idx = mask.nonzero(as_tuple=True)
    if idx[0].numel() == 0:
        return
    values, grads = terms(idx)
    loss[idx] = values
    if grad is not None:
        grad[idx] = grads


def focal_margin_positive(x: torch.Tensor, margin: float, gamma: float):
    """``(1 - q)^gamma·(-log q)`` with ``q = sigmoid(x - margin)``, and its derivative in ``x``.

    Args:
        x: Logits of positive entries.
        margin: Logit margin m.
        gamma: Focusing exponent.
    """
    z = x - margin
    q = torch.sigmoid(z)
    nlog_q = F.softplus(-z)
    weight = (1.0 - q).pow(gamma)
    return weight * nlog_q, -weight * ((1.0 - q) + gamma * q * nlog_q)


@register_loss("hill")
class HillLoss(SPLoss):
    """Hill loss (Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing
    Labels", 2021), unknown entries treated as negatives.

    Per entry, with ``p = sigmoid(x)`` and the margin-shifted ``p_m = sigmoid(x - margin)``:

    - observed positive: ``(1 - p_m)^gamma · (-log p_m)`` (a focal loss with margin);
    - unknown or observed negative: ``(lamb - p) · p^2`` (the Hill-shaped loss, which down-weights
      confident "negatives" that are likely missing positives).

    SPEC §4 lists no published SPML number for Hill on the benchmark.

    Args:
        lamb: λ of the negative term (1.5).
        margin: m, the logit margin of the positive term (1.0).
        gamma: γ, focusing exponent of the positive term (2.0).
        reduction: ``"sum"`` (default, the original), ``"mean"`` (sum / (B·C)) or ``"batchmean"`` (sum / B).
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    def __init__(self, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0, reduction: str = "sum",
                 num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(check_inputs=check_inputs)
        self.lamb = _check_number("lamb", lamb)
        self.margin = _check_number("margin", margin)
        self.gamma = _check_number("gamma", gamma, minimum=0.0)
        self.reduction = _check_reduction(reduction)
        self.num_classes = _check_num_classes(num_classes)

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
        return fused_loss(logits, value, grad, _reduction_scale(x.shape, self.reduction))

    def extra_repr(self) -> str:
        return f"lamb={self.lamb}, margin={self.margin}, gamma={self.gamma}, reduction={self.reduction!r}"


@register_loss("splc")
class SPLCLoss(SPLoss):
    """Self-paced loss correction (SPLC, Zhang et al., "Simple and Robust Loss Design for Multi-Label
    Learning with Missing Labels", 2021): a focal-margin BCE whose confident unknowns become positives.

    From epoch ``change_epoch`` on, every unknown entry with ``p > tau`` gets target 1 for the current
    batch (nothing is stored). Then, with target ``t`` and ``p = sigmoid(x - margin·t)`` (margin on
    positives only)::

        L = -[t·(1 - p)^gamma·log p + (1 - t)·p^gamma·log(1 - p)]

    Observed negatives (-1) are never corrected. SPEC §4 lists no published SPML number for SPLC.

    Args:
        tau: τ, probability threshold above which an unknown entry is corrected to positive (0.6).
        change_epoch: First epoch, 0-based like :meth:`set_epoch`, with corrections (1: from the
            second epoch on, the original's convention).
        margin: m, logit margin on positives (1.0).
        gamma: γ, focusing exponent (2.0).
        reduction: ``"sum"`` (default, the original), ``"mean"`` (sum / (B·C)) or ``"batchmean"`` (sum / B).
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    def __init__(self, tau: float = 0.6, change_epoch: int = 1, margin: float = 1.0, gamma: float = 2.0,
                 reduction: str = "sum", num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(check_inputs=check_inputs)
        self.tau = _check_number("tau", tau, 0.0, 1.0)
        if isinstance(change_epoch, bool) or not isinstance(change_epoch, int) or change_epoch < 0:
            raise ValueError(f"change_epoch must be a non-negative int (0-based epoch), got {change_epoch!r}")
        self.change_epoch = change_epoch
        self.margin = _check_number("margin", margin)
        self.gamma = _check_number("gamma", gamma, minimum=0.0)
        self.reduction = _check_reduction(reduction)
        self.num_classes = _check_num_classes(num_classes)

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
            overwrite_entries(loss, grad, self._positives(targets, p),
                              lambda idx: focal_margin_positive(x[idx], self.margin, self.gamma))
            value = loss.sum()
        return fused_loss(logits, value, grad, _reduction_scale(x.shape, self.reduction))

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, change_epoch={self.change_epoch}, margin={self.margin}, gamma={self.gamma}, "
                f"reduction={self.reduction!r}")


@register_loss("asl")
class AsymmetricAssumeNegativeLoss(SPLoss):
    """Asymmetric loss (ASL, Ridnik et al., ICCV 2021) with unknown labels treated as negatives.

    A thin adapter around :class:`timm.loss.AsymmetricLossMultiLabel` (not a re-implementation): the
    {-1, 0, 1} targets become multi-hot ``targets == 1`` and the rest is timm's loss, with timm's
    defaults (``gamma_neg=4``, ``gamma_pos=1``, ``clip=0.05``, ``eps=1e-8``). timm's own default
    reduction is ``"batchmean"`` (sum / B); this adapter defaults to ``"sum"``, the original ASL
    reduction. SPEC §4 lists ASL as a baseline with no published SPML number.

    Args:
        gamma_neg: Focusing exponent of negatives.
        gamma_pos: Focusing exponent of positives.
        clip: Probability margin added to negatives (asymmetric clipping); None or 0 disables it.
        eps: Probabilities are clamped to at least ``eps`` before the log (timm's ``eps``).
        reduction: ``"sum"`` (default, the original), ``"mean"`` (sum / (B·C)) or ``"batchmean"`` (sum / B).
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: Optional[float] = 0.05,
                 eps: float = 1e-8, reduction: str = "sum", num_classes: Optional[int] = None,
                 check_inputs: bool = True):
        super().__init__(eps=eps, check_inputs=check_inputs)
        _check_number("gamma_neg", gamma_neg, minimum=0.0)
        _check_number("gamma_pos", gamma_pos, minimum=0.0)
        if clip is not None:
            _check_number("clip", clip, 0.0, 1.0)
        self.num_classes = _check_num_classes(num_classes)
        self.asl = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps,
                                            reduction=_check_reduction(reduction))

    @property
    def reduction(self) -> str:
        return self.asl.reduction

    def compute(self, logits, targets, index=None):
        return self.asl(logits, (targets == 1).float())

    def extra_repr(self) -> str:
        a = self.asl
        return (f"gamma_neg={a.gamma_neg}, gamma_pos={a.gamma_pos}, clip={a.clip}, eps={a.eps}, "
                f"reduction={a.reduction!r}")
