"""An optimizer's step without the layers around it: the same update, at the cost of its kernels.

A linear head's step on one CPU core is a few hundred microseconds of arithmetic, and the layers around a
fused Adam step cost as much again: accelerate's ``AcceleratedOptimizer.step`` (accelerate 1.16 asks
``importlib.metadata`` whether ``lomo_optim`` is installed twice per step, ~0.3 ms each), the
:class:`~spl_losses.optim.CombinedOptimizer`, torch's step hooks and profiler records, and ``Adam``'s
per-step rebuilding of its tensor lists. :func:`step_function` returns a callable doing the same update:

- an ``AcceleratedOptimizer`` without a gradient scaler, outside XLA and with gradients in sync is its
  optimizer (its ``step`` would call just that);
- a :class:`~spl_losses.optim.CombinedOptimizer` is its optimizers, stepped in order;
- a ``torch.optim.Adam`` / ``AdamW`` with ``fused=True`` (no AMSGrad, no complex or sparse parameters, one
  device) calls ``torch._fused_adam_`` on its state's tensors, group by group, exactly as ``Adam.step``
  does (the same kernel on the same tensors: the same numbers to the last bit); its first step, and any step
  where a parameter has no gradient or its state was replaced (a checkpoint loaded), goes through
  ``Adam.step`` itself;
- any other optimizer is its own ``step`` without torch's profiling wrapper (which runs the step hooks:
  with a hook registered, the step is ``optimizer.step()`` itself).

The optimizers keep their state where they hold it, so their state dicts (and checkpoints) are unchanged.
"""
from typing import Callable, List, Sequence

import torch
from torch.optim import optimizer as _torch_optimizer

from .combined import CombinedOptimizer

__all__ = ["step_function", "unwrapped_optimizers"]


def unwrapped_optimizers(optimizer: torch.optim.Optimizer) -> List[torch.optim.Optimizer]:
    """The optimizers whose steps make ``optimizer``'s step (see the module docstring), in order.

    Args:
        optimizer: An optimizer, an ``AcceleratedOptimizer`` or a :class:`~spl_losses.optim.CombinedOptimizer`.
    """
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and type(optimizer).__name__ == "AcceleratedOptimizer":
        state, gradients = getattr(optimizer, "accelerator_state", None), getattr(optimizer, "gradient_state", None)
        xla = state is not None and str(getattr(state, "distributed_type", "")).endswith("XLA")
        in_sync = gradients is not None and gradients.sync_gradients
        if getattr(optimizer, "scaler", None) is None and not xla and in_sync:
            return unwrapped_optimizers(inner)
        return [optimizer]
    if isinstance(optimizer, CombinedOptimizer):
        return [o for inner in optimizer.optimizers for o in unwrapped_optimizers(inner)]
    return [optimizer]


class _FusedAdamStep:
    """``Adam.step`` of a fused ``torch.optim.Adam``/``AdamW`` as direct ``torch._fused_adam_`` calls."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.groups = None  # per group: (group, params, exp_avgs, exp_avg_sqs, steps), cached after a step

    def decoupled(self, group) -> bool:
        """AdamW's decoupled weight decay (a group key of recent torch; before it, AdamW was its own class)."""
        return bool(group.get("decoupled_weight_decay", isinstance(self.optimizer, torch.optim.AdamW)))

    def _cache(self) -> None:
        state, groups = self.optimizer.state, []
        for group in self.optimizer.param_groups:
            params = list(group["params"])
            if not all(p in state and "exp_avg" in state[p] for p in params):
                self.groups = None
                return
            groups.append((group, params, [state[p]["exp_avg"] for p in params],
                           [state[p]["exp_avg_sq"] for p in params], [state[p]["step"] for p in params]))
        self.groups = groups

    def _current(self) -> bool:
        if self.groups is None or len(self.groups) != len(self.optimizer.param_groups):
            return False
        state = self.optimizer.state
        for (group, params, exp_avgs, _, _), live in zip(self.groups, self.optimizer.param_groups):
            if group is not live or params[0] not in state or state[params[0]]["exp_avg"] is not exp_avgs[0]:
                return False
        return True

    def __call__(self) -> None:
        if not self._current():
            self.optimizer.step()
            self._cache()
            return
        calls = []
        for group, params, exp_avgs, exp_avg_sqs, steps in self.groups:
            grads = [p.grad for p in params]
            if any(g is None for g in grads):  # Adam.step leaves such a parameter out: let it
                self.optimizer.step()
                return
            calls.append((group, params, grads, exp_avgs, exp_avg_sqs, steps))
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in calls:
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            fused = torch._fused_adamw_ if self.decoupled(group) else torch._fused_adam_
            fused(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                  beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                  grad_scale=None, found_inf=None)


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks)


def _bare_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``optimizer.step`` without torch's profiling wrapper (which only runs hooks, and there are none)."""
    step = type(optimizer).step
    bare = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    if bare is None or _hooked(optimizer):
        return optimizer.step
    return lambda: bare(optimizer)


def _direct(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    if not isinstance(optimizer, torch.optim.Optimizer):
        return optimizer.step
    scaled = getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or scaled \
            or not (hasattr(torch, "_fused_adam_") and hasattr(torch, "_fused_adamw_")):  # torch's kernels, by name
        return _bare_step(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    plain = all(g.get("fused") and not g.get("amsgrad") and not g.get("differentiable") and not g.get("capturable")
                and not torch.is_tensor(g["lr"]) and not any(torch.is_tensor(b) for b in g["betas"])
                for g in optimizer.param_groups)
    if not plain or not params or len({p.device for p in params}) != 1 or len({p.dtype for p in params}) != 1 \
            or any(p.is_complex() or p.is_sparse for p in params) or _hooked(optimizer):
        return _bare_step(optimizer)
    return _FusedAdamStep(optimizer)


def step_function(optimizers: Sequence[torch.optim.Optimizer]) -> Callable[[], None]:
    """One callable stepping ``optimizers`` in order, as their ``step()`` calls would (module docstring).

    Args:
        optimizers: Optimizers (possibly ``AcceleratedOptimizer`` or :class:`CombinedOptimizer` wrappers).
    """
    steps = [_direct(o) for optimizer in optimizers for o in unwrapped_optimizers(optimizer)]
    if len(steps) == 1:
        return steps[0]

    def step_all() -> None:
        for step in steps:
            step()
    return step_all
