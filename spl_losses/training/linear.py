"""The linear mode's training steps: heads on pre-extracted features held whole on the device.

No DataLoader and no per-example Python: a batch is an index slice of the epoch's permutation, and its
features and targets are gathered from the (N, D) / (N, C) tensors with one indexing op per block of
batches (:data:`BLOCK_STEPS`).

Where a step's time goes (COCO-sized features, D = 2,048, C = 80, batch 16, one CPU thread; torch.profiler
and cProfile): the two head matmuls ~200-250 us (MKL at 40-60 GFLOP/s for these shapes), the fused Adam
kernel ~100 us, the loss's forward and backward ~150 us (``an``), the gather ~20 us. The layers around
the optimizer's kernel cost more than the kernel: accelerate 1.16's ``AcceleratedOptimizer.step`` looks up
whether ``lomo_optim`` is installed through ``importlib.metadata`` twice a step (~0.3 ms each, uncached),
torch's step wrapper and ``Adam.step`` rebuild their lists every step (~0.1 ms). The step therefore calls
the optimizers through :func:`~spl_losses.optim.direct_step.step_function` (the same kernels on the same
state tensors: bit for bit the same update, and the optimizers' state dicts are unchanged). The head's
gradients are two matmuls into preallocated buffers, the loss's input checks are off (the recipe checks the
targets once), nothing syncs with the host before the epoch's end, and a constant rate (``--sched none``)
has no scheduler call.

Several heads on the same batches: a grid of learning rates at once. The points of a learning-rate grid
that share everything else (features, batch size, seed: the same batches in the same order) differ only in
what belongs to each head: its optimizer (rate and Adam moments), its loss (ROLE's label estimator, LL-Cp's
corrections, EM-APL's pseudo-labels, each head's own) and its batch statistics (its EPR regulariser, its
large-loss selection). :func:`train_head_group_epoch` trains every head at every batch: one gather, each
head's logits and loss, one backward pass through all the heads' losses (``torch.autograd.backward`` of
the list: each loss gets the gradient 1 it gets alone), each head's gradients and optimizer step. A head's
operations are those of training it alone (a single run goes through the same function with one head), so
a grid trained together and its points trained alone give the same numbers to the last bit, however the
points are grouped. On the CPU the heads are shared among threads, one per core torch's own threads leave
free (:func:`head_workers`): each head stays in one thread, so this changes the wall clock only.

What is not stacked, and why (measured on one core of a shared 2-core AMD EPYC, 4 heads): the heads'
products as one matmul over the concatenated weights (one (B, D) x (D, 4C) product) give other bits than
each head's own (B, D) x (D, C) product (MKL blocks the wider product differently), so they would break
grouped == alone. A ``baddbmm``/``bmm`` over weights stacked (H, C, D) gave the same bits as each head's
``addmm``/``mm`` here, but measured only 0-8 % faster than per-head products, and would need every head's
parameters to be views into one storage (a checkpoint saving a view writes the whole storage). Adam's step
stays one fused kernel call per head: ``torch._fused_adam_`` takes one learning rate per call, and Adam
written out on stacked tensors would be other arithmetic than the fused kernel a run alone uses. The losses
stay one call per head: their state (ROLE's estimator and its optimizer, LL-Cp's corrections, EM-APL's
pseudo-labels, the large-loss selections) is per head and per example. The earlier version that stepped
every head at every step measured 15 % slower than separate runs; the cache does not explain it (each
head's ~2.6 MB of weights, gradient and moments misses the 512 KB L2 either way, and four heads fit the
32 MB L3). With the per-step layers above removed, every head at every step measured ~10 % faster than
head by head over blocks of 32 batches (591 vs 647 and 644 vs 730 us per head-step, side by side).
"""
import concurrent.futures
import contextlib
import os
from typing import Callable, ContextManager, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..optim.direct_step import step_function

__all__ = ["LinearHeadSteps", "check_epoch_inputs", "train_linear_epoch", "predict_linear", "new_linear_head",
           "build_linear_optimizers", "train_head_group_epoch", "head_workers", "BLOCK_STEPS"]


def new_linear_head(seed: int, in_features: int, num_classes: int, model: Optional[nn.Module] = None) -> nn.Linear:
    """A run's linear head: ``nn.Linear`` initialised right after ``set_seed(seed)``, or, for an image dataset,
    the timm model's own classifier initialisation.

    Args:
        seed: The run's seed.
        in_features: D.
        num_classes: C.
        model: The run's timm model (or BoostLU around one), or None for a features dataset.
    """
    from accelerate.utils import set_seed

    from .builders import timm_model_of

    set_seed(seed)
    head = nn.Linear(in_features, num_classes)
    if model is not None:  # start from the timm classifier's own initialisation
        head.load_state_dict(timm_model_of(model).get_classifier().state_dict())
    return head


def build_linear_optimizers(settings, lr: float, head: nn.Module, loss_fn: nn.Module,
                            estimator: str = "adam") -> List[torch.optim.Optimizer]:
    """The optimizer of a linear phase, as a one-item list: the head at ``lr`` and the loss's trainable state
    at ``lr * lr_mult`` (in the ``estimator`` optimizer when it is row-sparse).

    Args:
        settings: The run's settings (``opt``, ``momentum``, ``weight_decay``, ``lr_mult``).
        lr: The phase's learning rate.
        head: The linear head.
        loss_fn: The phase's loss (built with ``sparse=True`` for a row-sparse ``estimator``).
        estimator: ``adam``, ``lazy_adam`` or ``sparse_adam`` (``builders.run_estimator_optimizer``).
    """
    from .builders import attach_estimator_optimizer, build_optimizer, param_groups, trainable_state_parameters

    groups = param_groups(lr, head=list(head.parameters()), loss_state=trainable_state_parameters(loss_fn),
                          state_lr_mult=settings.lr_mult)
    optimizer = build_optimizer(groups, settings.opt, settings.momentum, settings.weight_decay, estimator)
    attach_estimator_optimizer(loss_fn, optimizer)  # the estimator catches its rows up through its optimizer
    return [optimizer]


class LinearHeadSteps:
    """The training steps of one head on gathered batches: what :func:`train_linear_epoch` runs per batch.

    The loss is called as ``loss_fn(logits, targets, index=idx)`` when it keeps per-example state
    (``loss_fn.requires_index``), else without ``index``. Its per-call input checks cost a device sync per
    step: build it with ``check_inputs=False`` when the targets are checked once before training (the recipe
    does). For a float32 ``nn.Linear`` without mixed precision autograd runs through the loss only and the
    head's gradients are two matmuls into preallocated buffers (bit-identical to autograd).

    Args:
        head: The linear layer (or any module mapping (B, D) features to (B, C) logits).
        loss_fn: A project loss (``SPLoss``) or any ``loss(logits, targets)`` criterion.
        optimizers: Optimizers to zero and step every batch (e.g. Adam for the head, LazyAdam for a
            sparse label estimator).
        dtype: The features' dtype.
        autocast: Optional zero-argument callable returning an autocast context; pass it only under
            mixed precision (None enables the fast float32 path for ``nn.Linear`` heads).
    """

    def __init__(self, head: nn.Module, loss_fn: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                 dtype: torch.dtype = torch.float32, autocast: Optional[Callable[[], ContextManager]] = None):
        self.head, self.loss_fn, self.optimizers = head, loss_fn, list(optimizers)
        self.requires_index = bool(getattr(loss_fn, "requires_index", False))
        self.manual = (autocast is None and type(head) is nn.Linear and head.weight.dtype == torch.float32
                       and dtype == torch.float32)
        self.autocast = autocast or contextlib.nullcontext
        weight, bias = head.weight, head.bias
        # detached views share storage with the parameters, so they see the optimizer's in-place updates
        self.weight_t = weight.detach().t() if self.manual else None
        self.bias_data = bias.detach() if self.manual and bias is not None else None
        self.grad_weight = torch.zeros_like(weight) if self.manual else None
        self.grad_bias = torch.zeros_like(bias) if self.manual and bias is not None else None
        # On the fast path the head's gradients are overwritten every step, so only the other parameters
        # (a loss's trainable state) need their gradients cleared: a list walk instead of zero_grad calls.
        head_params = {id(weight), id(bias)}
        self.other_params = [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]
                             if id(p) not in head_params]
        # the optimizers' update without the layers around it (accelerate's wrapper, torch's step hooks)
        self.optimizer_step = step_function(self.optimizers)
        head.train()

    def loss(self, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first half of a step: the head's logits and the loss of a batch (backward it, then :meth:`update`).

        Args:
            idx: (B,) the batch's example indices.
            x: (B, D) its features.
            y: (B, C) its targets.
        """
        head = self.head
        if self.manual:
            logits = torch.addmm(self.bias_data, x, self.weight_t) if head.bias is not None else x.mm(self.weight_t)
            logits.requires_grad_()
            for p in self.other_params:
                p.grad = None
        else:
            with self.autocast():
                logits = F.linear(x, head.weight, head.bias) if type(head) is nn.Linear else head(x)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
        self.logits, self.x = logits, x
        return self.loss_fn(logits, y, index=idx) if self.requires_index else self.loss_fn(logits, y)

    def update(self) -> None:
        """The second half of a step, after the loss's backward: the head's gradients and the optimizers' step."""
        head, x = self.head, self.x
        if self.manual:
            grad_logits = self.logits.grad
            torch.mm(grad_logits.t(), x, out=self.grad_weight)
            head.weight.grad = self.grad_weight
            if head.bias is not None:
                torch.sum(grad_logits, dim=0, out=self.grad_bias)
                head.bias.grad = self.grad_bias
        self.logits = self.x = None
        self.optimizer_step()

    def step(self, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update on a batch; returns the batch's loss (detached, no device sync).

        Args:
            idx: (B,) the batch's example indices.
            x: (B, D) its features.
            y: (B, C) its targets.
        """
        loss = self.loss(idx, x, y)
        loss.backward()
        self.update()
        return loss.detach()


def check_epoch_inputs(features: torch.Tensor, targets: torch.Tensor, order: torch.Tensor, batch_size: int) -> None:
    """Refuse an epoch's features, targets and order of different lengths, or a batch size below 1.

    Args:
        features: (N, D) features.
        targets: (N, C) targets.
        order: (N,) the epoch's permutation.
        batch_size: Examples per step.
    """
    if features.shape[0] != targets.shape[0] or order.shape[0] != features.shape[0]:
        raise ValueError(
            f"features ({features.shape[0]} rows), targets ({targets.shape[0]} rows) and order "
            f"({order.shape[0]} entries) must have the same length")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def train_linear_epoch(
        head: nn.Module,
        loss_fn: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        features: torch.Tensor,
        targets: torch.Tensor,
        order: torch.Tensor,
        batch_size: int,
        autocast: Optional[Callable[[], ContextManager]] = None,
        scheduler=None,
        first_update: int = 0,
) -> float:
    """Run one epoch of mini-batch training of ``head`` on feature tensors (:class:`LinearHeadSteps`).

    The loss is called as ``loss_fn(logits, targets[idx], index=idx)`` when it keeps per-example
    state (``loss_fn.requires_index``), else without ``index``. Targets must be valid for the loss
    already (check them once before training; the loss's per-call checks are skipped for speed).

    Args:
        head: The linear layer (or any module mapping (B, D) features to (B, C) logits).
        loss_fn: A project loss (``SPLoss``) or any ``loss(logits, targets)`` criterion.
        optimizers: Optimizers to zero and step every batch (e.g. Adam for the head, SparseAdam for a
            sparse label estimator).
        features: (N, D) features on the training device.
        targets: (N, C) dense targets on the same device.
        order: (N,) int64 permutation giving this epoch's example order (on the same device).
        batch_size: Examples per step; the last batch may be smaller (nothing is dropped).
        autocast: Optional zero-argument callable returning an autocast context; pass it only under
            mixed precision (None enables the fast float32 path for ``nn.Linear`` heads).
        scheduler: Optional timm scheduler, stepped after every update with ``step_update(num_updates)``.
        first_update: Updates done before this epoch (the scheduler's step count).

    Returns:
        The mean training loss over the epoch's batches (one device sync at the end).
    """
    check_epoch_inputs(features, targets, order, batch_size)
    steps = LinearHeadSteps(head, loss_fn, optimizers, features.dtype, autocast)
    total = torch.zeros((), device=features.device)
    num_batches = 0
    for idx in torch.split(order, batch_size):
        total += steps.step(idx, features.index_select(0, idx), targets.index_select(0, idx))
        num_batches += 1
        if scheduler is not None:
            scheduler.step_update(num_updates=first_update + num_batches)
    return float(total) / max(num_batches, 1)


@torch.no_grad()
def predict_linear(head: nn.Module, features: torch.Tensor, chunk_size: int = 16384) -> torch.Tensor:
    """Logits of ``head`` for every row of ``features``, in row order, in float32.

    Args:
        head: The linear head.
        features: (N, D) features.
        chunk_size: Rows per forward pass (bounds memory).
    """
    head.eval()
    if features.shape[0] == 0:
        out_features = getattr(head, "out_features", 0)
        return torch.zeros(0, out_features, device=features.device)
    return torch.cat([head(chunk).float() for chunk in torch.split(features, chunk_size)])


#: Batches gathered at once (one indexing op).
BLOCK_STEPS = 32


def head_workers(num_heads: int, device: torch.device, autocast=None) -> int:
    """Threads :func:`train_head_group_epoch` shares ``num_heads`` heads among: on the CPU without autocast, one
    per core left free by torch's own threads (``torch.get_num_threads()``), at most one per head; else 1.

    Args:
        num_heads: Heads trained.
        device: Their device.
        autocast: The autocast context factory, if any.
    """
    if num_heads < 2 or torch.device(device).type != "cpu" or autocast is not None:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(num_heads, cores // max(torch.get_num_threads(), 1)))


def _train_heads(steps: Sequence[LinearHeadSteps], schedulers: Sequence, features: torch.Tensor, targets: torch.Tensor,
                 order: torch.Tensor, batch_size: int, block_steps: int, first_update: int) -> torch.Tensor:
    """An epoch of ``steps``' heads, every head at every batch; their summed losses, (H,)."""
    timed = [scheduler for scheduler in schedulers if scheduler is not None]
    totals = torch.zeros(len(steps), device=features.device)
    done = 0
    for block in (torch.split(order, batch_size * block_steps) if steps else ()):  # one gather per block of batches
        xs, ys = features.index_select(0, block), targets.index_select(0, block)
        for idx, x, y in zip(torch.split(block, batch_size), torch.split(xs, batch_size), torch.split(ys, batch_size)):
            step_losses = [s.loss(idx, x, y) for s in steps]
            torch.autograd.backward(step_losses)  # one backward pass through every head's loss
            for s in steps:
                s.update()
            done += 1
            for scheduler in timed:
                scheduler.step_update(num_updates=first_update + done)
            totals += (step_losses[0].detach() if len(step_losses) == 1
                       else torch.stack([loss.detach() for loss in step_losses]))
    return totals


def train_head_group_epoch(
        heads: Sequence[nn.Module],
        losses: Sequence[nn.Module],
        optimizers: Sequence[Sequence[torch.optim.Optimizer]],
        features: torch.Tensor,
        targets: torch.Tensor,
        order: torch.Tensor,
        batch_size: int,
        active: Optional[Sequence[int]] = None,
        schedulers: Optional[Sequence] = None,
        first_update: int = 0,
        block_steps: int = BLOCK_STEPS,
        autocast=None,
        workers: Optional[int] = None,
) -> List[Optional[float]]:
    """One epoch of mini-batch training of several heads on the same batches (see the module docstring).

    Each head is trained as :func:`~spl_losses.training.linear.train_linear_epoch` trains one: its loss
    is called as ``losses[h](logits_h, targets[idx], index=idx)`` (``index`` when the loss keeps per-example
    state), its optimizers step every batch and its scheduler after every update. One head is a run's
    linear loop: the recipe trains a single run and the points of a search alike through this function.

    Args:
        heads: The heads (H of them), each mapping (B, D) features to (B, C) logits.
        losses: One loss module per head (each head's own state).
        optimizers: Per head, the optimizers stepping its parameters and its loss's trainable state.
        features: (N, D) float32 features on the heads' device.
        targets: (N, C) dense targets on the same device.
        order: (N,) int64 permutation giving this epoch's example order (the same for every head).
        batch_size: Examples per step; the last batch may be smaller (nothing is dropped).
        active: The heads to train this epoch (default all); the others are left untouched.
        schedulers: Per head, a timm scheduler (``step_update(num_updates)``) or None.
        first_update: Updates done before this epoch (the schedulers' step count).
        block_steps: Batches gathered by one indexing op (the results do not depend on it).
        autocast: Optional zero-argument callable returning an autocast context (mixed precision only).
        workers: Threads sharing the heads (each head stays in one thread; the results do not depend on it);
            default :func:`head_workers`.

    Returns:
        Per head, the mean training loss over the epoch's batches (None for a head not trained).
    """
    num = len(heads)
    if len(losses) != num or len(optimizers) != num:
        raise ValueError(f"{num} heads need {num} losses and {num} optimizer lists, got {len(losses)} and "
                         f"{len(optimizers)}")
    check_epoch_inputs(features, targets, order, batch_size)
    if block_steps <= 0:
        raise ValueError(f"block_steps must be positive, got {block_steps}")
    active = list(range(num)) if active is None else sorted(set(active))
    schedulers = list(schedulers) if schedulers is not None else [None] * num
    steps = [LinearHeadSteps(heads[h], losses[h], optimizers[h], features.dtype, autocast) for h in active]
    workers = (head_workers(len(steps), features.device, autocast) if workers is None
               else max(1, min(workers, len(steps))))
    shares = [list(range(w, len(steps), workers)) for w in range(workers)]  # heads dealt round-robin
    batches = torch.split(order, batch_size)

    def train(share: List[int]) -> torch.Tensor:
        return _train_heads([steps[i] for i in share], [schedulers[active[i]] for i in share], features, targets,
                            order, batch_size, block_steps, first_update)

    if workers == 1:
        totals = train(shares[0]).tolist()
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(train, shares))
        totals = [0.0] * len(steps)
        for share, share_totals in zip(shares, done):
            for i, total in zip(share, share_totals.tolist()):
                totals[i] = total
    out: List[Optional[float]] = [None] * num
    for h, total in zip(active, totals):
        out[h] = total / max(len(batches), 1)
    return out
