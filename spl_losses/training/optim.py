"""Optimizers and learning-rate schedules from timm, with the recipe's parameter groups.

Parameter groups: the backbone at ``lr``, the classifier at ``lr * head_lr_mult`` (10 in the large-loss
reference), the loss's trainable state (ROLE's estimator) at ``lr * state_lr_mult`` (10 in the ROLE
reference). The optimizer is ``timm.optim.create_optimizer_v2`` (``adam`` by default, as the protocol;
note that timm's ``sgd`` is Nesterov SGD and ``momentum`` plain SGD with momentum).

The label estimator's optimizer (``--estimator-optimizer``, :func:`estimator_optimizer`): ``adam`` keeps
it a dense parameter group of that optimizer, as the reference; ``lazy_adam`` gives it sparse gradients
and :class:`~spl_losses.optim.LazyAdam`, the same Adam (to float tolerance) at O(B·C) per step instead of
O(N·C); ``sparse_adam`` gives it ``torch.optim.SparseAdam``, another optimizer (its moments decay only on
the steps a row is read). The two row-sparse ones are Adam: they need ``--opt adam`` (or ``adamw``) without
weight decay, and take its betas and eps. Either way :func:`build_optimizer` returns one optimizer (a
:class:`~spl_losses.optim.CombinedOptimizer` when the estimator has its own), so a scheduler sets every
group's rate and a checkpoint saves every state. The schedule is ``timm.scheduler.create_scheduler_v2``
stepped per update (none by default: a constant rate, as the protocol); it is a pure function of the step
count, so a resumed run continues it exactly.
"""
from typing import Dict, List, Sequence

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ..optim import CombinedOptimizer, LazyAdam

__all__ = ["ESTIMATOR_OPTIMIZERS", "LAZY_ADAM_MIN_ENTRIES", "LAZY_ADAM_MIN_ENTRIES_ACCELERATOR", "param_groups",
           "estimator_optimizer", "build_optimizer", "build_scheduler"]

#: Choices of ``--estimator-optimizer``.
ESTIMATOR_OPTIMIZERS = ("auto", "lazy_adam", "adam", "sparse_adam")
#: ``auto`` picks LazyAdam from this many estimator entries N·C on, where its step is faster than dense
#: Adam's: on one CPU core (B = 16, C = 80; benchmarks/estimator_optimizer.py) LazyAdam's costs 0.6-0.8 ms
#: whatever N in shuffled epochs with a checkpoint per epoch, 1.2-1.5 ms for rows drawn at random; dense
#: Adam's ~1.1 ms per million entries (crossover 0.5 to 1.3 million). Below it both cost little.
LAZY_ADAM_MIN_ENTRIES = 1_000_000
#: The same on an accelerator (CUDA): LazyAdam's ~100 small kernels and a few host syncs per step against
#: dense Adam's memory traffic (~36 bytes per entry with the dense gradient) at ~2 TB/s. An estimate, not
#: a measurement; under data parallelism dense Adam also all-reduces 4·N·C bytes per step.
LAZY_ADAM_MIN_ENTRIES_ACCELERATOR = 30_000_000
#: ``--opt`` values that are Adam when the weight decay is 0 (the row-sparse optimizers' family).
_ADAM_FAMILY = ("adam", "adamw")
_STATE_GROUP = "loss_state"


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
        loss_state: Trainable loss state (``lr * state_lr_mult``), the group named ``loss_state``.
        head_lr_mult: Head multiplier.
        state_lr_mult: Loss-state multiplier.
    """
    groups = [{"params": list(backbone), "lr": lr, "name": "backbone"},
              {"params": list(head), "lr": lr * head_lr_mult, "name": "head"},
              {"params": list(loss_state), "lr": lr * state_lr_mult, "name": _STATE_GROUP}]
    return [g for g in groups if g["params"]]


def estimator_optimizer(choice: str, num_entries: int, opt: str = "adam", weight_decay: float = 0.0,
                        device_type: str = "cpu") -> str:
    """The label estimator's optimizer: ``lazy_adam``, ``adam`` (dense, in the ``opt`` optimizer) or ``sparse_adam``.

    Args:
        choice: ``auto``, ``lazy_adam``, ``adam`` or ``sparse_adam`` (``--estimator-optimizer``).
        num_entries: N·C, the estimator's entries (``auto`` picks ``lazy_adam`` from
            :data:`LAZY_ADAM_MIN_ENTRIES` on, :data:`LAZY_ADAM_MIN_ENTRIES_ACCELERATOR` off the CPU, when
            ``opt`` is Adam without weight decay).
        opt: The network's optimizer (``--opt``).
        weight_decay: The weight decay (``--weight-decay``).
        device_type: The training device's type (``cpu``, ``cuda``, ...).

    Raises:
        ValueError: an unknown choice, or a row-sparse one with an optimizer other than Adam.
    """
    if choice not in ESTIMATOR_OPTIMIZERS:
        raise ValueError(f"--estimator-optimizer must be one of {', '.join(ESTIMATOR_OPTIMIZERS)}, got {choice!r}")
    adam = opt in _ADAM_FAMILY and weight_decay == 0.0
    if choice == "auto":
        least = LAZY_ADAM_MIN_ENTRIES if device_type == "cpu" else LAZY_ADAM_MIN_ENTRIES_ACCELERATOR
        return "lazy_adam" if adam and num_entries >= least else "adam"
    if choice != "adam" and not adam:
        raise ValueError(f"--estimator-optimizer {choice} is Adam without weight decay; with --opt {opt} and "
                         f"--weight-decay {weight_decay:g} the network would train with another optimizer. Use "
                         "--estimator-optimizer adam (the estimator then follows --opt, as a dense parameter group) "
                         "or --opt adam with --weight-decay 0")
    return choice


def _fused_ok(groups: List[Dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _timm_optimizer(groups: List[Dict], opt: str, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    kwargs = {"fused": True} if opt in _ADAM_FAMILY and _fused_ok(groups) else {}
    if opt in ("sgd", "nesterov", "momentum"):
        kwargs["momentum"] = momentum
    try:
        return create_optimizer_v2(groups, opt=opt, lr=groups[0]["lr"], weight_decay=weight_decay, **kwargs)
    except (AssertionError, KeyError, ValueError) as err:
        raise ValueError(f"--opt {opt!r}: timm.optim could not create it ({err})") from None


def build_optimizer(
        groups: List[Dict],
        opt: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        estimator: str = "adam",
) -> torch.optim.Optimizer:
    """The optimizer stepping ``groups``; with a row-sparse ``estimator`` one, the ``loss_state`` group gets it.

    Args:
        groups: Parameter groups (see :func:`param_groups`).
        opt: A ``timm.optim`` optimizer name (``adam``, ``adamw``, ``momentum``, ``sgd``, ...).
        momentum: Momentum of SGD-like optimizers.
        weight_decay: Weight decay (0 in the protocol).
        estimator: The ``loss_state`` group's optimizer, resolved by :func:`estimator_optimizer`: ``adam``
            (a group of the ``opt`` optimizer), ``lazy_adam`` or ``sparse_adam`` (its parameters then
            have sparse gradients: build the loss with ``sparse=True``).

    Returns:
        The ``opt`` optimizer, or a :class:`~spl_losses.optim.CombinedOptimizer` of it and the
        estimator's (the estimator's alone if no other group is given).
    """
    if estimator not in ESTIMATOR_OPTIMIZERS[1:]:
        raise ValueError(f"estimator must be lazy_adam, adam or sparse_adam (resolve auto with estimator_optimizer), "
                         f"got {estimator!r}")
    state = [g for g in groups if g.get("name") == _STATE_GROUP]
    if estimator == "adam" or not state:
        return _timm_optimizer(groups, opt, momentum, weight_decay)
    estimator_optimizer(estimator, 0, opt, weight_decay)  # refuses a row-sparse one beside another optimizer
    dense_groups = [g for g in groups if g.get("name") != _STATE_GROUP]
    dense = _timm_optimizer(dense_groups, opt, momentum, weight_decay) if dense_groups else None
    betas, eps = (tuple(dense.defaults["betas"]), dense.defaults["eps"]) if dense is not None else ((0.9, 0.999), 1e-8)
    if estimator == "lazy_adam":
        sparse = LazyAdam(state, lr=state[0]["lr"], betas=betas, eps=eps)
    else:
        sparse = torch.optim.SparseAdam(state, lr=state[0]["lr"], betas=betas, eps=eps)
    return sparse if dense is None else CombinedOptimizer([dense, sparse])


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
