"""The modules a training step differentiates and a checkpoint saves, each as one ``nn.Module``.

:class:`TrainStep` holds model + loss (+ contrastive term): ``accelerate`` prepares one module, so
distributed data parallel also all-reduces the gradients of a dense label estimator (ROLE's, dense Adam)
and of the contrastive projection head, keeping every process's copy identical. A label estimator with
sparse gradients (LazyAdam, SparseAdam) is left out of DDP: only the batch's rows are exchanged
(:class:`~spl_losses.training.estimator_exchange.RowSparseExchange`, O(B·C) per step instead of DDP's
O(N·C)); call :meth:`TrainStep.sync_estimator_gradients` after the backward pass of each optimizer step.
The step tells its loss and contrastive term once that every call gets this process's share of a split
batch (``set_batch_split``): they are the global batch's, value and gradient, as on one process. The loss's
buffers (label matrices, kept identical on every process by the loss itself) are left out of DDP's
per-step buffer broadcast.
:class:`LinearStep` holds a linear head and its loss (the linear mode trains on feature tensors
directly; the module is what its checkpoints save).
"""
from typing import Optional

import torch
from torch import nn

from ..losses.contrastive import pooled_features
from ..losses.estimator import LabelEstimator
from .estimator_exchange import RowSparseExchange

__all__ = ["TrainStep", "LinearStep"]


class TrainStep(nn.Module):
    """``forward(images, targets, index)`` returns the scalar training loss of a batch.

    Under DDP each process passes its share of the global batch (the shares in rank order) and gets the
    global batch's loss, with the gradient that makes DDP's average the global batch's gradient.

    Args:
        model: The network (timm model or wrapper) mapping images to (B, C) logits.
        loss: The loss, called with ``index`` when ``loss.requires_index``.
        contrastive: Optional ``spl_losses.losses.ContrastiveAuxiliary``; then ``view1``/``view2``
            are required and the loss is ``main + cl_coef * L_cl``.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, contrastive: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.contrastive = contrastive
        # estimators with sparse gradients: their batch rows are exchanged here, not all-reduced by DDP
        row_sparse = {f"loss.{name}.logits": module.logits for name, module in loss.named_modules()
                      if isinstance(module, LabelEstimator) and module.sparse}
        self._estimator_exchange = RowSparseExchange(list(row_sparse.values())) if row_sparse else None
        # read by DistributedDataParallel: neither broadcast from rank 0 at every forward (N x C tensors) nor
        # all-reduced
        self._ddp_params_and_buffers_to_ignore = [f"loss.{name}" for name, _ in loss.named_buffers()] + list(row_sparse)
        # every call of the step passes this process's share of a split batch: the modules are told once, here
        for module in (loss, contrastive):
            if module is not None and hasattr(module, "set_batch_split"):
                module.set_batch_split(True)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor,
                view1: Optional[torch.Tensor] = None, view2: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss of one batch.

        Args:
            images: (B, 3, H, W) training view.
            targets: (B, C) dense targets.
            index: (B,) example indices.
            view1: (B, 3, H, W) first contrastive view (with ``contrastive``).
            view2: (B, 3, H, W) second contrastive view.
        """
        if self._estimator_exchange is not None:  # the global batch's rows, caught up alike on every process
            self._estimator_exchange.begin(index)
        logits = self.model(images)
        if getattr(self.loss, "requires_index", False):
            value = self.loss(logits, targets, index=index)
        else:
            value = self.loss(logits, targets)
        if self.contrastive is not None:
            if view1 is None or view2 is None:
                raise ValueError("the contrastive term needs view1 and view2")
            # both views through the backbone as one batch of 2B, as the original does (BatchNorm sees both)
            first, second = pooled_features(self.model, torch.cat([view1, view2])).chunk(2)
            value = self.contrastive.combine(value, first, second, targets)
        return value

    def sync_estimator_gradients(self) -> None:
        """Under data parallelism, give every process the global batch's gradient of a sparse label estimator.

        Call it after the backward pass of each optimizer step (with gradient accumulation, after the last
        micro-batch's), before clipping and stepping, on every process. A no-op without such an estimator,
        without a process group or with one process.
        """
        if self._estimator_exchange is not None:
            self._estimator_exchange.exchange()


class LinearStep(nn.Module):
    """A linear head and its loss as one module (what a linear phase's checkpoints save).

    Args:
        head: The ``nn.Linear`` head.
        loss: The loss (its state: ROLE's estimator, label matrices).
    """

    def __init__(self, head: nn.Linear, loss: nn.Module):
        super().__init__()
        self.head = head
        self.loss = loss

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the head.

        Args:
            features: (B, D) features.
        """
        return self.head(features)
