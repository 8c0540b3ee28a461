"""Optimizers for per-example parameters (ROLE's label estimator).

:class:`LazyAdam` equals ``torch.optim.Adam`` while a step costs O(rows with a gradient);
:func:`catch_up_rows` brings rows up to date before they are read.
"""
from .lazy_adam import LazyAdam, catch_up_rows

__all__ = ["LazyAdam", "catch_up_rows"]
