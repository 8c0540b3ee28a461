"""Model-side methods: wrappers around timm models."""
from .boostlu import BoostLU, create_boostlu_model
