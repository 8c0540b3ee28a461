"""Building any registered loss from the recipe's arguments, generically.

The loss's constructor signature decides what it receives: ``num_classes``, ``num_examples``,
``observed_labels`` (dense {-1, 0, 1} training labels), ``expected_num_pos``, ``num_epochs``,
``seed``, ``sparse`` and any option flag that was set.
"""
import inspect
from typing import Any, Dict, Optional, Set

import torch
from torch import nn

from .._registry import get_loss_class

__all__ = ["loss_parameters", "loss_takes", "build_loss", "trainable_state_parameters"]


def loss_parameters(name: str) -> Set[str]:
    """Names of the constructor arguments of loss ``name`` (through ``**kwargs`` to its base classes).

    Args:
        name: Registered loss name.
    """
    cls = get_loss_class(name)
    params: Set[str] = set()
    targets = cls.__mro__ if isinstance(cls, type) else (cls,)
    for klass in targets:
        init = klass.__init__ if isinstance(klass, type) else klass
        if init is object.__init__ or init is nn.Module.__init__:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            continue
        params |= {n for n, p in sig.parameters.items()
                   if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params


def loss_takes(name: str, argument: str) -> bool:
    """Whether loss ``name``'s constructor takes ``argument`` (e.g. ``"expected_num_pos"``).

    Args:
        name: Registered loss name.
        argument: Constructor argument name.
    """
    return argument in loss_parameters(name)


def build_loss(
        name: str,
        num_classes: int,
        num_examples: int,
        observed_labels: Optional[torch.Tensor] = None,
        expected_num_pos: Optional[float] = None,
        num_epochs: Optional[int] = None,
        seed: Optional[int] = None,
        sparse: bool = False,
        options: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """Create loss ``name`` with the arguments its constructor takes.

    Args:
        name: Registered loss name.
        num_classes: C.
        num_examples: N, the training-set size (losses with per-example state).
        observed_labels: (N, C) {-1, 0, 1} training labels (estimator / label-matrix initialisation).
        expected_num_pos: k of EPR/ROLE-like losses.
        num_epochs: Total epochs (losses with epoch schedules).
        seed: Seed of the loss's own random initialisation.
        sparse: Ask for sparse gradients of per-example state (when the loss supports it).
        options: Loss options set by the user; an option the loss does not take is an error.

    Returns:
        The loss module.
    """
    params = loss_parameters(name)
    options = dict(options or {})
    unknown = sorted(set(options) - params)
    if unknown:
        raise ValueError(f"loss {name!r} does not take option(s) {unknown}; it takes {sorted(params)}")
    kwargs: Dict[str, Any] = {}
    auto = {"num_classes": num_classes, "num_examples": num_examples, "observed_labels": observed_labels,
            "expected_num_pos": expected_num_pos, "num_epochs": num_epochs, "seed": seed}
    for key, value in auto.items():
        if key in params and value is not None and key not in options:
            kwargs[key] = value
    if "sparse" in params and sparse:
        kwargs["sparse"] = True
    if "expected_num_pos" in params and "expected_num_pos" not in kwargs and "expected_num_pos" not in options:
        raise ValueError(f"loss {name!r} needs expected_num_pos (k): pass --expected-num-pos")
    kwargs.update(options)
    return get_loss_class(name)(**kwargs)


def trainable_state_parameters(loss: nn.Module):
    """The loss's trainable parameters (ROLE's label estimator), as a list (possibly empty).

    Args:
        loss: The loss module.
    """
    return [p for p in loss.parameters() if p.requires_grad]
