"""Large-loss rejection and correction (Kim et al., CVPR 2022, "Large Loss Matters in Weakly
Supervised Multi-Label Classification"): ``ll_r``, ``ll_ct``, ``ll_cp``.

All three are BCE-with-logits against assume-negative targets, reduced over all B·C entries. From
the second epoch on, the unobserved entries of the batch with the largest losses are taken as likely
false negatives and rejected (LL-R), corrected for this step (LL-Ct) or corrected for good (LL-Cp).
Published mAP (VOC / COCO / NUS / CUB, end-to-end): LL-R 89.2 / 71.0 / 47.4 / 19.5,
LL-Ct 89.0 / 70.5 / 48.0 / 20.4, LL-Cp 88.4 / 70.7 / 48.3 / 20.1; with BoostLU (a model wrapper),
LL-R + BoostLU 89.29 / 72.89 / 49.59 / 19.80. Reference training: Adam, lr 1e-5 (head ×10), bs 16, 10 epochs.

Differences from the original code (``losses.py`` of the LargeLossMatters repository): it selects
every unobserved entry whose loss reaches the k-th largest value, so ties at that value can take
more than k entries, and once k exceeds the number of unobserved entries its threshold is 0 and
observed entries are taken too; here exactly ``min(k, #unobserved)`` unobserved entries are taken
(ties broken by ``torch.topk``). Neither happens without exact ties or a rate near 1.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._registry import register_loss
from ._checks import check_num_classes, check_number, check_positive_int
from ._citations import KIM_2022
from ._functional import fused_loss, needs_grad
from .base import SPLoss

__all__ = ["LargeLossRejection", "LargeLossTemporaryCorrection", "LargeLossPermanentCorrection",
           "num_large_losses", "select_large_losses", "clean_rate"]


def clean_rate(epoch: int, delta_rel: float) -> float:
    """The original's ``clean_rate`` during 0-based epoch ``epoch``: 1, minus ``delta_rel`` once per finished epoch.

    The subtraction is repeated in floating point exactly as the original training loop does, so
    ``1 - clean_rate`` can exceed ``epoch·delta_rel`` by a rounding error (``1 - 0.975`` after five
    subtractions of 0.005 is ``0.025000000000000022``).

    Args:
        epoch: 0-based epoch (the paper's t - 1).
        delta_rel: Δ_rel, the per-epoch increment of the rejected fraction.
    """
    rate = 1.0
    for _ in range(epoch):
        rate -= delta_rel
    return rate


def num_large_losses(num_entries: int, rate: float) -> int:
    """``ceil(num_entries · rate)``, the number of entries to reject or correct in a batch, within [0, num_entries].

    No rounding is applied, as in the original: with B·C = 320, Δ_rel = 0.005 and the sixth epoch,
    ``rate = 1 - clean_rate(5, 0.005)`` gives ``ceil(8.000000000000007) = 9``.

    Args:
        num_entries: B·C.
        rate: Fraction of the entries.
    """
    return min(num_entries, max(0, math.ceil(num_entries * rate)))


def select_large_losses(loss_matrix: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Return the flat indices of the ``k`` largest entries of ``loss_matrix`` among ``candidates``.

    Fewer than ``k`` indices are returned when there are fewer candidates. Ties are broken by
    ``torch.topk``. Whether a NaN loss is selected is unspecified (the losses stay NaN either way).

    Args:
        loss_matrix: (B, C) per-entry losses.
        candidates: (B, C) bool mask of the entries that may be selected (the unobserved ones).
        k: Number of entries to select (0 selects none).
    """
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=loss_matrix.device)
    scores = loss_matrix.detach().masked_fill(~candidates, -math.inf).flatten()
    k = min(k, scores.numel())
    top = _prefiltered_topk(scores, k)
    if top is None:
        top = torch.topk(scores, k, sorted=False).indices
    return top[candidates.flatten()[top]]


_SAMPLE_STRIDE = 16


def _prefiltered_topk(scores: torch.Tensor, k: int) -> Optional[torch.Tensor]:
    """Exact top-k indices via a threshold estimated on a strided sample, or None to fall back.

    The threshold is the sample's ``2·k/stride``-th largest value; when at least ``k`` scores reach
    it, the k largest of all lie among them, so a top-k over those few is exact. (On CPU a full
    top-k of a (256, 1000) batch costs more than the loss itself.)
    """
    n = scores.numel()
    if scores.device.type != "cpu" or 8 * k > n:
        return None
    sample = scores[::_SAMPLE_STRIDE]
    threshold = torch.topk(sample, min(sample.numel(), 2 * math.ceil(k / _SAMPLE_STRIDE) + 8), sorted=False).values.min()
    above = (scores >= threshold).nonzero().squeeze(1)
    if above.numel() < k or above.numel() > n // 4:
        return None
    return above[torch.topk(scores[above], k, sorted=False).indices]


class _LargeLoss(SPLoss):
    """Common part of the large-loss methods: the assume-negative BCE matrix and the selection.

    Args:
        delta_rel: Δ_rel, the rejection-rate increment per epoch.
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    paper = "Kim et al., CVPR 2022"
    citation = KIM_2022
    unbounded_terms = ("BCE-with-logits is infinite for an observed positive at logit -inf, and for an assumed "
                       "negative at +inf that is not rejected or corrected this step")
    #: Correct the selected entries to target 1 (LL-Ct, LL-Cp) instead of rejecting them (LL-R).
    corrects: bool = False

    def __init__(self, delta_rel: float, num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(check_inputs=check_inputs)
        self.delta_rel = check_number("delta_rel", delta_rel, 0.0, 1.0)
        self.num_classes = check_num_classes(num_classes)

    def rate(self) -> float:
        """The fraction of the batch's B·C entries taken this epoch: the original's ``1 - clean_rate``,
        about ``(t - 1)·delta_rel`` at 1-based epoch t (see :func:`clean_rate`)."""
        return 1.0 - clean_rate(self.epoch, self.delta_rel)

    def compute(self, logits, targets, index=None):
        return self.large_loss_step(logits, targets == 1, targets == 0)[0]

    def large_loss_step(self, logits: torch.Tensor, positive: torch.Tensor,
                        candidates: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """BCE-with-logits against ``positive``, mean over B·C, after rejecting (LL-R) or correcting to
        target 1 (``corrects``) the ``ceil(B·C·rate)`` largest losses among ``candidates``. Returns the
        loss (with its closed-form gradient) and the selected flat indices.

        Args:
            logits: (B, C) float32 logits.
            positive: (B, C) bool targets.
            candidates: (B, C) bool mask of the entries that may be selected.
        """
        with_grad = needs_grad(logits)
        with torch.no_grad():
            x = logits.detach()
            y = positive.float()
            loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            grad = torch.sigmoid(x).sub_(y) if with_grad else None
            selected = select_large_losses(loss, candidates, num_large_losses(loss.numel(), self.rate()))
            flat_loss = loss.view(-1)
            if self.corrects:  # the selected are unobserved (target 0): score them for target 1
                chosen = x.view(-1)[selected]
                flat_loss[selected] = F.binary_cross_entropy_with_logits(chosen, torch.ones_like(chosen),
                                                                         reduction="none")
                if grad is not None:
                    grad.view(-1)[selected] -= 1.0
            else:
                flat_loss[selected] = 0.0
                if grad is not None:
                    grad.view(-1)[selected] = 0.0
            value = loss.sum()
            if not self.corrects:  # a rejected NaN must not hide: 0·sum is NaN for non-finite logits
                value += 0.0 * x.sum()
        return fused_loss(logits, value, grad, 1.0 / x.numel()), selected

    def extra_repr(self) -> str:
        return f"delta_rel={self.delta_rel}"


@register_loss("ll_r")
class LargeLossRejection(_LargeLoss):
    """Large-loss rejection (LL-R, Kim et al., CVPR 2022).

    BCE-with-logits against assume-negative targets, mean over B·C. At epoch t (1-based; ``set_epoch(t-1)``)
    the ``ceil(B·C·rate)`` largest losses among the batch's unobserved entries are set to 0, with
    ``rate = 1 - clean_rate`` accumulated in floating point as the original does (about ``(t-1)·delta_rel``).
    Published mAP (VOC / COCO / NUS / CUB): 89.2 / 71.0 / 47.4 / 19.5; with BoostLU 89.29 / 72.89 / 49.59 / 19.80.

    Args:
        delta_rel: Δ_rel, rejection-rate increment per epoch (0.005).
        num_classes: C; checked against the logits when given.
        check_inputs: Validate inputs on every call.
    """

    def __init__(self, delta_rel: float = 0.005, num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(delta_rel, num_classes, check_inputs)


@register_loss("ll_ct")
class LargeLossTemporaryCorrection(_LargeLoss):
    """Large-loss temporary correction (LL-Ct, Kim et al., CVPR 2022).

    As LL-R, but the selected entries get the loss for target 1 (this step only) instead of 0.
    Published mAP (VOC / COCO / NUS / CUB): 89.0 / 70.5 / 48.0 / 20.4.

    Args:
        delta_rel: Δ_rel, the correction-rate increment per epoch (default 0.002).
        num_classes: C, compared with the logits' second dimension when given.
        check_inputs: Check the inputs on every call.
    """

    corrects = True

    def __init__(self, delta_rel: float = 0.002, num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(delta_rel, num_classes, check_inputs)


@register_loss("ll_cp")
class LargeLossPermanentCorrection(_LargeLoss):
    """Large-loss permanent correction (LL-Cp, Kim et al., CVPR 2022).

    From the second epoch (``self.epoch >= 1``), each training batch takes the ``ceil(B·C·delta_rel)``
    largest losses among its unobserved entries, uses the loss for target 1 on them and flips them
    to positive for good in the training-set label matrix owned by the loss (the (N, C) bool buffer
    ``corrected``, saved in the state dict, indexed by ``index``). Flipped entries count as observed
    positives from then on. A step reads and writes only the batch's rows. Nothing is flipped in
    ``eval()`` mode (so a validation loss can be computed safely). Under data-parallel training each
    process flips only the entries of its own batches.
    Published mAP (VOC / COCO / NUS / CUB): 88.4 / 70.7 / 48.3 / 20.1.

    The LargeLossMatters code never runs LL-Cp: it tests ``P['mod_scheme'] is 'LL-Cp'``, which is
    False for the string argparse reads, so its LL-Cp runs train as LL-Ct. This loss follows the
    paper and the authors' BoostLU repository (Kim et al., CVPR 2023), whose LL-Cp works as above.

    Args:
        num_classes: C.
        num_examples: N, the training-set size.
        delta_rel: Δ_rel, the fraction of each batch's entries flipped per step (0.001).
        check_inputs: Validate inputs on every call.
    """

    requires_index = True
    corrects = True

    def __init__(self, num_classes: int, num_examples: int, delta_rel: float = 0.001, check_inputs: bool = True):
        super().__init__(delta_rel, check_positive_int("num_classes", num_classes), check_inputs)
        self.num_examples = check_positive_int("num_examples", num_examples)
        self.register_buffer("corrected", torch.zeros(num_examples, num_classes, dtype=torch.bool))

    def rate(self) -> float:
        """``delta_rel`` from the second epoch on, 0 in the first."""
        return self.delta_rel if self.epoch >= 1 else 0.0

    def compute(self, logits, targets, index=None):
        index = self.check_index(index, logits.shape[0], self.num_examples, targets)
        rows = index.to(self.corrected.device)
        flipped = self.corrected[rows].to(logits.device) & (targets == 0)
        positive = (targets == 1) | flipped
        loss, selected = self.large_loss_step(logits, positive, (targets == 0) & ~flipped)
        if self.training and selected.numel():
            num_classes = logits.shape[1]
            selected = selected.to(self.corrected.device)
            self.corrected[rows[selected // num_classes], selected % num_classes] = True
        return loss

    def corrected_labels(self, observed_labels: torch.Tensor) -> torch.Tensor:
        """Return ``observed_labels`` with the permanent corrections applied (flipped entries set to 1).

        Args:
            observed_labels: (N, C) {-1, 0, 1} training labels.
        """
        observed_labels = torch.as_tensor(observed_labels)
        if tuple(observed_labels.shape) != tuple(self.corrected.shape):
            raise ValueError(f"observed_labels must have shape {tuple(self.corrected.shape)}, "
                             f"got {tuple(observed_labels.shape)}")
        flips = self.corrected.to(observed_labels.device) & (observed_labels == 0)
        return observed_labels.masked_fill(flips, 1)

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}, num_classes={self.num_classes}, " + super().extra_repr()
