"""Optimizers for per-example parameters (ROLE's label estimator).

:class:`LazyAdam` equals ``torch.optim.Adam`` while a step costs O(rows with a gradient); its ``catch_up``
brings rows up to date before they are read (the estimator that owns the rows calls it). :class:`CombinedOptimizer`
steps several optimizers (the network's and the estimator's) as one.
"""
from .combined import CombinedOptimizer
from .lazy_adam import LazyAdam

__all__ = ["CombinedOptimizer", "LazyAdam"]
