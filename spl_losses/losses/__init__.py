"""Every loss of the package; importing this module registers them."""
from ._functional import REFERENCE_EPS, expected_positive_regularizer, neg_log
from .base import SPLoss
from .assume_negative import (
    AssumeNegativeLabelSmoothingLoss,
    AssumeNegativeLoss,
    FullBCELabelSmoothingLoss,
    FullBCELoss,
    IgnoreUnobservedLoss,
    WeakAssumeNegativeLoss,
    WeightedBCELoss,
)
from .epr import ExpectedPositiveRegularizedLoss
from .estimator import EstimatorLoss, LabelEstimator
from .role import ROLELoss
from .robust import AsymmetricAssumeNegativeLoss, HillLoss, SPLCLoss
from .entropy import EM_APL_DATASET_DEFAULTS, EntropyMaximizationAPLLoss, EntropyMaximizationLoss
from .large_loss import LargeLossPermanentCorrection, LargeLossRejection, LargeLossTemporaryCorrection
from .gr import GeneralizedRobustLoss, GRSchedule
from .label_estimation import LabelEstimationLoss, with_label_estimator
from .contrastive import ContrastiveAuxiliary, nt_xent_loss, pooled_features
from ._distributed import split_batches
from .vlpl import VLPL_DATASET_DEFAULTS, PseudoLabelState, VLPLLoss
from .gpr import GPR_DATASET_DEFAULTS, GPRLoss
