"""Several optimizers stepped as one, for code written around a single optimizer."""
from typing import Sequence

import torch
from torch.optim import Optimizer

__all__ = ["CombinedOptimizer"]


class CombinedOptimizer(Optimizer):
    """Steps, zeroes, saves and loads several optimizers as one.

    For a model whose parameters need different optimizers, e.g. Adam for the network and
    :class:`~spl_losses.optim.LazyAdam` for a label estimator with sparse gradients, where the code
    around it takes one optimizer: ``accelerate.prepare`` and its checkpoints, a learning-rate
    scheduler. :attr:`param_groups` is the list of every optimizer's groups (the same dicts, so a
    scheduler setting a group's ``lr`` sets it in the optimizer that owns the group); the state dict
    holds every optimizer's state dict, in order, as plain tensors and numbers. Each optimizer keeps
    its state in its own ``state``.

    Example::

        optimizer = CombinedOptimizer([torch.optim.Adam(model.parameters(), lr=lr),
                                       LazyAdam(loss_fn.estimator.parameters(), lr=10 * lr)])

    Args:
        optimizers: The optimizers, each with its own parameters (no parameter in two of them).
    """

    def __init__(self, optimizers: Sequence[Optimizer]):
        optimizers = list(optimizers)
        if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
            raise TypeError(f"CombinedOptimizer takes a non-empty list of torch optimizers, got "
                            f"{[type(o).__name__ for o in optimizers]}")
        self.optimizers = optimizers
        self._linked = False
        # the same group dicts as the optimizers' (no defaults: nothing is added to them)
        super().__init__([group for o in optimizers for group in o.param_groups], {})
        self._linked = True
        self.defaults = dict(optimizers[0].defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Refused once built: add the group to the optimizer in :attr:`optimizers` that should step it.

        Args:
            param_group: A parameter group.
        """
        if self._linked:
            raise NotImplementedError("add parameter groups to one of CombinedOptimizer.optimizers, then build a "
                                      "new CombinedOptimizer")
        super().add_param_group(param_group)

    def step(self, closure=None):
        """Step every optimizer (in order).

        Args:
            closure: Optional callable re-evaluating the model and returning the loss (called once).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or set to None) every optimizer's gradients.

        Args:
            set_to_none: Set gradients to None instead of zeroing them.
        """
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """``{"optimizers": [state dict of each optimizer]}``."""
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load every optimizer's state from :meth:`state_dict`'s output.

        Args:
            state_dict: ``{"optimizers": [...]}`` with one entry per optimizer, in order.
        """
        saved = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.optimizers):
            raise ValueError(f"a CombinedOptimizer of {len(self.optimizers)} optimizers loads "
                             "{'optimizers': [one state dict each]}, got "
                             f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__}")
        for optimizer, state in zip(self.optimizers, saved):
            optimizer.load_state_dict(state)
        # torch's load_state_dict gives each optimizer new group dicts: share them again
        self.param_groups = [group for o in self.optimizers for group in o.param_groups]

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "optimizers": self.optimizers, "_linked": self._linked}

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(o).replace("\n", "\n  ") for o in self.optimizers)
        return f"{type(self).__name__}(\n{inner}\n)"
