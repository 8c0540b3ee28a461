"""spl_losses: multi-label learning from single positive labels (SPML) for timm models.

The losses come from one registry (``create_loss`` / ``list_losses`` / ``register_loss``); the
datasets live in :mod:`spl_losses.data` (imported on demand, it pulls in ``datasets``), the Hub
helpers in :mod:`spl_losses.hub`.
"""
__version__ = "0.1.0"

from ._registry import (create_loss, get_loss_class, is_loss, list_losses, loss_kwargs, loss_parameters,
                        register_loss)
from .labels import dense_to_indices, indices_to_dense
from .losses import ContrastiveAuxiliary, LabelEstimator, SPLoss, with_label_estimator
from .models import BoostLU, LinearProbe
from . import losses, metrics, models, transforms
