"""Losses on a batch split over processes (data-parallel training): the collectives and their gradient rule.

Under ``DistributedDataParallel`` (DDP) every process computes the loss on its share of the global batch
and DDP averages the gradients. That equals one process on the global batch only for a per-entry mean
over equal shares. A loss with batch splitting on (:func:`split_batches`, or ``set_batch_split``)
computes instead, on each of the P processes of the group:

- its value: the loss of the global batch (the shares in rank order), the same on every process, so the
  value logged by any process, or averaged over them, is one process's;
- its gradient with respect to the process's own inputs (logits, label-estimator rows, embeddings):
  P times the gradient of the global loss, so DDP's average over the P processes is exactly the
  gradient of one process on the global batch.

Batch-level statistics (regularisers, top-k thresholds, row counts) are exchanged in the forward pass
with ``all_gather`` and combined in rank order, so every process holds bit-identical global values and
takes identical decisions (selections, per-example state). No collective runs in the backward pass: the
gradient of a global statistic with respect to a process's own part is computed locally and scaled by P
(:func:`shared_statistic`), which is what a differentiable all-reduce followed by DDP's average gives.

Shares may differ in size, an empty share included (it takes part in every collective and returns the
global value with a zero gradient). A failure on one process (a bad input) is raised on every process at
the next exchange instead of leaving the others waiting in a collective. Without an initialised process
group, or with one process, a loss never reaches this module.
"""
import math
from contextlib import contextmanager
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = ["BatchShare", "BatchSplit", "split_batches", "shared_statistic", "global_value", "combine_terms",
           "split_shape"]

_WORLD = "world"
#: When a list, every collective appends ``(name, bytes received)`` (for benchmarks and tests).
exchange_log: Optional[list] = None
_all_gather_single = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)


class BatchShare:
    """This process's share of a batch split over the processes of a group: the forward-pass collectives.

    Args:
        group: The process group (None: the default group).
        world_size: P, the number of processes in the group.
        rank: This process's rank in the group.
    """

    def __init__(self, group, world_size: int, rank: int):
        self.group = group
        self.world_size = world_size
        self.rank = rank
        #: Row counts of every share, set by the first exchange of a loss call (:meth:`gather_header`).
        self.counts: List[int] = []

    def all_gather(self, tensor: torch.Tensor, name: str = "") -> torch.Tensor:
        """Stack ``tensor`` from every process: (P, *tensor.shape); the shapes must be equal.

        Args:
            tensor: The local tensor.
            name: Label of the exchange in :data:`exchange_log`.
        """
        shape = tuple(tensor.shape)
        tensor = tensor.contiguous().reshape((-1,) + shape[1:] if shape else (1,))
        out = tensor.new_empty((self.world_size * tensor.shape[0],) + tuple(tensor.shape[1:]))
        _all_gather_single(out, tensor, group=self.group)  # the concatenation along the first dimension
        if exchange_log is not None:
            exchange_log.append((name, out.numel() * out.element_size()))
        return out.view((self.world_size,) + shape)

    def gather_header(self, rows: int, values: Optional[torch.Tensor], size: int, failure: Optional[BaseException],
                      device, name: str = "header") -> List[List[float]]:
        """All-gather ``[failed, rows, *values]`` (float64) and raise on every process if any process failed.

        Sets :attr:`counts` (every share's rows). The process that failed re-raises its own exception; the
        others raise a RuntimeError naming it. One host synchronisation.

        Args:
            rows: This process's row count.
            values: ``size`` numbers (a tensor, on ``device``), or None after a failure.
            size: The number of values, the same on every process.
            failure: The exception this process's local stage raised, or None.
            device: Device of the exchange (the loss's inputs').
            name: Label of the exchange in :data:`exchange_log`.

        Returns:
            Every process's ``values``, in rank order, as lists of floats.
        """
        local = torch.zeros(2 + size, dtype=torch.float64, device=device)
        local[0], local[1] = float(failure is not None), float(rows)
        if failure is None and size:
            local[2:] = values.detach().reshape(-1)
        gathered = self.all_gather(local, name).tolist()
        if failure is not None:
            raise failure
        failed = [rank for rank, row in enumerate(gathered) if row[0]]
        if failed:
            raise RuntimeError(f"the loss failed on process(es) {failed} for this batch (see their error)")
        self.counts = [int(row[1]) for row in gathered]
        return [row[2:] for row in gathered]

    def gather_varying(self, tensor: torch.Tensor, sizes: Sequence[int], name: str = "") -> List[torch.Tensor]:
        """Gather tensors whose first dimension differs by process (``sizes``, known on every process).

        Args:
            tensor: Local tensor, first dimension ``sizes[rank]``.
            sizes: The first dimension of every process's tensor, in rank order.
            name: Label of the exchange in :data:`exchange_log`.

        Returns:
            The P tensors in rank order.
        """
        longest = max(sizes)
        if longest == 0:  # nothing anywhere: no collective needed, the same on every process
            return [tensor[:0] for _ in sizes]
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor.detach()
        gathered = self.all_gather(padded, name)
        return [gathered[rank, :size] for rank, size in enumerate(sizes)]

    def gather_rows(self, tensors: Sequence[torch.Tensor], name: str = "") -> List[torch.Tensor]:
        """Concatenate, in rank order, the rows of every process's ``tensors`` (one collective for all of them).

        Each tensor's first dimension is this process's row count (:attr:`counts`); the tensors travel
        together as bytes. Bool tensors come back as bool.

        Args:
            tensors: Local tensors with :attr:`counts`\\ [rank] rows each.
            name: Label of the exchange in :data:`exchange_log`.

        Returns:
            One tensor per input, with ``sum(counts)`` rows.
        """
        n = self.counts[self.rank]
        pieces, layouts = [], []
        for tensor in tensors:
            raw = tensor.detach()
            raw = raw.to(torch.uint8) if raw.dtype == torch.bool else raw
            row_shape = tuple(tensor.shape[1:])
            raw = raw.contiguous().reshape(n, math.prod(row_shape)).view(torch.uint8)
            layouts.append((tensor.dtype, row_shape, raw.shape[1]))
            pieces.append(raw)
        packed = torch.cat(self.gather_varying(torch.cat(pieces, dim=1), self.counts, name), dim=0)
        out, start = [], 0
        for dtype, row_shape, width in layouts:
            raw_dtype = torch.uint8 if dtype == torch.bool else dtype
            part = packed[:, start:start + width].contiguous().view(raw_dtype).reshape((-1,) + row_shape)
            out.append(part.bool() if dtype == torch.bool else part)
            start += width
        return out


class _SharedStatistic(torch.autograd.Function):
    """Forward: the global value of a statistic; backward: P times the gradient, to the local part."""

    @staticmethod
    def forward(ctx, local, total, scale):
        ctx.scale = scale
        return total.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None, None


def shared_statistic(local: torch.Tensor, total: torch.Tensor, world_size: int) -> torch.Tensor:
    """``total`` (the sum of ``local`` over processes), with gradient ``world_size × grad`` towards ``local``.

    Every process computes the same function of ``total``, so the upstream gradient is the same on every
    process: P times it is what a differentiable all-reduce would give, without a backward collective.

    Args:
        local: This process's part of the statistic, with its autograd graph.
        total: The global statistic (same shape), identical on every process.
        world_size: P.
    """
    if not local.requires_grad:
        return total
    return _SharedStatistic.apply(local, total.to(local.dtype), float(world_size))


class _GlobalValue(torch.autograd.Function):
    """Forward: the global value; backward: the gradient passes unchanged to the local carrier."""

    @staticmethod
    def forward(ctx, carrier, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def global_value(carrier: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A scalar worth ``value`` whose gradient is ``carrier``'s (exact even where either is infinite).

    Args:
        carrier: The local scalar whose gradient is P times the global loss's, towards this process's inputs.
        value: The global loss, identical on every process.
    """
    value = value.to(device=carrier.device, dtype=carrier.dtype)
    if not carrier.requires_grad:
        return value
    return _GlobalValue.apply(carrier, value)


class BatchSplit:
    """Mixin of the losses (and the contrastive term) that can run on a batch split over processes."""

    _split_group = None

    def set_batch_split(self, enabled: bool = True, process_group=None):
        """Declare that each call receives this process's share of a batch split over ``process_group``.

        Turn it on where the module is trained under DDP on a split batch (``TrainStep`` does it for every
        call it makes, see :func:`split_batches`); leave it off where every process sees the whole batch.
        Without an initialised process group, or with one process, it changes nothing and costs nothing.

        Args:
            enabled: Whether calls see one share of a split batch.
            process_group: The group the batch is split over (default: the default group).

        Returns:
            The module itself.
        """
        self._split_group = (_WORLD if process_group is None else process_group) if enabled else None
        return self

    def batch_share(self) -> Optional[BatchShare]:
        """This call's :class:`BatchShare`, or None when the batch is whole here (the common, free case)."""
        group = self._split_group
        if group is None or not dist.is_available() or not dist.is_initialized():
            return None
        group = None if group is _WORLD else group
        world_size = dist.get_world_size(group)
        if world_size == 1:
            return None
        return BatchShare(group, world_size, dist.get_rank(group))


def split_shape(logits) -> Tuple[int, int]:
    """(rows, classes) of a valid logits tensor, (0, 1) of anything else (its error is raised elsewhere).

    Args:
        logits: The loss's input.
    """
    if isinstance(logits, torch.Tensor) and logits.dim() == 2:
        return logits.shape[0], max(logits.shape[1], 1)
    return 0, 1


def _sum_factor(rows: int, num_classes: int, reduction: str) -> float:
    """The loss's sum over the entries of ``rows`` rows, divided by its value under ``reduction``."""
    return {"mean": rows * num_classes, "batchmean": rows, "sum": 1}[reduction]


def combine_terms(share: BatchShare, local: Optional[torch.Tensor], stats: Optional[torch.Tensor], num_stats: int,
                  rows: int, num_classes: int, reduction: str, regularizer: Optional[Callable],
                  failure: Optional[BaseException], device) -> torch.Tensor:
    """The global loss ``reduce(sum of per-entry terms) + regularizer(global statistics)``, from local parts.

    One exchange of ``[failed, rows, local sum, *statistics]`` (float64) per process.

    Args:
        share: This process's share.
        local: The loss of the local rows alone, reduced by ``reduction`` over them (with its graph).
        stats: ``num_stats`` local sums of the statistics the regulariser needs (with their graph), or None.
        num_stats: The number of statistics (0: no regulariser).
        rows: Local row count.
        num_classes: C.
        reduction: ``"mean"`` (over rows·C), ``"batchmean"`` (over rows) or ``"sum"``.
        regularizer: ``regularizer(global_stats, global_rows, num_classes)`` -> scalar, or None.
        failure: The local stage's exception, or None.
        device: Device of the exchange.
    """
    values = None
    if failure is None:
        values = (local.detach().double() * _sum_factor(rows, num_classes, reduction)).reshape(1)
        if num_stats:
            values = torch.cat([values, stats.detach().double().reshape(-1)])
    gathered = share.gather_header(rows, values, 1 + num_stats, failure, device, name="terms")
    batch = sum(share.counts)
    if batch == 0:
        return local
    total = sum(row[0] for row in gathered) / _sum_factor(batch, num_classes, reduction)
    carrier = local * (share.world_size * (1.0 if reduction == "sum" else rows / batch))
    total = torch.tensor(total, dtype=torch.float32, device=local.device)
    if num_stats:
        global_stats = torch.tensor([sum(column) for column in zip(*(row[1:] for row in gathered))],
                                    dtype=torch.float32, device=local.device)
        reg = regularizer(shared_statistic(stats, global_stats, share.world_size), batch, num_classes)
        carrier, total = carrier + reg, total + reg.detach()
    return global_value(carrier, total)


@contextmanager
def split_batches(*modules, process_group=None):
    """Within the block, ``modules`` (losses, the contrastive term; None skipped) see split batches.

    Each process passes its share of the global batch (the shares in rank order make the global batch;
    they may differ in size, or be empty) and gets the global batch's loss value; the gradient towards
    its own inputs is P times the global loss's, so DDP's gradient averaging gives exactly the gradient
    of one process on the whole batch. Per-example state (LL-Cp's corrections, APL's recorded labels)
    is updated with every share's rows on every process. Every process must make the same calls.
    Nothing changes without an initialised process group or with one process.

    A loss with trainable state (ROLE's label estimator) belongs inside the module DDP wraps, so that
    its gradient is averaged too::

        class Step(nn.Module):  # spl_losses.training.TrainStep does this
            def forward(self, images, targets, index):
                with spl_losses.losses.split_batches(self.loss):
                    return self.loss(self.model(images), targets, index=index)

    Args:
        *modules: Modules with ``set_batch_split``.
        process_group: The group the batch is split over (default: the default group).
    """
    modules = [m for m in modules if m is not None and hasattr(m, "set_batch_split")]
    previous = [m._split_group for m in modules]
    for module in modules:
        module.set_batch_split(True, process_group)
    try:
        yield
    finally:
        for module, group in zip(modules, previous):
            module._split_group = group
