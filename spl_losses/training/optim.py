"""Optimizers and learning-rate schedules from timm, with the recipe's parameter groups.

Parameter groups: the backbone at ``lr``, the classifier at ``lr * head_lr_mult`` (10 in the large-loss
reference), the loss's trainable state (ROLE's estimator) at ``lr * state_lr_mult`` (10 in the ROLE
reference). The optimizer is ``timm.optim.create_optimizer_v2`` (``adam`` by default, as the protocol;
note that timm's ``sgd`` is Nesterov SGD and ``momentum`` plain SGD with momentum). A sparse estimator
(``--sparse-estimator``) gets its own ``torch.optim.SparseAdam``. The schedule is
``timm.scheduler.create_scheduler_v2`` stepped per update (none by default: a constant rate, as the
protocol); it is a pure function of the step count, so a resumed run continues it exactly.
"""
from typing import Dict, List, Optional, Sequence

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

__all__ = ["param_groups", "build_optimizers", "build_scheduler"]


def param_groups(
        lr: float,
        backbone: Sequence[nn.Parameter] = (),
        head: Sequence[nn.Parameter] = (),
        loss_state: Sequence[nn.Parameter] = (),
        head_lr_mult: float = 1.0,
        state_lr_mult: float = 10.0,
) -> List[Dict]:
    """Optimizer parameter groups (empty groups left out).

    Args:
        lr: Base learning rate (backbone).
        backbone: Backbone parameters.
        head: Classifier parameters (``lr * head_lr_mult``).
        loss_state: Trainable loss state (``lr * state_lr_mult``).
        head_lr_mult: Head multiplier.
        state_lr_mult: Loss-state multiplier.
    """
    groups = [{"params": list(backbone), "lr": lr, "name": "backbone"},
              {"params": list(head), "lr": lr * head_lr_mult, "name": "head"},
              {"params": list(loss_state), "lr": lr * state_lr_mult, "name": "loss_state"}]
    return [g for g in groups if g["params"]]


def _fused_ok(groups: List[Dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizers(
        groups: List[Dict],
        opt: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        sparse_groups: Optional[List[Dict]] = None,
) -> List[torch.optim.Optimizer]:
    """The optimizer(s) stepping ``groups``; sparse-gradient groups get their own ``SparseAdam``.

    Args:
        groups: Dense parameter groups (see :func:`param_groups`).
        opt: A ``timm.optim`` optimizer name (``adam``, ``adamw``, ``momentum``, ``sgd``, ...).
        momentum: Momentum of SGD-like optimizers.
        weight_decay: Weight decay (0 in the protocol).
        sparse_groups: Groups whose parameters get sparse gradients (Adam only).
    """
    kwargs = {"fused": True} if opt in ("adam", "adamw") and _fused_ok(groups) else {}
    if opt in ("sgd", "nesterov", "momentum"):
        kwargs["momentum"] = momentum
    try:
        dense = create_optimizer_v2(groups, opt=opt, lr=groups[0]["lr"], weight_decay=weight_decay, **kwargs)
    except (AssertionError, KeyError, ValueError) as err:
        raise ValueError(f"--opt {opt!r}: timm.optim could not create it ({err})") from None
    optimizers = [dense]
    if sparse_groups:
        if opt != "adam":
            raise ValueError("a sparse estimator (--sparse-estimator) needs --opt adam (SparseAdam)")
        optimizers.append(torch.optim.SparseAdam(sparse_groups))
    return optimizers


def build_scheduler(optimizer: torch.optim.Optimizer, sched: str, epochs: int, updates_per_epoch: int,
                    warmup_epochs: int = 0, warmup_lr: float = 1e-6, min_lr: float = 0.0, decay_epochs: int = 30,
                    decay_rate: float = 0.1):
    """A timm scheduler stepped per update (``scheduler.step_update(num_updates)``), or None for a constant rate.

    Args:
        optimizer: The optimizer.
        sched: ``none``, ``cosine``, ``step``, ``multistep``, ``poly`` or ``tanh``.
        epochs: Epochs of the phase.
        updates_per_epoch: Optimizer steps per epoch.
        warmup_epochs: Linear warm-up epochs from ``warmup_lr``.
        warmup_lr: Learning rate at the start of the warm-up.
        min_lr: Lowest rate of decaying schedules.
        decay_epochs: Step schedule: epochs between decays.
        decay_rate: Step schedules: factor per decay.
    """
    if sched == "none" and warmup_epochs == 0:
        return None
    if sched == "none":  # constant after the warm-up: a step schedule that never decays
        sched, decay_rate, decay_epochs = "step", 1.0, max(epochs, 1)
    scheduler, _ = create_scheduler_v2(optimizer, sched=sched, num_epochs=epochs, decay_epochs=decay_epochs,
                                       decay_rate=decay_rate, min_lr=min_lr, warmup_lr=warmup_lr,
                                       warmup_epochs=warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=max(updates_per_epoch, 1))
    return scheduler
