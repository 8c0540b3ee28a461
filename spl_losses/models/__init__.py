"""Model-side methods: wrappers around timm models."""
from .boostlu import BoostLU, create_boostlu_model
from .linear_probe import LinearProbe, preprocessing_from_timm
