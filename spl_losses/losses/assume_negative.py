"""Losses of Cole et al. (CVPR 2021) that are a weighted binary cross-entropy per entry.

Each entry's loss is ``a * -log(p) + b * -log(1 - p)`` with weights ``(a, b)`` read off the target,
reduced as in Cole et al.: ``sum / (B * C)``, the mean over all entries including those whose loss
is zero. Observed negatives (-1) get ``-log(1 - p)``.
"""
from typing import Optional, Tuple

import torch

from .._registry import register_loss
from ._checks import check_num_classes, check_number
from ._citations import COLE_2021
from ._functional import positive_mask
from .base import SPLoss

__all__ = ["WeightedBCELoss", "FullBCELoss", "FullBCELabelSmoothingLoss", "AssumeNegativeLoss",
           "AssumeNegativeLabelSmoothingLoss", "WeakAssumeNegativeLoss", "IgnoreUnobservedLoss"]


class WeightedBCELoss(SPLoss):
    """Base of the per-entry weighted BCE losses: subclasses return the weights ``(a, b)``.

    Args:
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    paper = "Cole et al., CVPR 2021"
    citation = COLE_2021
    batch_reduction = "mean"
    #: True when no entry ever gets both weights > 0 (hard {-1, 0, 1} targets): one log instead of two.
    exclusive_weights: bool = False

    def weights(self, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return the (B, C) weights ``(a, b)`` of ``-log p`` and ``-log(1 - p)``.

        Args:
            targets: (B, C) float32 targets in the loss's encoding.
        """
        raise NotImplementedError

    def compute(self, logits, targets, index=None):
        a, b = self.weights(targets)
        return self.weighted_bce_mean(logits, a, b, exclusive=self.exclusive_weights)[0]


class _LabelSmoothingBCELoss(WeightedBCELoss):
    """Base of the label-smoothing losses: holds the smoothing coefficient ``ls_coef`` in [0, 1)."""

    def __init__(self, ls_coef: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.ls_coef = check_number("ls_coef", ls_coef, 0.0, 1.0, strict_maximum=True)

    def extra_repr(self) -> str:
        return f"ls_coef={self.ls_coef}, " + super().extra_repr()


@register_loss("bce")
class FullBCELoss(WeightedBCELoss):
    """Binary cross-entropy on full labels (the "full labels" upper bound of Cole et al., CVPR 2021).

    Targets are multi-hot (0 = true negative); soft targets in [0, 1] are accepted, so the loss is a
    drop-in criterion for timm's multi-label training. Published mAP (VOC / COCO / NUS / CUB,
    end-to-end): 90.2 / 78.0 / 54.5 / 32.9.

    Args:
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    target_encoding = "multi_hot"

    def weights(self, targets):
        return targets, 1.0 - targets


@register_loss("bce_ls")
class FullBCELabelSmoothingLoss(_LabelSmoothingBCELoss):
    """Binary cross-entropy on full labels with label smoothing (Cole et al., CVPR 2021).

    A positive costs ``(1-ls)·nlog(p) + ls·nlog(1-p)``, a negative ``(1-ls)·nlog(1-p) + ls·nlog(p)``.

    Args:
        ls_coef: Smoothing coefficient, in [0, 1) (0.1 in the paper).
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    target_encoding = "multi_hot"

    def weights(self, targets):
        a = targets * (1.0 - self.ls_coef) + (1.0 - targets) * self.ls_coef
        return a, 1.0 - a


@register_loss("an")
class AssumeNegativeLoss(WeightedBCELoss):
    """Assume negative (AN): unobserved labels are treated as negatives (Cole et al., CVPR 2021).

    Published mAP (VOC / COCO / NUS / CUB, end-to-end): 85.1 / 64.1 / 42.0 / 19.1;
    linear-init 86.9 / 68.7 / 47.6 / 20.9.

    Args:
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    exclusive_weights = True

    def weights(self, targets):
        pos = positive_mask(targets)
        return pos, 1.0 - pos


@register_loss("an_ls")
class AssumeNegativeLabelSmoothingLoss(_LabelSmoothingBCELoss):
    """Assume negative with label smoothing (AN-LS, Cole et al., CVPR 2021).

    Observed positive: ``(1-ls)·nlog(p) + ls·nlog(1-p)``; unobserved: ``(1-ls)·nlog(1-p) + ls·nlog(p)``;
    observed negative: ``nlog(1-p)``. Published mAP (VOC / COCO / NUS / CUB): 86.7 / 66.9 / 44.9 / 17.9.

    Args:
        ls_coef: The smoothing coefficient ls, in [0, 1) (0.1 in the paper).
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    def weights(self, targets):
        pos = positive_mask(targets)
        unk = 1.0 - targets.abs()
        a = pos * (1.0 - self.ls_coef) + unk * self.ls_coef
        return a, 1.0 - a


@register_loss("wan")
class WeakAssumeNegativeLoss(WeightedBCELoss):
    """Weak assume negative (WAN): unobserved negatives weighted 1/(C-1) (Cole et al., CVPR 2021).

    Published mAP (VOC / COCO / NUS / CUB): 86.5 / 64.8 / 46.3 / 20.3.

    Args:
        num_classes: C; checked against the logits when given, else read from them.
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    exclusive_weights = True

    def __init__(self, num_classes: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes, minimum=2)

    def weights(self, targets):
        num_classes = targets.shape[1]
        if num_classes < 2:
            raise ValueError(f"wan needs at least 2 classes (weight 1/(C-1)), got C={num_classes}")
        pos = positive_mask(targets)
        observed = targets.abs()
        # observed negative: 1; unobserved: 1/(C-1)
        return pos, (observed - pos) + (1.0 - observed) / (num_classes - 1)


@register_loss("iu")
class IgnoreUnobservedLoss(WeightedBCELoss):
    """Ignore unobserved (IU): only observed positives and observed negatives contribute.

    Reduced over all B·C entries like the reference, so unobserved entries count as zeros. With
    single positives alone this trains towards predicting everything positive (a baseline of
    Cole et al., CVPR 2021).

    Args:
        eps: The epsilon inside the reference log ``-log(p + eps)``.
        stable: Compute ``-log p`` as ``softplus(-x)`` (log-sigmoid form) instead.
        check_inputs: Check the targets' encoding and shape on every call.
    """

    exclusive_weights = True

    def weights(self, targets):
        pos = positive_mask(targets)
        return pos, pos - targets
