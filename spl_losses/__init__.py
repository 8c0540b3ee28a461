"""spl_losses: multi-label learning from single positive labels (SPML) for timm models.

The losses come from one registry (``create_loss`` / ``list_losses`` / ``register_loss``); the
datasets live in :mod:`spl_losses.data` (it pulls in ``datasets``), the Hub helpers in
:mod:`spl_losses.hub`, the teachers in :mod:`spl_losses.teachers`. ``import spl_losses`` loads the
losses only (torch and timm); every other submodule, and the names below that come from one, is
imported the first time it is used (PEP 562), so ``datasets``, ``optuna``, ``matplotlib``,
``accelerate`` and ``open_clip`` are never loaded by the import itself.
"""
import importlib

__version__ = "0.1.0"

from ._registry import (create_loss, get_loss_class, is_loss, list_losses, loss_kwargs, loss_parameters,
                        register_loss)
from .labels import dense_to_indices, indices_to_dense
from .losses import ContrastiveAuxiliary, LabelEstimator, SPLoss, with_label_estimator
from . import losses

#: Submodules imported on first access (``spl_losses.data``, ``spl_losses.metrics``, ...).
_LAZY_SUBMODULES = ("checkpoints", "data", "hub", "metrics", "models", "optim", "teachers",
                    "training", "transforms")
#: Names exported from a submodule imported on first access.
_LAZY_NAMES = {"BoostLU": "models", "LinearProbe": "models"}

__all__ = ["create_loss", "get_loss_class", "is_loss", "list_losses", "loss_kwargs", "loss_parameters",
           "register_loss", "dense_to_indices", "indices_to_dense", "ContrastiveAuxiliary", "LabelEstimator",
           "SPLoss", "with_label_estimator", "BoostLU", "LinearProbe", "losses", "metrics", "models", "transforms"]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # sets the attribute: one lookup only
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_NAMES))
