"""The common base of every loss: input checks, float32 compute, hostile inputs and the training-state protocol.

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

Hostile inputs, the same rule for every loss:

- An empty batch (B = 0) gives exactly 0 with a zero gradient, still connected to the logits (and
  to a label estimator), so ``backward()`` works.
- With ``check_inputs`` (the default), infinite logits give the loss's limit where it is finite
  (e.g. the reference log ``-log(p + 1e-5)`` is bounded) and a ValueError naming the loss and the
  unbounded term otherwise. Without ``check_inputs`` they give whatever the arithmetic gives.
- NaN logits give a NaN loss.
- Losses with per-example state accept an index repeated within a batch when its targets agree;
  with ``check_inputs`` conflicting targets are a ValueError naming the index.

Data-parallel training (a batch split over processes): with ``loss.set_batch_split()`` (``TrainStep``
does it for its calls) each process passes its share and gets the global batch's loss, statistics and
selections included, with per-example state kept identical on every process, and a gradient that
DDP's averaging turns into the global batch's (see :func:`spl_losses.losses.split_batches`).

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
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from ..labels import check_multi_hot, check_observed_labels
from ._checks import check_number
from ._distributed import BatchShare, BatchSplit, combine_terms, split_shape
from ._functional import REFERENCE_EPS, has_infinity, weighted_bce_mean

__all__ = ["SPLoss"]

#: Infinite logits are evaluated clamped to these magnitudes: every bounded term of every loss has
#: reached its float32 limit well before 1e4 (sigmoid saturates by |x| = 104), unbounded ones grow.
_NEAR_INFINITY, _FAR_INFINITY = 1e4, 2e4


class SPLoss(BatchSplit, nn.Module):
    """Base class of the project's losses.

    Subclasses implement :meth:`compute` on float32 logits and targets that have been checked, for
    a batch of at least one example.

    Args:
        eps: Epsilon inside the log of the reference form ``-log(p + eps)`` (finite, >= 0).
        stable: Use the numerically stable log-sigmoid form (``softplus(-x)`` for ``-log p``)
            instead of the reference form. Results differ from the reference in the 4th decimal.
        check_inputs: Check shapes, encodings, index ranges and infinite logits on every call (a
            device sync on GPU). Turn off only for inputs known to be valid.
    """

    #: "observed" for the {-1, 0, 1} encoding, "multi_hot" for full labels in {0, 1}.
    target_encoding: str = "observed"
    #: Whether the loss needs the examples' ``index`` (per-example state).
    requires_index: bool = False
    #: Whether the loss wants ``update_from_predictions(probs)`` after each epoch.
    needs_predictions: bool = False
    #: Set by ``register_loss``.
    loss_name: str = ""
    #: How the loss reduces its per-entry terms over a batch (``"mean"`` over B·C, ``"batchmean"``, ``"sum"``),
    #: which fixes how it combines over a batch split across processes; None: it cannot be split.
    batch_reduction: Optional[str] = None
    #: The number of batch-level sums its regulariser needs (:meth:`split_compute`, :meth:`split_regularizer`).
    split_statistics: int = 0
    #: Short name of the method and its paper, and the paper's BibTeX entry.
    paper: str = ""
    citation: str = ""
    #: Which terms can be infinite at an infinite logit (the explanation of the ValueError).
    unbounded_terms: str = ("with stable=True, -log p = softplus(-x) is infinite for a positive whose logit is -inf "
                            "and -log(1 - p) for a negative at +inf (the reference form -log(p + eps) stays finite)")

    def __init__(self, eps: float = REFERENCE_EPS, stable: bool = False, check_inputs: bool = True):
        super().__init__()
        self.eps = check_number("eps", eps, minimum=0.0)
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
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
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
    def weighted_bce_mean(self, logits: torch.Tensor, pos_weight: torch.Tensor, neg_weight: torch.Tensor,
                          probs: Optional[torch.Tensor] = None, exclusive: bool = False,
                          expected_num_pos: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """:func:`~spl_losses.losses._functional.weighted_bce_mean` with this loss's ``eps`` and ``stable``.

        Args:
            logits: (B, C) float32 logits.
            pos_weight: a >= 0, the (B, C) weight of ``-log p``.
            neg_weight: b >= 0, the (B, C) weight of ``-log(1 - p)``.
            probs: ``torch.sigmoid(logits).detach()`` if the caller has it already.
            exclusive: Promise that no entry has both ``a > 0`` and ``b > 0``.
            expected_num_pos: k; when given, the EPR regulariser ``(mean_b sum_c p - k)^2 / C^2`` is added.

        Returns:
            The scalar loss and ``p = sigmoid(logits)``, detached.
        """
        return weighted_bce_mean(logits, pos_weight, neg_weight, eps=self.eps, stable=self.stable, probs=probs,
                                 exclusive=exclusive, expected_num_pos=expected_num_pos)

    def check_index(self, index: Optional[torch.Tensor], batch_size: int, num_examples: int,
                    targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Check an example-index tensor and return it as int64.

        Args:
            index: (B,) integer example indices.
            batch_size: B.
            num_examples: N; indices must lie in [0, N).
            targets: The batch's (B, C) targets; with ``check_inputs``, an index repeated with
                different targets is an error.
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
        index = index.long()
        if self.check_inputs and index.numel():
            # one sort gives the range and the repeated entries, read back in one device sync
            sorted_index, order = torch.sort(index)
            repeated = sorted_index[1:] == sorted_index[:-1]
            lo, hi, num_repeated = torch.stack([sorted_index[0], sorted_index[-1], repeated.sum()]).tolist()
            if lo < 0 or hi >= num_examples:
                raise ValueError(f"index out of range: values in [{lo}, {hi}], expected [0, {num_examples - 1}]")
            if num_repeated and targets is not None:
                _check_repeated_rows_agree(sorted_index, order, repeated, targets)
        return index

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
        share = self.batch_share()
        if share is not None:
            return self._forward_split(logits, targets, index, share)
        logits32, targets32 = self._prepare(logits, targets)
        return self._in_float32(self._compute_any, logits32, targets32, index)

    def _prepare(self, logits, targets) -> Tuple[torch.Tensor, torch.Tensor]:
        """Check the inputs; return the float32 logits and targets."""
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
        return logits.float(), targets.to(device=logits.device, dtype=torch.float32)

    @staticmethod
    def _in_float32(fn, logits: torch.Tensor, *args):
        if torch.is_autocast_enabled(logits.device.type):
            # matmul-like ops (dot) would run in half precision under autocast: compute in float32
            with torch.autocast(device_type=logits.device.type, enabled=False):
                return fn(logits, *args)
        return fn(logits, *args)

    def _compute_any(self, logits: torch.Tensor, targets: torch.Tensor, index: Optional[torch.Tensor],
                     fn: Optional[Callable] = None):
        fn = self.compute if fn is None else fn
        if logits.shape[0] == 0:
            return self.empty_batch_loss(logits, index)
        if self.check_inputs and has_infinity(logits):
            return self._compute_at_infinity(logits, targets, index, fn)
        return fn(logits, targets, index)

    # ----------------------------------------------------------------- split batches
    def _forward_split(self, logits, targets, index, share: BatchShare,
                       failure: Optional[BaseException] = None) -> torch.Tensor:
        """The loss of this process's share of a split batch (see :mod:`spl_losses.losses._distributed`).

        By default the loss is ``reduce(per-entry terms) + split_regularizer(statistics)``: the local terms
        (:meth:`split_compute`) and statistics are exchanged once. Losses that select entries over the
        batch override this.

        Args:
            logits: The local (B_p, C) logits.
            targets: The local targets.
            index: The local example indices.
            share: This process's :class:`BatchShare`.
            failure: An exception raised before, locally, by a wrapping loss (raised on every process).
        """
        if self.batch_reduction is None:
            raise ValueError(f"loss {self.loss_name or type(self).__name__!r} does not say how its value combines "
                             "over a batch split across processes (batch_reduction); compute it on whole batches")
        value, stats, failure = self._local_stage(logits, targets, index, failure)
        return combine_terms(share, value, stats, self.split_statistics, *split_shape(logits), self.batch_reduction,
                             self.split_regularizer, failure, getattr(logits, "device", None))

    def _local_stage(self, logits, targets, index, failure: Optional[BaseException]):
        """``(value, statistics, failure)`` of this share: :meth:`split_compute` after the checks, or the
        exception they raised (the next exchange raises it on every process)."""
        if failure is not None:
            return None, None, failure
        try:
            logits32, targets32 = self._prepare(logits, targets)
            return (*self._in_float32(self._local_terms, logits32, targets32, index), None)
        except Exception as err:
            return None, None, err

    def _local_terms(self, logits, targets, index):
        if logits.shape[0] == 0:
            return self.empty_batch_loss(logits, index), logits.new_zeros(self.split_statistics)
        return self._compute_any(logits, targets, index, self.split_compute)

    def split_compute(self, logits: torch.Tensor, targets: torch.Tensor,
                      index: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """This share's terms (reduced by ``batch_reduction`` over its rows) and its ``split_statistics`` sums.

        By default :meth:`compute` and no statistics. Losses with a batch-level regulariser return it
        without the regulariser and the sums it needs, with their autograd graphs.

        Args:
            logits: (B_p, C) float32 logits of this share, B_p >= 1.
            targets: (B_p, C) float32 targets.
            index: (B_p,) example indices or None.
        """
        return self.compute(logits, targets, index), None

    def split_regularizer(self, statistics: torch.Tensor, batch_size: int, num_classes: int) -> torch.Tensor:
        """The batch-level regulariser from the global ``statistics`` (sums over the global batch of B rows).

        Args:
            statistics: (split_statistics,) float32 global sums, with gradients towards this share.
            batch_size: B, the global batch's row count.
            num_classes: C.
        """
        raise NotImplementedError

    def _compute_at_infinity(self, logits: torch.Tensor, targets: torch.Tensor, index: Optional[torch.Tensor],
                             fn: Optional[Callable] = None):
        """The loss at infinite logits: its limit where finite, else a ValueError.

        The loss (``fn``, default :meth:`compute`) is evaluated with the infinite logits clamped to ``±1e4``
        and to ``±2e4``, without side effects (no gradient, every submodule in eval mode so no state is
        written). Equal values mean a finite limit, returned from the logits clamped to ``±1e4``: the
        gradient at an infinite logit is 0, the limit of every bounded term's gradient. A ``fn`` returning
        a tuple is compared on its first element.
        """
        fn = self.compute if fn is None else fn
        modes = [(module, module.training) for module in self.modules()]
        try:
            for module, _ in modes:
                module.training = False
            with torch.no_grad():
                near = _first(fn(logits.clamp(-_NEAR_INFINITY, _NEAR_INFINITY), targets, index))
                far = _first(fn(logits.clamp(-_FAR_INFINITY, _FAR_INFINITY), targets, index))
        finally:
            for module, mode in modes:
                module.training = mode
        if not (bool(torch.isfinite(near)) and bool(torch.isclose(near, far, rtol=1e-4, atol=0.0))):
            raise ValueError(
                f"loss {self.loss_name or type(self).__name__!r} is infinite for these logits: {self.unbounded_terms}. "
                "Infinite logits usually come from an overflow (e.g. in float16); fix the model or clip its logits")
        return fn(logits.clamp(-_NEAR_INFINITY, _NEAR_INFINITY), targets, index)

    def empty_batch_loss(self, logits: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """The loss of an empty batch: exactly 0, with a zero gradient connected to ``logits``.

        Losses with trainable state (a label estimator) extend it so that the state is connected too.

        Args:
            logits: (0, C) float32 logits.
            index: (0,) example indices (checked when the loss requires them).
        """
        if self.requires_index:
            self.check_index(index, 0, getattr(self, "num_examples"))
        return logits.sum()

    def compute(self, logits: torch.Tensor, targets: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """The loss of a checked, non-empty float32 batch (implemented by each loss).

        Args:
            logits: (B, C) float32 logits, B >= 1.
            targets: (B, C) float32 targets.
            index: (B,) example indices or None.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"eps={self.eps}, stable={self.stable}"


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def _check_repeated_rows_agree(sorted_index: torch.Tensor, order: torch.Tensor, repeated: torch.Tensor,
                               targets: torch.Tensor) -> None:
    """Raise ValueError when an example index appears twice in a batch with different targets.

    ``sorted_index, order = torch.sort(index)``; ``repeated[i]`` says that sorted entries i and i + 1 are equal.
    """
    pairs = repeated.nonzero().squeeze(1)
    first, second = order[pairs].to(targets.device), order[pairs + 1].to(targets.device)
    conflicting = (targets[first] != targets[second]).any(dim=1).nonzero().squeeze(1)
    if conflicting.numel():
        example = int(sorted_index[pairs[conflicting[0].to(pairs.device)]])
        raise ValueError(
            f"index {example} appears more than once in the batch with different targets; an example's "
            "observed labels are fixed, so its rows must agree (check the sampler and the index column)")
