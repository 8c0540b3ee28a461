"""Training several linear heads on the same feature tensors in one pass: a grid of learning rates at once.

The points of a learning-rate grid that share everything else (features, batch size, seed, so the same
batches in the same order) differ only in their heads and what belongs to each head: its optimizer
(learning rate and Adam moments), its loss (ROLE's label estimator, LL-Cp's corrections, EM-APL's
pseudo-labels, each head's own) and its batch statistics (each head's EPR regulariser, its own large-loss
selection). Heads never read each other's state, so a pass gathers a block of batches once and trains the
heads on it one after another, each with the steps of
:func:`~spl_losses.training.linear_head.train_linear_epoch` (:class:`~spl_losses.training.linear_head.LinearHeadSteps`):
a head's logits, gradients, loss, optimizers and schedule are those of training it alone, in the same
order, so a learning-rate grid trained together and trained point by point give the same numbers, however
its points are grouped.

Why head by head over a block rather than every head at every step (COCO-sized features, D = 2,048,
C = 80, one CPU thread): a step of a head streams its weights, weight gradient and Adam moments (~2.6 MB)
through memory, and training four heads step by step keeps ~10 MB in play, more than a core's L2 cache;
measured here, that ran up to 15 % slower than training the points one by one. A block of 32 batches (4 MB of
features at batch 16) trains one head with its state in cache, as a run alone does, and the block's
gathers are shared. No pass can share the per-head work itself (the products, Adam, the loss): a grid of
H heads costs about H runs, less the gathers and some per-step Python.
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from .linear_head import LinearHeadSteps, check_epoch_inputs

__all__ = ["train_head_group_epoch", "BLOCK_STEPS"]

#: Batches gathered at once and trained head by head.
BLOCK_STEPS = 32


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
) -> List[Optional[float]]:
    """One epoch of mini-batch training of several heads on the same batches (see the module docstring).

    Each head is trained as :func:`~spl_losses.training.linear_head.train_linear_epoch` trains one: its loss
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
        block_steps: Batches gathered at once and trained head by head (the results do not depend on it).
        autocast: Optional zero-argument callable returning an autocast context (mixed precision only).

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
    steps, totals = {}, {}
    batches = torch.split(order, batch_size)
    for h in active:
        steps[h] = LinearHeadSteps(heads[h], losses[h], optimizers[h], features.dtype, autocast)
        totals[h] = torch.zeros((), device=features.device)
    for start in range(0, len(batches), block_steps):
        block = batches[start:start + block_steps]
        gathered = [(idx, features.index_select(0, idx), targets.index_select(0, idx)) for idx in block]
        for h in active:
            for offset, (idx, x, y) in enumerate(gathered, start=1):
                totals[h] += steps[h].step(idx, x, y)
                if schedulers[h] is not None:
                    schedulers[h].step_update(num_updates=first_update + start + offset)
    out: List[Optional[float]] = [None] * num
    for h in active:
        out[h] = float(totals[h]) / max(len(batches), 1)
    return out
