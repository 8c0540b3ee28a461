"""Training several linear heads on the same feature tensors in one pass: a grid of learning rates at once.

The points of a learning-rate grid that share everything else (features, batch size, seed, so the same
batches in the same order) differ only in their heads and what belongs to each head: its optimizer
(learning rate and Adam moments), its loss (ROLE's label estimator, LL-Cp's corrections, EM-APL's
pseudo-labels, each head's own) and its batch statistics (each head's EPR regulariser, its own large-loss
selection). One pass over the shuffled features gathers each batch once, computes every head's logits,
calls each head's own loss module on its logits (one backward pass for all), writes every head's weight
gradient with one matrix product over the stacked heads and steps each head's optimizers.

Each head gets what training it alone with :func:`~spl_losses.training.linear_head.train_linear_epoch`
gives: its logits are its own matrix product (one product over the stacked weights would sum in another
order for small shapes), its weight gradient is its row block of the stacked product (the same dot
products), its loss, optimizers and schedule are its own. So a learning-rate grid trained together and
trained point by point give the same numbers, however its points are grouped.

Where the time goes (COCO-sized features, D = 2,048, C = 80, batch 16, one CPU thread): every step of
every head streams that head's weights, weight gradient and Adam moments through memory (the forward
product reads the C·D weights, the gradient product writes C·D values, fused Adam reads four C·D tensors
and writes three: ~6 MB), which a shared pass cannot share; measured with 4 heads, ~0.35 ms forward,
~0.25 ms weight gradient and ~0.25 ms Adam per head and step, about what separate runs spend. A pass saves
the feature gather and the per-step Python of separate runs, and each head's loss keeps its own cost
(~0.15 ms forward and backward for ``an``, ~0.5 ms for ``role``, mostly per-operation overhead).
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

__all__ = ["HeadGroup", "train_head_group_epoch"]


class HeadGroup:
    """H ``nn.Linear`` heads ``D -> C`` (float32, with bias, on one device) trained on the same batches.

    Each head keeps its own parameters (what its optimizer steps and its checkpoint saves); their
    gradients are row blocks of one (H·C, D) buffer and one (H·C,) buffer, written by :meth:`write_grads`.

    Args:
        heads: The heads, all of the same shape.
    """

    def __init__(self, heads: Sequence[nn.Linear]):
        if not heads:
            raise ValueError("HeadGroup needs at least one head")
        first = heads[0]
        for i, head in enumerate(heads):
            if type(head) is not nn.Linear or head.bias is None:
                raise TypeError(f"head {i} must be an nn.Linear with bias, got {head!r}")
            if head.weight.shape != first.weight.shape or head.weight.dtype != torch.float32 \
                    or head.weight.device != first.weight.device:
                raise ValueError(f"head {i}: weight {tuple(head.weight.shape)} {head.weight.dtype} on "
                                 f"{head.weight.device}, expected {tuple(first.weight.shape)} torch.float32 on "
                                 f"{first.weight.device} (every head alike)")
        self.heads = list(heads)
        self.num_heads = len(heads)
        self.out_features, self.in_features = first.weight.shape
        self.grad_weight = torch.zeros(self.num_heads * self.out_features, self.in_features,
                                       device=first.weight.device)
        self.grad_bias = torch.zeros(self.num_heads * self.out_features, device=first.weight.device)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Every head's logits of a batch as one (H, B, C) float32 tensor (no autograd).

        Args:
            features: (B, D) float32 features.
        """
        out = torch.empty(self.num_heads, features.shape[0], self.out_features, device=features.device)
        for h, head in enumerate(self.heads):  # each head's own product, as when it trains alone
            torch.addmm(head.bias.detach(), features, head.weight.detach().t(), out=out[h])
        return out

    def write_grads(self, features: torch.Tensor, grad_logits: torch.Tensor) -> None:
        """Set every head's weight and bias gradient from the gradient of its logits.

        Args:
            features: (B, D) features of the batch.
            grad_logits: (H, B, C) gradient of each head's loss with respect to its logits.
        """
        flat = grad_logits.transpose(0, 1).reshape(features.shape[0], -1)  # (B, H*C): heads side by side
        torch.mm(flat.t(), features, out=self.grad_weight)  # row block h is head h's grad_logits.t() @ x
        c = self.out_features
        for h, head in enumerate(self.heads):
            torch.sum(grad_logits[h], dim=0, out=self.grad_bias[h * c:(h + 1) * c])
            head.weight.grad = self.grad_weight[h * c:(h + 1) * c]
            head.bias.grad = self.grad_bias[h * c:(h + 1) * c]


def train_head_group_epoch(
        group: HeadGroup,
        losses: Sequence[nn.Module],
        optimizers: Sequence[Sequence[torch.optim.Optimizer]],
        features: torch.Tensor,
        targets: torch.Tensor,
        order: torch.Tensor,
        batch_size: int,
        active: Optional[Sequence[int]] = None,
        schedulers: Optional[Sequence] = None,
        first_update: int = 0,
) -> List[Optional[float]]:
    """One epoch of mini-batch training of several heads on the same batches (see the module docstring).

    Each head is trained as :func:`~spl_losses.training.linear_head.train_linear_epoch` trains one: its loss
    is called as ``losses[h](logits_h, targets[idx], index=idx)`` (``index`` when the loss keeps per-example
    state), its optimizers step every batch, its scheduler after every update, and the losses' per-call
    input checks are off during the epoch (check the targets once before).

    Args:
        group: The heads (H of them).
        losses: One loss module per head (each head's own state).
        optimizers: Per head, the optimizers stepping its parameters and its loss's trainable state.
        features: (N, D) float32 features on the heads' device.
        targets: (N, C) dense targets on the same device.
        order: (N,) int64 permutation giving this epoch's example order (the same for every head).
        batch_size: Examples per step; the last batch may be smaller (nothing is dropped).
        active: The heads to train this epoch (default all); the others are left untouched.
        schedulers: Per head, a timm scheduler (``step_update(num_updates)``) or None.
        first_update: Updates done before this epoch (the schedulers' step count).

    Returns:
        Per head, the mean training loss over the epoch's batches (None for a head not trained).
    """
    num = group.num_heads
    if len(losses) != num or len(optimizers) != num:
        raise ValueError(f"{num} heads need {num} losses and {num} optimizer lists, got {len(losses)} and "
                         f"{len(optimizers)}")
    if features.shape[0] != targets.shape[0] or order.shape[0] != features.shape[0]:
        raise ValueError(f"features ({features.shape[0]} rows), targets ({targets.shape[0]} rows) and order "
                         f"({order.shape[0]} entries) must have the same length")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    active = list(range(num)) if active is None else sorted(set(active))
    schedulers = list(schedulers) if schedulers is not None else [None] * num
    by_index = [bool(getattr(loss, "requires_index", False)) for loss in losses]
    head_ids = {id(p) for head in group.heads for p in head.parameters()}
    # the heads' gradients are overwritten every step: only a loss's trainable state needs clearing
    others = [p for h in active for opt in optimizers[h] for g in opt.param_groups for p in g["params"]
              if id(p) not in head_ids]
    checks = {h: getattr(losses[h], "check_inputs", None) for h in active}
    for h in active:
        group.heads[h].train()
        if checks[h] is not None:
            losses[h].check_inputs = False
    totals = torch.zeros(len(active), device=features.device)
    num_batches = 0
    try:
        for idx in torch.split(order, batch_size):
            x = features.index_select(0, idx)
            y = targets.index_select(0, idx)
            logits = group.logits(x)
            for p in others:
                p.grad = None
            leaves = [logits[h].requires_grad_() for h in active]
            values = [losses[h](leaf, y, index=idx) if by_index[h] else losses[h](leaf, y)
                      for h, leaf in zip(active, leaves)]
            torch.autograd.backward(values)
            grads = torch.zeros_like(logits) if len(active) < num else torch.empty_like(logits)
            for h, leaf in zip(active, leaves):
                grads[h] = leaf.grad
            group.write_grads(x, grads)
            for h in active:
                for opt in optimizers[h]:
                    opt.step()
            totals += torch.stack([v.detach() for v in values])
            num_batches += 1
            for h in active:
                if schedulers[h] is not None:
                    schedulers[h].step_update(num_updates=first_update + num_batches)
    finally:
        for h, check in checks.items():
            if check is not None:
                losses[h].check_inputs = check
    out: List[Optional[float]] = [None] * num
    for h, total in zip(active, totals.tolist()):
        out[h] = total / max(num_batches, 1)
    return out
