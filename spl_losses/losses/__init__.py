"""Every loss of the package; importing this module registers them."""
from .base import REFERENCE_EPS, SPLoss, neg_log
from .assume_negative import (
    AssumeNegativeLabelSmoothingLoss,
    AssumeNegativeLoss,
    FullBCELabelSmoothingLoss,
    FullBCELoss,
    IgnoreUnobservedLoss,
    WeakAssumeNegativeLoss,
    WeightedBCELoss,
)
from .epr import ExpectedPositiveRegularizedLoss, expected_positive_regularizer
from .role import LabelEstimator, ROLELoss
