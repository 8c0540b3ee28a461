"""Optimizers for per-example parameters (ROLE's label estimator).

:class:`LazyAdam` equals ``torch.optim.Adam`` while a step costs O(rows with a gradient);
:func:`catch_up_rows` brings rows up to date before they are read. :class:`CombinedOptimizer`
steps several optimizers (the network's and the estimator's) as one.
"""
from .combined import CombinedOptimizer
from .lazy_adam import LazyAdam, catch_up_rows

__all__ = ["CombinedOptimizer", "LazyAdam", "catch_up_rows"]
