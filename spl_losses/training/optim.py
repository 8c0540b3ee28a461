"""Optimizers of the protocol: Adam (no weight decay) or SGD with momentum, with learning-rate
multipliers for the classifier head and for the loss's trainable state (ROLE's estimator)."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizers"]


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
        loss_state: Trainable loss state (``lr * state_lr_mult``; 10x in the ROLE reference).
        head_lr_mult: Head multiplier (10 in the large-loss reference).
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
        opt: ``"adam"`` or ``"sgd"``.
        momentum: SGD momentum.
        weight_decay: Weight decay (0 in the protocol).
        sparse_groups: Groups whose parameters get sparse gradients (Adam only).
    """
    if opt == "adam":
        dense = torch.optim.Adam(groups, weight_decay=weight_decay, fused=_fused_ok(groups))
    elif opt == "sgd":
        dense = torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"opt must be 'adam' or 'sgd', got {opt!r}")
    optimizers = [dense]
    if sparse_groups:
        if opt != "adam":
            raise ValueError("sparse loss state (--sparse-estimator) needs --opt adam (SparseAdam)")
        optimizers.append(torch.optim.SparseAdam(sparse_groups))
    return optimizers
