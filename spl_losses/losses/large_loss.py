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
(ties at the k-th value broken by position, earlier rows first). Neither happens without exact ties
or a rate near 1.

On a batch split over processes (``set_batch_split``), k and the selection are the global batch's,
exactly (ties included), as on one process.
"""
import functools
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .._registry import register_loss
from ._checks import check_num_classes, check_number, check_positive_int
from ._citations import KIM_2022
from ._distributed import BatchShare, global_value, split_shape
from ._functional import fused_loss, has_infinity, needs_grad
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
    """The flat indices (ascending) of the ``k`` largest entries of ``loss_matrix`` among ``candidates``.

    Ties at the k-th largest value are taken in order of position (row-major, earlier rows first), so
    the selection is a function of the values alone. Fewer than ``k`` indices are returned when there
    are fewer candidates. A NaN loss is never selected (the loss is NaN either way).

    Args:
        loss_matrix: (B, C) per-entry losses.
        candidates: (B, C) bool mask of the entries that may be selected (the unobserved ones).
        k: Number of entries to select (0 selects none).
    """
    return _select(loss_matrix, candidates, k)[0]


def _select(loss_matrix: torch.Tensor, candidates: torch.Tensor, k: int,
            share: Optional[BatchShare] = None) -> Tuple[torch.Tensor, Optional[List[int]]]:
    """:func:`select_large_losses`, or with ``share`` the global batch's selection of a split batch.

    With ``share``, ``loss_matrix`` holds this process's rows (the shares in rank order make the global
    batch) and ``k`` counts over the global batch; each process sends its ``min(k, B_p·C)`` largest
    candidate losses (one all-gather of ``k`` floats per process) and receives its own entries of the
    global selection, ties included exactly.

    Returns:
        The local flat indices, and how many entries each process selected (with ``share``, else None).
    """
    k = min(k, loss_matrix.numel()) if share is None else k
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=loss_matrix.device), [0] * share.world_size if share else None
    scores = loss_matrix.detach().masked_fill(~candidates, -math.inf).flatten()
    local_k = min(k, scores.numel())
    subset = _prefiltered(scores, local_k) if local_k else None
    # a NaN is never selected (the prefiltered entries are >= a number: never NaN)
    values = scores[subset] if subset is not None else \
        torch.nan_to_num(scores, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    top = torch.topk(values, local_k, sorted=False).values
    if share is None:
        threshold = top.min()
        at_least = values >= threshold
        if math.isfinite(threshold.item()) and int(at_least.sum()) == k:  # no tie beyond the k-th (common)
            chosen = at_least.nonzero().squeeze(1)
            return (chosen if subset is None else subset[chosen]), None
        quota, counts = (k - (values > threshold).sum()) * torch.isfinite(threshold), None
    else:
        sent = torch.full((k,), -math.inf, device=scores.device)
        sent[:local_k] = top
        sent = share.all_gather(sent, "large-loss top-k")  # (P, k)
        threshold = torch.topk(sent.flatten(), k, sorted=False).values.min()
        greater, ties = (sent > threshold).sum(dim=1), (sent == threshold).sum(dim=1)
        # the ties go to the earliest positions, lower ranks first
        room = (k - greater.sum()) * torch.isfinite(threshold)
        quotas = (room - (torch.cumsum(ties, 0) - ties)).clamp_min(0).minimum(ties)
        quota, counts = quotas[share.rank], (greater + quotas).tolist()
    # above the k-th largest value, plus the first ties at it; none at -inf (non-candidates)
    tied = values == threshold
    chosen = ((values > threshold) | (tied & (torch.cumsum(tied, 0) <= quota))).nonzero().squeeze(1)
    return (chosen if subset is None else subset[chosen]), counts


_SAMPLE_STRIDE = 16


def _prefiltered(scores: torch.Tensor, k: int) -> Optional[torch.Tensor]:
    """Indices (ascending) of a few entries among which lie all those >= the k-th largest, or None (all).

    The threshold is a strided sample's ``2·k/stride``-th largest value; when at least ``k`` scores reach
    it, every score at or above the k-th largest does too. (On CPU a full top-k of a (256, 1000) batch
    costs more than the loss itself.)
    """
    n = scores.numel()
    if scores.device.type != "cpu" or 8 * k > n:
        return None
    sample = scores[::_SAMPLE_STRIDE]
    threshold = torch.topk(sample, min(sample.numel(), 2 * math.ceil(k / _SAMPLE_STRIDE) + 8), sorted=False).values.min()
    above = (scores >= threshold).nonzero().squeeze(1)
    if above.numel() < k or above.numel() > n // 4:
        return None
    return above


def _entry_ids(rows: torch.Tensor, selected: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Flat ids ``example·C + class`` of the selected flat batch positions, on ``rows``' device."""
    selected = selected.to(rows.device)
    return rows[selected // num_classes] * num_classes + selected % num_classes


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
    batch_reduction = "mean"

    def __init__(self, delta_rel: float, num_classes: Optional[int] = None, check_inputs: bool = True):
        super().__init__(check_inputs=check_inputs)
        self.delta_rel = check_number("delta_rel", delta_rel, 0.0, 1.0)
        self.num_classes = check_num_classes(num_classes)

    def rate(self) -> float:
        """The fraction of the batch's B·C entries taken this epoch: the original's ``1 - clean_rate``,
        about ``(t - 1)·delta_rel`` at 1-based epoch t (see :func:`clean_rate`)."""
        return 1.0 - clean_rate(self.epoch, self.delta_rel)

    def compute(self, logits, targets, index=None):
        positive, candidates, rows = self.batch_targets(logits, targets, index)
        value, grad, selected, _ = self.large_loss_step(logits, positive, candidates)
        if rows is not None and selected.numel():
            self.correct_for_good(_entry_ids(rows, selected, logits.shape[1]))
        return fused_loss(logits, value, grad, 1.0 / logits.numel())

    def batch_targets(self, logits: torch.Tensor, targets: torch.Tensor, index):
        """``(positive, candidates, rows)``: the batch's BCE targets, the entries that may be selected, and
        the example rows of a loss with per-example state (else None).

        Args:
            logits: (B, C) float32 logits.
            targets: (B, C) {-1, 0, 1} targets.
            index: (B,) example indices or None.
        """
        return targets == 1, targets == 0, None

    def correct_for_good(self, entry_ids: torch.Tensor) -> None:
        """Record permanent corrections (LL-Cp); a no-op here.

        Args:
            entry_ids: Flat ``row·C + class`` ids in the (N, C) label matrix.
        """

    def large_loss_step(self, logits: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor,
                        share: Optional[BatchShare] = None):
        """BCE-with-logits against ``positive`` after rejecting (LL-R) or correcting to target 1 (``corrects``)
        the ``ceil(B·C·rate)`` largest losses among ``candidates`` (of the global batch, with ``share``).

        Args:
            logits: (B, C) float32 logits.
            positive: (B, C) bool targets.
            candidates: (B, C) bool mask of the entries that may be selected.
            share: This process's share of a split batch, or None.

        Returns:
            The sum of the entries' losses, their (B, C) gradient (None without autograd), the selected
            local flat indices and (with ``share``) every process's number of them.
        """
        with_grad = needs_grad(logits)
        with torch.no_grad():
            x = logits.detach()
            y = positive.float()
            loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            grad = torch.sigmoid(x).sub_(y) if with_grad else None
            num_entries = loss.numel() if share is None else sum(share.counts) * loss.shape[1]
            selected, counts = _select(loss, candidates, num_large_losses(num_entries, self.rate()), share)
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
        return value, grad, selected, counts

    # ------------------------------------------------------------------ split batches
    def _forward_split(self, logits, targets, index, share, failure=None):
        """The global batch's selection: a header (row counts, infinite logits), the top-k exchange, then
        one exchange of the shares' sums (and, for LL-Cp, of the entries corrected for good)."""
        logits32 = targets32 = prepared = None
        infinite = False
        if failure is None:
            try:
                logits32, targets32 = self._prepare(logits, targets)
                prepared = self.batch_targets(logits32, targets32, index)
                infinite = self.check_inputs and logits32.numel() > 0 and has_infinity(logits32)
            except Exception as err:
                failure = err
        rows = split_shape(logits)[0]
        flags = torch.tensor([float(infinite)], device=getattr(logits, "device", None))
        header = share.gather_header(rows, flags, 1, failure, flags.device, name="large-loss header")
        step = functools.partial(self._split_step, share=share, prepared=prepared)
        if any(row[0] for row in header):  # the same decision on every process
            return self._in_float32(self._compute_at_infinity, logits32, targets32, index, step)
        return self._in_float32(step, logits32, targets32, index)

    def _split_step(self, logits, targets, index, share: BatchShare, prepared):
        positive, candidates, rows = prepared
        value, grad, selected, counts = self.large_loss_step(logits, positive, candidates, share)
        payload, sizes = value.double().reshape(1), [1] * share.world_size
        if rows is not None:  # LL-Cp: every process applies every share's corrections
            ids = _entry_ids(rows, selected, logits.shape[1]).to(logits.device, torch.float64)
            payload, sizes = torch.cat([payload, ids]), [1 + count for count in counts]
        parts = share.gather_varying(payload, sizes, "large-loss sums")
        if rows is not None:
            self.correct_for_good(torch.cat([part[1:] for part in parts]).long())
        num_entries = sum(share.counts) * logits.shape[1]
        if num_entries == 0:
            return fused_loss(logits, value, grad, 1.0)
        total = sum(torch.stack([part[0] for part in parts]).tolist()) / num_entries
        carrier = fused_loss(logits, value, grad, share.world_size / num_entries)
        return global_value(carrier, torch.tensor(total))

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
    ``eval()`` mode (so a validation loss can be computed safely). On a batch split over processes
    (``set_batch_split``) the entries are selected over the global batch and every process applies
    every share's flips, so all copies of ``corrected`` stay identical.
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

    def batch_targets(self, logits, targets, index):
        index = self.check_index(index, logits.shape[0], self.num_examples, targets)
        rows = index.to(self.corrected.device)
        flipped = self.corrected[rows].to(logits.device) & (targets == 0)
        return (targets == 1) | flipped, (targets == 0) & ~flipped, rows

    def correct_for_good(self, entry_ids):
        """Flip the entries ``entry_ids`` (flat ``row·C + class``) to positive for good, in training mode.

        Args:
            entry_ids: int64 flat ids in the (N, C) matrix ``corrected``.
        """
        if self.training and entry_ids.numel():
            self.corrected.view(-1)[entry_ids.to(self.corrected.device)] = True

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
