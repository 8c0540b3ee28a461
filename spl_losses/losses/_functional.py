"""Functional pieces shared by the losses: logs, the EPR regulariser and the fused (closed-form) backward.

Every loss module builds on these (and on :class:`~spl_losses.losses.base.SPLoss`), never on
another loss module's private names.

Fused losses: most losses here compute their value and their closed-form gradient together
without building an autograd graph (about half the elementwise passes of autograd, which matters
at (256, 1000)); :func:`fused_loss` attaches the gradient. They are first-order only: a double
backward (``create_graph=True``) raises instead of returning zeros.
"""
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["REFERENCE_EPS", "neg_log", "neg_log_terms", "has_infinity", "positive_mask", "expected_positive_regularizer",
           "epr_value_and_grad", "epr_of_sum", "weighted_bce_mean", "fused_loss", "needs_grad", "overwrite_entries",
           "nlog_terms_and_grads", "focal_margin_positive", "reduction_scale"]

#: The epsilon of Cole et al.'s log ``-log(p + 1e-5)``; it changes results in the third decimal.
REFERENCE_EPS = 1e-5


def neg_log(p: torch.Tensor, eps: float = REFERENCE_EPS) -> torch.Tensor:
    """The log of Cole et al.'s reference implementation: ``-log(p + eps)``.

    Args:
        p: Probabilities.
        eps: Added inside the log (1e-5 in the reference).
    """
    return -torch.log(p + eps)


def neg_log_terms(logits: torch.Tensor, stable: bool = False, eps: float = REFERENCE_EPS):
    """``(-log p, -log(1 - p), p)`` of float32 logits, in the reference form (``-log(v + eps)``) or the stable
    log-sigmoid form, through autograd.

    Args:
        logits: Logits.
        stable: Use ``softplus(-x)`` and ``softplus(x)``.
        eps: Epsilon of the reference form.
    """
    p = torch.sigmoid(logits)
    if stable:
        return F.softplus(-logits), F.softplus(logits), p
    return neg_log(p, eps), neg_log(1.0 - p, eps), p


def has_infinity(logits: torch.Tensor) -> bool:
    """Whether any logit is infinite: min and max in one cheap pass (``isfinite().all()`` costs ~20 times
    more on CPU); a NaN makes both NaN (NaN logits go on to give a NaN loss). One device sync.

    Args:
        logits: A non-empty tensor.
    """
    lo, hi = torch.stack(torch.aminmax(logits.detach())).tolist()
    return math.isinf(lo) or math.isinf(hi)


def positive_mask(targets: torch.Tensor) -> torch.Tensor:
    """1.0 at observed positives, 0.0 elsewhere, for float {-1, 0, 1} targets.

    ``clamp_min(0)`` is one arithmetic pass; ``(targets == 1).float()`` costs two slower ones. The
    observed negatives are then ``positive_mask(t) - t`` and all observed entries ``t.abs()``.

    Args:
        targets: (B, C) float targets in the observed encoding.
    """
    return targets.clamp_min(0.0)


# ------------------------------------------------------------------------------------------ EPR
def epr_value_and_grad(probs: torch.Tensor, expected_num_pos: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The EPR regulariser of Cole et al. (2021), ``R = (mean_b sum_c p_bc - k)^2 / C^2``, and ``dR/dp_bc``.

    The value is differentiable by autograd. The gradient, the same for every entry, is
    ``2·(mean_b sum_c p_bc - k) / (C^2·B)``.

    Args:
        probs: (B, C) probabilities (model predictions or label estimates), B >= 1.
        expected_num_pos: k, the expected number of positives per image.

    Returns:
        The 0-dim value and the 0-dim gradient with respect to each entry of ``probs``.
    """
    batch_size, num_classes = probs.shape
    excess = probs.sum() / batch_size - expected_num_pos
    return excess.square() / num_classes ** 2, excess * (2.0 / (num_classes ** 2 * batch_size))


def epr_of_sum(prob_sum: torch.Tensor, batch_size: int, num_classes: int, expected_num_pos: float) -> torch.Tensor:
    """The EPR regulariser ``(S / B - k)^2 / C^2`` from ``S``, the sum of the batch's B·C probabilities.

    Args:
        prob_sum: S, 0-dim (differentiable).
        batch_size: B >= 1.
        num_classes: C.
        expected_num_pos: k.
    """
    return (prob_sum / batch_size - expected_num_pos).square() / num_classes ** 2


def expected_positive_regularizer(probs: torch.Tensor, expected_num_pos: float) -> torch.Tensor:
    """``(mean_b sum_c p_bc - k)^2 / C^2``, the EPR regulariser of Cole et al. (2021), differentiable.

    Args:
        probs: (B, C) probabilities (model predictions or label estimates), B >= 1.
        expected_num_pos: k, the expected number of positives per image.
    """
    return epr_value_and_grad(probs, expected_num_pos)[0]


# ------------------------------------------------------------------------------ weighted BCE
class _WeightedNegLogMean(torch.autograd.Function):
    """``mean(a·(-log(p + eps)) + b·(-log(1 - p + eps)))`` [+ the EPR regulariser of p], p = sigmoid(x).

    A hand-written forward and backward: autograd's generic graph of the same expression (sigmoid,
    logs, products, regulariser) allocates about a dozen (B, C) temporaries for the backward pass;
    the closed form ``dL/dx = [(b / (1 - p + eps) - a / (p + eps)) / (B·C) + r]·p·(1 - p)`` takes
    one, with ``r`` the regulariser's gradient (the same for every entry). With ``exclusive``
    (never ``a > 0`` and ``b > 0`` at one entry) a single log is needed: each entry reads ``q = p``
    where ``a > 0`` and ``q = 1 - p`` elsewhere, and ``b / (1 - p + eps) - a / (p + eps) =
    (b - a) / (q + eps)``. Only ``logits`` gets a gradient; ``probs`` must be ``sigmoid(logits)``
    (detached), ``a`` and ``b`` are constants.
    """

    @staticmethod
    def forward(ctx, logits, probs, a, b, eps: float, exclusive: bool, expected_num_pos: Optional[float]):
        p, a, b = probs.reshape(-1), a.reshape(-1), b.reshape(-1)
        if exclusive:
            # lerp with weight exactly 0 or 1 returns its start / end exactly: q is p or 1 - p
            q_eps = torch.lerp(torch.rsub(p, 1.0), p, torch.sign(a)).add_(eps)
            total = -torch.dot(a + b, torch.log(q_eps))
            ctx.save_for_backward(probs, a, b, q_eps)
        else:
            p_eps = p + eps
            one_minus_p_eps = torch.rsub(p, 1.0).add_(eps)
            total = -(torch.dot(a, torch.log(p_eps)) + torch.dot(b, torch.log(one_minus_p_eps)))
            ctx.save_for_backward(probs, a, b, p_eps, one_minus_p_eps)
        total = total / p.numel()
        ctx.reg_grad = None
        if expected_num_pos is not None:
            reg_value, ctx.reg_grad = epr_value_and_grad(probs, expected_num_pos)
            total = total + reg_value
        ctx.exclusive = exclusive
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        if ctx.exclusive:
            probs, a, b, q_eps = ctx.saved_tensors
            grad = torch.sub(b, a).div_(q_eps)
        else:
            probs, a, b, p_eps, one_minus_p_eps = ctx.saved_tensors
            grad = torch.div(b, one_minus_p_eps).addcdiv_(a, p_eps, value=-1.0)
        grad.mul_(grad_total / grad.numel())
        if ctx.reg_grad is not None:
            grad.add_(ctx.reg_grad * grad_total)
        p = probs.reshape(-1)
        grad.mul_(p).addcmul_(grad, p, value=-1.0)  # times sigmoid'(x) = p·(1 - p), in place
        return grad.view_as(probs), None, None, None, None, None, None


def weighted_bce_mean(
        logits: torch.Tensor,
        pos_weight: torch.Tensor,
        neg_weight: torch.Tensor,
        eps: float = REFERENCE_EPS,
        stable: bool = False,
        probs: Optional[torch.Tensor] = None,
        exclusive: bool = False,
        expected_num_pos: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``mean(a·(-log p) + b·(-log(1-p)))`` over all B·C entries [+ the EPR regulariser], and ``p``.

    This is Cole et al.'s reduction (the mean over all entries, zeros included; a regulariser added
    unscaled), computed with few elementwise passes: the reference form ``-log(v + eps)`` has a
    closed-form backward (once differentiable) and each weighted sum is one dot product; the stable
    form takes ``softplus(-x)`` and ``softplus(x)`` (not ``softplus(-x) + x``, whose sum over entries
    cancels catastrophically for large logits). With ``exclusive=True`` the reference form needs a
    single log. The weights are constants: no gradient flows into them.

    Args:
        logits: (B, C) float32 logits.
        pos_weight: a >= 0, the (B, C) weight of ``-log p``.
        neg_weight: b >= 0, the (B, C) weight of ``-log(1 - p)``.
        eps: Epsilon of the reference form.
        stable: Use the log-sigmoid form (``softplus``) instead of the reference form.
        probs: ``torch.sigmoid(logits).detach()`` if the caller has it already (saves a pass).
        exclusive: Promise that no entry has both ``a > 0`` and ``b > 0`` (hard targets).
        expected_num_pos: k; when given, the EPR regulariser of ``p`` is added.

    Returns:
        The scalar loss and ``p = sigmoid(logits)``, detached (for stop-gradient uses).
    """
    a, b = pos_weight.detach(), neg_weight.detach()
    if stable:
        x = logits.reshape(-1)
        a, b = a.reshape(-1), b.reshape(-1)
        total = (torch.dot(a, F.softplus(-x)) + torch.dot(b, F.softplus(x))) / x.numel()
        if expected_num_pos is not None:
            p_grad = torch.sigmoid(logits)
            return total + expected_positive_regularizer(p_grad, expected_num_pos), p_grad.detach()
        return total, (torch.sigmoid(logits.detach()) if probs is None else probs.detach())
    p = torch.sigmoid(logits.detach()) if probs is None else probs.detach()
    total = _WeightedNegLogMean.apply(logits, p, a, b, float(eps), bool(exclusive), expected_num_pos)
    return total, p


def nlog_terms_and_grads(x: torch.Tensor, stable: bool, eps: float):
    """Return ``(p, a, b, da, db)``: ``a = -log p``, ``b = -log(1-p)`` and their derivatives in the logit.

    The reference form is ``-log(v + eps)``, the stable one the log-sigmoid form. In the stable form
    ``db`` is ``p`` itself: do not modify the results in place.

    Args:
        x: Logits.
        stable: Use the log-sigmoid form.
        eps: Epsilon of the reference form.
    """
    p = torch.sigmoid(x)
    if stable:
        a = F.softplus(-x)
        return p, a, a + x, p - 1.0, p
    one_minus_p = 1.0 - p
    pq = p * one_minus_p
    return p, -torch.log(p + eps), -torch.log(one_minus_p + eps), -pq / (p + eps), pq / (one_minus_p + eps)


def focal_margin_positive(x: torch.Tensor, margin: float, gamma: float):
    """``(1 - q)^gamma·(-log q)`` with ``q = sigmoid(x - margin)``, and its derivative in ``x``.

    Args:
        x: Logits of positive entries.
        margin: Logit margin m (0 for none).
        gamma: Focusing exponent.
    """
    z = x - margin
    q = torch.sigmoid(z)
    nlog_q = F.softplus(-z)
    weight = (1.0 - q).pow(gamma)
    return weight * nlog_q, -weight * ((1.0 - q) + gamma * q * nlog_q)


# ------------------------------------------------------------------------------ fused losses
class _GivenGradient(torch.autograd.Function):
    """A scalar ``scale·value`` whose gradient with respect to ``logits`` is ``scale·grad``."""

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


def overwrite_entries(loss: torch.Tensor, grad: Optional[torch.Tensor], mask: torch.Tensor,
                      terms: Callable[[Tuple[torch.Tensor, ...]], Tuple[torch.Tensor, torch.Tensor]]) -> None:
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


def reduction_scale(shape, reduction: str) -> float:
    """The factor that turns the sum over a (B, C) loss matrix into ``reduction``.

    Args:
        shape: (B, C), both >= 1.
        reduction: ``"sum"``, ``"mean"`` (over B·C) or ``"batchmean"`` (over B).
    """
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / (shape[0] * shape[1])
    return 1.0 / shape[0]
