"""The common base of every loss: input checks, float32 compute and the training-state protocol.

Every loss is called as ``loss(logits, targets, index=None)`` and returns a scalar.

Training-state protocol (one thing, the same for every loss; stateless losses inherit no-ops):

- ``loss.set_epoch(epoch)``: call at the start of every epoch, 0-based like
  ``DistributedSampler.set_epoch`` (the papers' epoch t is ``set_epoch(t - 1)``).
- ``index``: the batch's example positions in the training split (the dataset's ``index`` column).
  Losses with per-example state set ``requires_index = True`` and raise ValueError without it.
- ``loss.update_from_predictions(probs)``: losses with ``needs_predictions = True`` want, after
  each epoch, the (N, C) sigmoid probabilities of the model on the whole training set, row i
  being example ``index == i``. ``loss.predictions_due`` says whether the epoch just finished
  (``self.epoch``, still set) wants them: ``needs_predictions`` by default, False while the update
  would do nothing (e.g. ``em_apl``'s warm-up), so a loop can skip the training-set inference pass.
- All state (epoch, label matrices, estimators) lives in the module's ``state_dict``, so saving
  the loss with the model (or with ``accelerate``'s checkpointing) and loading it continues training
  exactly.

Example loop::

    loss_fn = spl_losses.create_loss("em_apl", num_classes=C, num_examples=N)
    for epoch in range(num_epochs):
        loss_fn.set_epoch(epoch)
        for batch in loader:
            loss = loss_fn(model(batch["image"]), batch["targets"], index=batch["index"])
            ...
        if loss_fn.predictions_due:  # needs_predictions, and this epoch's update would change the state
            loss_fn.update_from_predictions(predict_probs(model, train_set))  # (N, C)
"""
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import check_multi_hot, check_observed_labels

__all__ = ["SPLoss", "neg_log", "REFERENCE_EPS"]

REFERENCE_EPS = 1e-5


def neg_log(p: torch.Tensor, eps: float = REFERENCE_EPS) -> torch.Tensor:
    """The reference implementation's log: ``-log(p + eps)``.

    Args:
        p: Probabilities.
        eps: Added inside the log (1e-5 in the reference).
    """
    return -torch.log(p + eps)


class _WeightedNegLogMean(torch.autograd.Function):
    """``mean(a·(-log(p + eps)) + b·(-log(1 - p + eps)))`` [+ the EPR regularizer of p], p = sigmoid(x).

    A hand-written forward and backward: autograd's generic graph of the same expression (sigmoid,
    logs, products, regularizer) allocates about a dozen (B, C) temporaries for the backward pass;
    the closed form ``dL/dx = [(b / (1 - p + eps) - a / (p + eps)) / (B·C) + r]·p·(1 - p)`` takes
    one. ``r = 2·(mean_b sum_c p - k) / (C²·B)`` is the regularizer's gradient, the same for every
    entry. With ``exclusive`` (never ``a > 0`` and ``b > 0`` at one entry) a single log is needed:
    each entry reads ``q = p`` where ``a > 0`` and ``q = 1 - p`` elsewhere, and
    ``b / (1 - p + eps) - a / (p + eps) = (b - a) / (q + eps)``. Only ``logits`` gets a gradient;
    ``probs`` must be ``sigmoid(logits)`` (detached), ``a`` and ``b`` are constants.
    """

    @staticmethod
    def forward(ctx, logits, probs, a, b, eps: float, exclusive: bool, expected_num_pos: Optional[float]):
        batch_size, num_classes = probs.shape
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
            excess = p.sum() / batch_size - expected_num_pos
            total = total + excess ** 2 / num_classes ** 2
            ctx.reg_grad = 2.0 * excess / (num_classes ** 2 * batch_size)
        ctx.exclusive = exclusive
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
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


class SPLoss(nn.Module):
    """Base class of the project's losses.

    Subclasses implement :meth:`compute` on float32 logits and targets that have been checked.

    Args:
        eps: Epsilon inside the log of the reference form ``-log(p + eps)``.
        stable: Use the numerically stable log-sigmoid form (``softplus(-x)`` for ``-log p``)
            instead of the reference form. Results differ from the reference in the 4th decimal.
        check_inputs: Check shapes, encodings and index ranges on every call (a device sync on GPU).
            Turn off only for inputs known to be valid.
    """

    #: "observed" for the {-1, 0, 1} encoding, "multi_hot" for full labels in {0, 1}.
    target_encoding: str = "observed"
    #: Whether the loss needs the examples' ``index`` (per-example state).
    requires_index: bool = False
    #: Whether the loss wants ``update_from_predictions(probs)`` after each epoch.
    needs_predictions: bool = False
    #: Set by ``register_loss``.
    loss_name: str = ""

    def __init__(self, eps: float = REFERENCE_EPS, stable: bool = False, check_inputs: bool = True):
        super().__init__()
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)
        self.stable = bool(stable)
        self.check_inputs = bool(check_inputs)
        self.epoch = 0

    # ----------------------------------------------------------------- protocol
    @property
    def predictions_due(self) -> bool:
        """Whether to call :meth:`update_from_predictions` after the epoch just finished (``self.epoch``).

        ``needs_predictions`` unless a subclass knows this epoch's update would change nothing (then a
        training loop can skip the full training-set inference pass). Read it after the epoch's batches,
        before the next ``set_epoch``.
        """
        return bool(self.needs_predictions)

    def set_epoch(self, epoch: int) -> None:
        """Set the current epoch (0-based) for losses with epoch schedules.

        Args:
            epoch: 0-based epoch number.
        """
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int (0-based), got {epoch!r}")
        self.epoch = epoch

    def update_from_predictions(self, probs: torch.Tensor) -> None:
        """Receive the model's (N, C) training-set probabilities after an epoch (no-op by default).

        Args:
            probs: (N, C) sigmoid probabilities, row i for the example with ``index == i``.
        """

    def get_extra_state(self) -> torch.Tensor:
        """The epoch, as a 0-dim int64 tensor (so every state dict is tensors only: safetensors-storable)."""
        return torch.tensor(self.epoch, dtype=torch.int64)

    def set_extra_state(self, state: Any) -> None:
        """Restore the epoch from :meth:`get_extra_state` (or a ``{"epoch": n}`` mapping of older files).

        Args:
            state: A 0-dim integer tensor, an int, or a mapping with ``"epoch"``.
        """
        epoch = state.get("epoch", 0) if isinstance(state, dict) else state
        epoch = int(epoch.item()) if isinstance(epoch, torch.Tensor) else epoch
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"a loss state's epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    # ----------------------------------------------------------------- helpers
    def neg_log_terms(self, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(-log p, -log(1 - p), p)`` for float32 logits, in the reference or stable form.

        Args:
            logits: float32 logits.
        """
        p = torch.sigmoid(logits)
        if self.stable:
            return F.softplus(-logits), F.softplus(logits), p
        return neg_log(p, self.eps), neg_log(1.0 - p, self.eps), p

    def weighted_bce_mean(
            self,
            logits: torch.Tensor,
            pos_weight: torch.Tensor,
            neg_weight: torch.Tensor,
            probs: Optional[torch.Tensor] = None,
            exclusive: bool = False,
            expected_num_pos: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean(a·(-log p) + b·(-log(1-p))) [+ EPR regularizer], p)`` with few elementwise passes.

        The same value as combining :meth:`neg_log_terms` by hand and reducing as SPEC §2, but the
        reference form has a closed-form backward (once differentiable) and each weighted sum is
        one dot product; the stable form needs a single softplus (``-log(1-p) = -log p + x``). With
        ``exclusive=True`` the reference form needs a single log: each entry then takes
        ``-log(q + eps)`` with ``q`` = p where ``a > 0`` and ``1 - p`` elsewhere. The weights are
        constants: no gradient flows into them.

        Args:
            logits: (B, C) float32 logits.
            pos_weight: a >= 0, the (B, C) weight of ``-log p``.
            neg_weight: b >= 0, the (B, C) weight of ``-log(1 - p)``.
            probs: ``torch.sigmoid(logits).detach()`` if the caller has it already (saves a pass).
            exclusive: Promise that no entry has both ``a > 0`` and ``b > 0`` (hard targets);
                the result is then the same but computed with one log instead of two.
            expected_num_pos: k; when given, the EPR regularizer ``(mean_b sum_c p - k)² / C²``
                is added, unscaled (SPEC §3).

        Returns:
            The scalar loss and ``p = sigmoid(logits)``, detached (for stop-gradient uses).
        """
        a, b = pos_weight.detach(), neg_weight.detach()
        if self.stable:
            x = logits.reshape(-1)
            a, b = a.reshape(-1), b.reshape(-1)
            total = (torch.dot(a + b, F.softplus(-x)) + torch.dot(b, x)) / x.numel()
            if expected_num_pos is not None:
                p_grad = torch.sigmoid(logits)
                total = total + (p_grad.sum(dim=1).mean() - expected_num_pos) ** 2 / logits.shape[1] ** 2
                return total, p_grad.detach()
            return total, (torch.sigmoid(logits.detach()) if probs is None else probs.detach())
        p = torch.sigmoid(logits.detach()) if probs is None else probs.detach()
        total = _WeightedNegLogMean.apply(logits, p, a, b, self.eps, bool(exclusive), expected_num_pos)
        return total, p

    def check_index(self, index: Optional[torch.Tensor], batch_size: int, num_examples: int) -> torch.Tensor:
        """Check an example-index tensor and return it as int64.

        Args:
            index: (B,) integer example indices.
            batch_size: B.
            num_examples: N; indices must lie in [0, N).
        """
        if index is None:
            raise ValueError(
                f"loss {self.loss_name or type(self).__name__!r} keeps per-example state and needs the batch's "
                "example indices: call loss(logits, targets, index=batch['index'])")
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(index)
        if index.dim() != 1 or index.shape[0] != batch_size:
            raise ValueError(f"index must have shape ({batch_size},), got {tuple(index.shape)}")
        if index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
        if self.check_inputs and index.numel():
            lo, hi = torch.stack(list(torch.aminmax(index))).tolist()
            if lo < 0 or hi >= num_examples:
                raise ValueError(f"index out of range: values in [{lo}, {hi}], expected [0, {num_examples - 1}]")
        return index.long()

    # ----------------------------------------------------------------- call
    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: Optional[torch.Tensor] = None):
        """Compute the loss.

        Args:
            logits: (B, C) logits in any float dtype; computed in float32.
            targets: (B, C) dense targets: multi-hot for full-label losses, {-1, 0, 1} otherwise.
            index: (B,) example indices, needed by losses with per-example state.

        Returns:
            A scalar float32 tensor.
        """
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() != 2:
            raise ValueError(f"logits must be 2-D (batch, num_classes), got shape {tuple(logits.shape)}")
        if self.check_inputs:
            if self.target_encoding == "multi_hot":
                check_multi_hot(targets, logits.shape)
            else:
                check_observed_labels(targets, logits.shape)
        elif not isinstance(targets, torch.Tensor) or targets.shape != logits.shape:
            raise ValueError(f"targets must be a tensor of the logits' shape {tuple(logits.shape)}")
        num_classes = getattr(self, "num_classes", None)
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, but the loss was built for num_classes={num_classes}")
        logits32 = logits.float()
        targets32 = targets.to(device=logits.device, dtype=torch.float32)
        if torch.is_autocast_enabled(logits.device.type):
            # matmul-like ops (dot) would run in half precision under autocast: compute in float32
            with torch.autocast(device_type=logits.device.type, enabled=False):
                return self.compute(logits32, targets32, index)
        return self.compute(logits32, targets32, index)

    def compute(self, logits: torch.Tensor, targets: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"eps={self.eps}, stable={self.stable}"
