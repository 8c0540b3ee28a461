"""Training over several processes: the per-process step, the row exchange of a sparse estimator, the data order.

Data order and augmentation draws that are a pure function of (seed, epoch).

Making every random draw of an epoch a function of the run's seed and the epoch number (and not of
a global RNG's history) is what lets an interrupted run resume exactly, and makes one process and
several processes see the same global batches.

Data-parallel training of row-sparse parameters (a label estimator with sparse gradients) outside DDP.

DDP all-reduces a parameter's whole gradient every step: for ROLE's (N, C) label estimator that is N·C
floats (21 MB for COCO, 400 MB at N = 100,000, C = 1,000) although a step reads only the batch's rows.
:class:`RowSparseExchange` exchanges those rows instead, O(B·C) per step whatever N:

- before the forward pass, every process gathers the global batch's example indices (B int64 and a
  header of P counts) and catches those rows up (each estimator through its optimizer), the same rows
  in the same order on every process, so the rows stay identical bit for bit (catching rows up in other
  groupings would differ at rounding level);
- after the backward pass, each process's gradient rows (P times the global gradient's, as every input of
  a loss on a split batch gets, see :func:`spl_losses.losses.split_batches`) are gathered (padded to the
  largest share: P·max_share·C floats), summed and divided by P, which is what DDP's average would give;
  every process sets the same sparse gradient, and its optimizer (LazyAdam, SparseAdam) makes the same
  update.

Without an initialised process group, or with one process, nothing is exchanged and nothing is paid.

The modules a training step differentiates and a checkpoint saves, each as one ``nn.Module``.

:class:`TrainStep` holds model + loss (+ contrastive term): ``accelerate`` prepares one module, so
distributed data parallel also all-reduces the gradients of a dense label estimator (ROLE's, dense Adam)
and of the contrastive projection head, keeping every process's copy identical. A label estimator with
sparse gradients (LazyAdam, SparseAdam) is left out of DDP: only the batch's rows are exchanged
(:class:`~spl_losses.training.parallel.RowSparseExchange`, O(B·C) per step instead of DDP's
O(N·C)); call :meth:`TrainStep.sync_estimator_gradients` after the backward pass of each optimizer step.
The step tells its loss and contrastive term once that every call gets this process's share of a split
batch (``set_batch_split``): they are the global batch's, value and gradient, as on one process. The loss's
buffers (label matrices, kept identical on every process by the loss itself) are left out of DDP's
per-step buffer broadcast.
:class:`LinearStep` holds a linear head and its loss (the linear mode trains on feature tensors
directly; the module is what its checkpoints save).
"""
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..losses._distributed import BatchShare
from ..losses.contrastive import pooled_features
from ..losses.estimator import LabelEstimator

__all__ = ["epoch_generator", "epoch_permutation", "epoch_flip_mask", "EpochPermutationSampler", "ShardedBatchSampler",
           "share_bounds", "check_process_shares", "check_sync_bn", "sync_batchnorm", "RowSparseExchange", "TrainStep",
           "LinearStep"]


_PERMUTATION_STREAM = 0
_FLIP_STREAM = 1


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, stream)`` only.

    Args:
        seed: The run's seed.
        epoch: 0-based epoch.
        stream: Distinguishes independent draws of the same epoch (order, flips, ...).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 101 + int(stream))


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of ``epoch``: a permutation of ``range(num_examples)`` (int64, CPU).

    Args:
        num_examples: N.
        seed: The run's seed.
        epoch: 0-based epoch.
    """
    return torch.randperm(num_examples, generator=epoch_generator(seed, epoch, _PERMUTATION_STREAM))


def epoch_flip_mask(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """Which training examples are horizontally flipped in ``epoch``: a (N,) bool tensor (p = 0.5).

    Args:
        num_examples: N.
        seed: The run's seed.
        epoch: 0-based epoch.
    """
    return torch.rand(num_examples, generator=epoch_generator(seed, epoch, _FLIP_STREAM)) < 0.5


class EpochPermutationSampler(Sampler):
    """Yields :func:`epoch_permutation` of the epoch set with :meth:`set_epoch`.

    Pass it as the ``sampler`` of a DataLoader; ``accelerate`` shards the resulting batches over
    processes, so the global batches are the same for any number of processes.

    Args:
        num_examples: N.
        seed: The run's seed.
    """

    def __init__(self, num_examples: int, seed: int):
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields.

        Args:
            epoch: 0-based epoch.
        """
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_permutation(self.num_examples, self.seed, self.epoch).tolist())

    def __len__(self) -> int:
        return self.num_examples


def share_bounds(batch_rows: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``[start, stop)`` of process ``rank``'s share of a batch of ``batch_rows`` rows split over ``world_size``.

    Contiguous shares in rank order, the first ``batch_rows % world_size`` one row longer (for a batch
    divisible by the process count, what accelerate's ``split_batches`` gives). A share may be empty.

    Args:
        batch_rows: Rows of the global batch.
        world_size: P.
        rank: This process's rank.
    """
    base, extra = divmod(batch_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatchSampler(Sampler):
    """This process's share of every global batch of an epoch's order, the last (short) batch included.

    The global batches are ``epoch_permutation(N, seed, epoch)`` cut every ``batch_size`` rows, so P
    processes together train exactly the batches one process trains: nothing is padded or repeated
    (accelerate's sharding pads the last batch with rows from the first). A share of the last batch may be
    empty when it has fewer rows than processes.

    Args:
        num_examples: N.
        batch_size: The global batch size B.
        seed: The run's seed.
        rank: This process's rank.
        world_size: P, the number of processes.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_examples <= 0 or batch_size <= 0:
            raise ValueError(f"num_examples and batch_size must be positive, got {num_examples} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.num_examples, self.batch_size, self.seed = int(num_examples), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields.

        Args:
            epoch: 0-based epoch.
        """
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        order = epoch_permutation(self.num_examples, self.seed, self.epoch).tolist()
        for begin in range(0, self.num_examples, self.batch_size):
            batch = order[begin:begin + self.batch_size]
            start, stop = share_bounds(len(batch), self.world_size, self.rank)
            yield batch[start:stop]

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)


def check_process_shares(model: torch.nn.Module, num_examples: int, batch_size: int, num_processes: int) -> None:
    """Refuse, before training, an epoch whose last global batch leaves a process no rows for a BatchNorm model.

    Args:
        model: The network.
        num_examples: Training examples.
        batch_size: The global batch size.
        num_processes: Processes the batch is split over.

    Raises:
        ValueError: naming the sizes and what to change.
    """
    last = num_examples % batch_size
    if 0 < last < num_processes and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"the last global batch of every epoch has {last} row(s) ({num_examples} training examples, "
                         f"batch size {batch_size}), fewer than the {num_processes} processes: a process would get "
                         "no rows, which BatchNorm cannot train on; choose a batch size or process count that leaves "
                         "at least one row per process")


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """Refuse ``--sync-bn`` off CUDA, before any work (torch's SyncBatchNorm runs on CUDA GPUs only).

    Args:
        sync_bn: Whether ``--sync-bn`` was given.
        device: The run's device.
    """
    if sync_bn and torch.device(device).type != "cuda":
        raise ValueError(f"--sync-bn needs CUDA GPUs (torch's SyncBatchNorm runs on CUDA only), and this run is on "
                         f"{torch.device(device).type}; leave --sync-bn out (on several processes each then normalises "
                         "with its own share's statistics)")


def sync_batchnorm(model: nn.Module, sync_bn: bool, num_processes: int, is_main_process: bool) -> nn.Module:
    """The end-to-end network over several processes: its BatchNorm layers as SyncBatchNorm with ``--sync-bn``
    (statistics of the whole global batch, as on one process; timm's ``convert_sync_batchnorm``, which keeps the
    activation of timm's BatchNormAct2d); without it, one warning (main process) that each process normalises
    with its own share's statistics.

    Args:
        model: The network (before ``accelerator.prepare``).
        sync_bn: Whether ``--sync-bn`` was given.
        num_processes: Processes of the run.
        is_main_process: Whether this is the main process (the one that warns).
    """
    if num_processes <= 1 or not _has_batchnorm(model):
        return model
    if sync_bn:  # timm's conversion: torch's would drop the activation of timm's BatchNormAct2d
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    if is_main_process:  # on stderr, whatever filters Python's warnings
        import sys

        print(f"warning: the model has BatchNorm layers and trains on {num_processes} processes: each process "
              "normalises with its own share's batch statistics, so the numbers differ from one process's; pass "
              "--sync-bn (GPUs) for the whole global batch's statistics", file=sys.stderr, flush=True)
    return model


class RowSparseExchange:
    """Keeps row-sparse label estimators identical on every process of a data-parallel run, exchanging batch rows.

    Call :meth:`begin` with each process's batch indices before the forward pass reads the estimators
    (``TrainStep`` does), and :meth:`exchange` after the backward pass of each optimizer step (after the
    last micro-batch when gradients are accumulated), before clipping and stepping. Every process must
    make the same calls. Leave the estimators' logits out of DDP (``_ddp_params_and_buffers_to_ignore``).

    Args:
        estimators: The :class:`~spl_losses.losses.LabelEstimator` modules with sparse gradients (each catches
            its rows up through its own optimizer, see ``LabelEstimator.use_optimizer``).
        process_group: The group the batch is split over (default: the default group).
    """

    def __init__(self, estimators: Sequence[LabelEstimator], process_group=None):
        self.estimators = list(estimators)
        self.parameters = [estimator.logits for estimator in self.estimators]
        self.process_group = process_group
        #: For each forward pass since the last exchange: every process's rows, in rank order.
        self._batches: List[List[torch.Tensor]] = []

    def _share(self) -> Optional[BatchShare]:
        if not self.parameters or not dist.is_available() or not dist.is_initialized():
            return None
        world_size = dist.get_world_size(self.process_group)
        if world_size == 1:
            return None
        return BatchShare(self.process_group, world_size, dist.get_rank(self.process_group))

    @torch.no_grad()
    def begin(self, index: torch.Tensor) -> None:
        """Gather the global batch's indices and catch those rows up on every process (one call per forward).

        Args:
            index: (B_local,) this process's example indices.
        """
        share = self._share()
        if share is None:
            return
        device = self.parameters[0].device
        rows = index.detach().to(device=device, dtype=torch.int64).reshape(-1)
        share.gather_header(rows.shape[0], None, 0, None, device, name="estimator rows (counts)")
        shares = share.gather_varying(rows, share.counts, name="estimator rows")
        global_rows = torch.cat(shares)
        for estimator in self.estimators:
            estimator.catch_up(global_rows)
        self._batches.append(shares)

    @torch.no_grad()
    def exchange(self) -> None:
        """Give every process the global batch's sparse gradient: its rows' gradients summed over processes / P."""
        share = self._share()
        batches, self._batches = self._batches, []
        if share is None or not batches:
            return
        rows = [torch.cat([shares[rank] for shares in batches]).unique() for rank in range(share.world_size)]
        sizes = [r.shape[0] for r in rows]
        all_rows = torch.cat(rows)
        for param in self.parameters:
            local = _gradient_rows(param, rows[share.rank])
            width = math.prod(param.shape[1:])
            gathered = share.gather_varying(local.reshape(sizes[share.rank], width), sizes, name="estimator gradient")
            values = torch.cat(gathered).view((-1,) + tuple(param.shape[1:]))
            total = torch.sparse_coo_tensor(all_rows[None], values, tuple(param.shape)).coalesce()
            param.grad = torch.sparse_coo_tensor(total.indices(), total.values() / share.world_size,
                                                 tuple(param.shape), is_coalesced=True)


def _gradient_rows(param: torch.nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """The (R, ...) rows ``rows`` (sorted, unique) of ``param``'s sparse gradient (zeros where it has none)."""
    out = param.new_zeros((rows.shape[0],) + tuple(param.shape[1:]))
    grad = param.grad
    if grad is None:
        return out
    if not grad.is_sparse:
        raise ValueError(f"a row-sparse parameter of shape {tuple(param.shape)} outside DDP needs sparse gradients "
                         "(build the label estimator with sparse=True), got a dense gradient")
    grad = grad.coalesce()
    index = grad.indices()[0]
    where = torch.searchsorted(rows, index)
    if index.numel() and (int(where.max()) >= rows.shape[0] or not torch.equal(rows[where], index)):
        raise RuntimeError("the gradient has rows outside the batches given to RowSparseExchange.begin (read the "
                           "estimator only through TrainStep's forward)")
    return out.index_copy_(0, where, grad.values())


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
        row_sparse = {f"loss.{name}.logits": module for name, module in loss.named_modules()
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
