"""spl_losses: multi-label learning from single positive labels (SPML) for timm models."""
__version__ = "0.1.0"

from ._registry import create_loss, get_loss_class, is_loss, list_losses, register_loss
from .labels import dense_to_indices, indices_to_dense
from .losses import LabelEstimator, SPLoss
from . import losses, metrics
