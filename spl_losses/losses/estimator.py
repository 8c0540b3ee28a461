"""ROLE's online label estimator (Cole et al., CVPR 2021) and the base of the losses that own one."""
import math
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import check_observed_labels
from ._checks import check_number, check_positive_int
from .base import SPLoss

__all__ = ["LabelEstimator", "EstimatorLoss", "HANDOFF_CLAMP"]

_UNOBSERVED_INIT = math.log(0.6 / 0.4)  # logit(0.6): unobserved estimates start in (0.4, 0.6)
_POSITIVE_INIT = math.log(0.995 / 0.005)  # logit(0.995)
_NEGATIVE_INIT = -_POSITIVE_INIT  # logit(0.005)
#: Cole et al. clip handed-off estimates to [1e-5, 1 - 1e-5] before the inverse sigmoid.
HANDOFF_CLAMP = 1e-5


class LabelEstimator(nn.Module):
    """One free logit per (training example, class): ``y_hat = sigmoid(logits[index])``.

    The estimator is held once, in float32, as the parameter ``logits`` of shape (N, C). Train it in
    its own optimizer parameter group with 10× the model's learning rate (the reference uses Adam)::

        optimizer = torch.optim.Adam([
            {"params": model.parameters(), "lr": lr},
            {"params": loss_fn.estimator.parameters(), "lr": 10 * lr},
        ])

    By default the gradient is dense, as the reference's Adam expects: every backward pass
    materialises an (N, C) float32 gradient (400 MB at N = 100,000, C = 1,000) and Adam updates all
    N·C entries, so a step's cost grows with N. With ``sparse=True`` the gradient is a sparse tensor
    holding only the batch's rows; pair it with :class:`spl_losses.optim.LazyAdam`, which gives dense
    Adam's result (to float tolerance) at O(B·C) per step::

        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        estimator_optimizer = spl_losses.optim.LazyAdam(loss_fn.estimator.parameters(), lr=10 * lr)
        loss_fn.estimator.use_optimizer(estimator_optimizer)  # the estimator catches rows up through it

    LazyAdam applies the updates of the steps a row skipped when the row is read: this module's
    :meth:`forward` catches up the rows it reads, and :meth:`estimates`, the ``init_*`` methods,
    ``state_dict`` and ``load_state_dict`` catch up every row first, so every read sees dense Adam's
    values. A module no LazyAdam steps pays nothing for it. ``torch.optim.SparseAdam`` also takes
    the sparse gradient, but it is another optimizer: its moments decay only on the steps a row is
    read, unlike dense Adam's, which decay for every row on every step.

    Keep the estimator in float32: cast the model, not the loss, to half precision; the loss reads
    the estimator in float32 either way.

    Args:
        num_examples: N, the number of training examples.
        num_classes: C, the number of classes.
        observed_labels: Optional (N, C) {-1, 0, 1} observed labels to initialise from (see
            :meth:`init_from_observed`). Without them every entry is initialised as unobserved.
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
        self.num_examples = check_positive_int("num_examples", num_examples)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.sparse = bool(sparse)
        self.logits = nn.Parameter(torch.empty(num_examples, num_classes, dtype=torch.float32))
        self._optimizer: Optional[weakref.ref] = None  # the LazyAdam stepping the logits (use_optimizer)
        self.init_from_observed(observed_labels, seed=seed)
        # a LazyAdam stepping the logits owes rows updates: apply them before the logits are saved or replaced
        self.register_state_dict_pre_hook(_catch_up_before_saving)
        self.register_load_state_dict_pre_hook(_catch_up_before_loading)

    def use_optimizer(self, optimizer) -> "LabelEstimator":
        """Tell the estimator which optimizer steps its logits, so that it catches rows up through it.

        A :class:`~spl_losses.optim.LazyAdam` owes a row the updates of the steps the row skipped; the
        estimator applies them (``optimizer.catch_up``) before it reads rows. It holds the optimizer weakly
        (the optimizer's owner keeps it alive). An optimizer without ``catch_up`` (Adam, SparseAdam) needs none.

        Args:
            optimizer: The optimizer stepping :attr:`logits`, or None.

        Returns:
            The estimator itself.

        Raises:
            ValueError: the optimizer does not step this estimator's logits.
        """
        if optimizer is not None and not any(p is self.logits for group in optimizer.param_groups
                                             for p in group["params"]):
            raise ValueError("use_optimizer: the optimizer does not step this estimator's logits "
                             f"(an ({self.num_examples}, {self.num_classes}) parameter)")
        self._optimizer = weakref.ref(optimizer) if optimizer is not None else None
        return self

    def catch_up(self, rows: Optional[torch.Tensor] = None) -> None:
        """Apply the updates a :class:`~spl_losses.optim.LazyAdam` owes ``rows`` (default: every row); a no-op
        without one (see :meth:`use_optimizer`).

        Args:
            rows: Row indices, or None for every row.
        """
        optimizer = self._optimizer() if self._optimizer is not None else None
        if optimizer is not None and hasattr(optimizer, "catch_up"):
            optimizer.catch_up([self.logits], rows)

    @torch.no_grad()
    def init_from_observed(self, observed_labels: Optional[torch.Tensor] = None, seed: Optional[int] = None) -> None:
        """(Re)initialise as Cole et al. (2021): unobserved entries uniform in (-logit(0.6), logit(0.6))
        (estimates in (0.4, 0.6)), observed positives at logit(0.995), observed negatives at logit(0.005).

        Args:
            observed_labels: (N, C) {-1, 0, 1} tensor, or None (everything unobserved).
            seed: Seed of the uniform draw; None uses torch's global RNG.
        """
        self.catch_up()  # pending updates land before the values are replaced
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
    def init_from_estimates(self, estimates: torch.Tensor, clamp: float = HANDOFF_CLAMP) -> None:
        """Initialise from an earlier estimate: the hand-off from linear training to fine-tuning.

        As in Cole et al.'s code, the probabilities are clipped to ``[clamp, 1 - clamp]`` (1e-5)
        before the inverse sigmoid, so the new logits lie within ±11.51. The reference hand-off is
        ``new_estimator.init_from_estimates(old_estimator.estimates())``; copying the logits
        (``new_estimator.load_state_dict(old_estimator.state_dict())``) keeps them unclipped instead.

        Args:
            estimates: (N, C) probabilities, as returned by :meth:`estimates`.
            clamp: Probabilities are clipped to [clamp, 1 - clamp] before taking the logit, in [0, 0.5).
        """
        clamp = check_number("clamp", clamp, 0.0, 0.5, strict_maximum=True)
        estimates = torch.as_tensor(estimates)
        if tuple(estimates.shape) != tuple(self.logits.shape):
            raise ValueError(f"estimates have shape {tuple(estimates.shape)}, expected {tuple(self.logits.shape)}")
        if not bool(torch.isfinite(estimates).all()) or bool(((estimates < 0) | (estimates > 1)).any()):
            raise ValueError("estimates must be finite probabilities in [0, 1]")
        self.catch_up()  # pending updates land before the values are replaced
        self.logits.copy_(torch.logit(estimates.float().clamp(clamp, 1.0 - clamp)))

    @torch.no_grad()
    def estimates(self) -> torch.Tensor:
        """Return the current (N, C) label estimates ``sigmoid(logits)`` (a detached copy)."""
        self.catch_up()
        return torch.sigmoid(self.logits.detach())

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Return the (B, C) estimator logits of the examples ``index`` (caught up first, under LazyAdam).

        Args:
            index: (B,) int64 example indices.
        """
        self.catch_up(index)
        return F.embedding(index, self.logits, sparse=self.sparse)

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}, num_classes={self.num_classes}, sparse={self.sparse}"


def _catch_up_before_saving(module: LabelEstimator, prefix: str, keep_vars: bool) -> None:
    """State-dict pre-hook: every row up to date before the logits are read."""
    module.catch_up()


def _catch_up_before_loading(module: LabelEstimator, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: pending updates land on the old values, not on the loaded ones."""
    module.catch_up()


class EstimatorLoss(SPLoss):
    """Base of the losses that own a :class:`LabelEstimator` (``role``, ``label_estimation``).

    Subclasses set ``self.estimator``. Every call needs the batch's example ``index``; an empty batch
    gives 0 with a zero gradient connected to both the logits and the estimator.
    """

    requires_index = True
    estimator: LabelEstimator

    @property
    def num_examples(self) -> int:
        """N, the number of training examples (rows of the estimator)."""
        return self.estimator.num_examples

    def batch_estimator_logits(self, logits: torch.Tensor, targets: torch.Tensor, index) -> torch.Tensor:
        """Check ``index`` and return the estimator's (B, C) float32 logits of the batch, on the logits' device.

        Args:
            logits: (B, C) float32 logits.
            targets: (B, C) targets (an index repeated with different targets is refused).
            index: (B,) example indices.
        """
        index = self.check_index(index, logits.shape[0], self.num_examples, targets)
        return self.estimator(index.to(self.estimator.logits.device)).to(logits.device, torch.float32)

    def empty_batch_loss(self, logits, index):
        index = self.check_index(index, 0, self.num_examples)
        return logits.sum() + self.estimator(index.to(self.estimator.logits.device)).sum().to(logits.device)
