"""Entropy maximization (EM) and asymmetric pseudo-labeling (APL) of Zhou et al. (ECCV 2022),
"Acknowledging the Unknown for Multi-label Learning with Single Positive Labels"."""
import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .._registry import register_loss
from ..labels import check_observed_labels
from ._checks import check_non_negative_int, check_num_classes, check_number, check_positive_int
from ._citations import ZHOU_2022
from ._functional import fused_loss, needs_grad, nlog_terms_and_grads, overwrite_entries
from .base import SPLoss

__all__ = ["EntropyMaximizationLoss", "EntropyMaximizationAPLLoss", "EM_APL_DATASET_DEFAULTS"]

#: The paper's per-dataset settings (Zhou et al., 2022), keyed by this package's dataset names: batch size,
#: learning rate, alpha, beta, warmup_epochs (10 epochs in all, theta = 0.9). ``em`` uses the same alpha.
EM_APL_DATASET_DEFAULTS: Dict[str, Dict[str, float]] = {
    "voc2012": dict(batch_size=8, lr=1e-5, alpha=0.2, beta=0.02, warmup_epochs=5),
    "coco2014": dict(batch_size=16, lr=1e-5, alpha=0.1, beta=0.9, warmup_epochs=5),
    "nuswide": dict(batch_size=16, lr=1e-5, alpha=0.1, beta=0.2, warmup_epochs=4),
    "cub200": dict(batch_size=8, lr=1e-4, alpha=0.01, beta=0.4, warmup_epochs=3),
}


@register_loss("em")
class EntropyMaximizationLoss(SPLoss):
    """Entropy maximization (EM, Zhou et al., ECCV 2022).

    Per entry: observed positives ``nlog(p)``, observed negatives ``nlog(1-p)``, unknown entries
    ``-alpha·H(p)`` with ``H(p) = p·nlog(p) + (1-p)·nlog(1-p)`` (the binary entropy, with the
    reference's ``nlog(v) = -log(v + 1e-5)``), reduced as ``sum / (B·C)``.
    alpha per dataset: VOC 0.2, COCO 0.1, NUS 0.1, CUB 0.01 (see ``EM_APL_DATASET_DEFAULTS``).
    Published mAP (VOC / COCO / NUS / CUB, end-to-end): 89.09 / 70.70 / 47.15 / 20.85.

    Args:
        alpha: α, weight of the entropy term on unknown entries (default 0.1, the COCO/NUS value).
        num_classes: C; checked against the logits when given.
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    paper = "Zhou et al., ECCV 2022"
    citation = ZHOU_2022
    batch_reduction = "mean"

    def __init__(self, alpha: float = 0.1, num_classes: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        self.num_classes = check_num_classes(num_classes)

    def compute(self, logits, targets, index=None):
        return self.fused_mean(logits, targets)

    def fused_mean(self, logits: torch.Tensor, targets: torch.Tensor, pseudo: Optional[torch.Tensor] = None,
                   soft: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss (mean over B·C), computed with its closed-form gradient (no autograd graph).

        Args:
            logits: (B, C) float32 logits.
            targets: (B, C) {-1, 0, 1} labels.
            pseudo: Optional (B, C) bool mask of soft-negative entries (EM+APL).
            soft: (B, C) soft targets of those entries.
        """
        with_grad = needs_grad(logits)
        with torch.no_grad():
            x = logits.detach()
            p = torch.sigmoid(x)
            one_minus_p = 1.0 - p
            pq = p * one_minus_p
            if self.stable:  # p·a + (1-p)·b = a + (1-p)·x with a = softplus(-x)
                loss = (F.softplus(-x) + one_minus_p * x).mul_(-self.alpha)
                grad = pq.mul_(x).mul_(self.alpha) if with_grad else None
            else:  # with la = log(p + eps), lb = log(1 - p + eps): loss = alpha·(p·la + (1-p)·lb)
                p_eps, one_minus_p_eps = p + self.eps, one_minus_p + self.eps
                la, lb = torch.log(p_eps), torch.log(one_minus_p_eps)
                loss = (p * la).addcmul_(one_minus_p, lb).mul_(self.alpha)
                grad = None
                if with_grad:  # alpha·p(1-p)·[la - lb + p/(p+eps) - (1-p)/(1-p+eps)]
                    inner = la.sub_(lb).add_(p.div_(p_eps)).sub_(one_minus_p.div_(one_minus_p_eps))
                    grad = pq.mul_(inner).mul_(self.alpha)
            special = targets != 0
            if pseudo is not None:
                special = special | pseudo

            def special_terms(idx):
                t = targets[idx]
                weight_a, weight_b = (t == 1).float(), (t == -1).float()
                if pseudo is not None:
                    s = soft[idx] * pseudo[idx].float() * self.beta
                    weight_a = weight_a + s
                    weight_b = weight_b + pseudo[idx].float() * self.beta - s
                _, a_s, b_s, da_s, db_s = nlog_terms_and_grads(x[idx], self.stable, self.eps)
                return weight_a * a_s + weight_b * b_s, weight_a * da_s + weight_b * db_s

            overwrite_entries(loss, grad, special, special_terms)
            value = loss.sum()
        return fused_loss(logits, value, grad, 1.0 / x.numel())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, " + super().extra_repr()


@register_loss("em_apl")
class EntropyMaximizationAPLLoss(EntropyMaximizationLoss):
    """EM with asymmetric pseudo-labeling (EM+APL, Zhou et al., ECCV 2022).

    Training is EM for ``warmup_epochs`` epochs. After every epoch from then on (1-based epoch
    ``t >= warmup_epochs``, i.e. ``update_from_predictions`` called while ``self.epoch + 1 >= warmup_epochs``),
    for each class c, among the entries still unknown (not observed, not yet pseudo-labelled), the
    ``floor(theta·U_c / (num_epochs - warmup_epochs))`` entries with the lowest probability become soft
    negatives whose soft target ``s`` is their probability at that time (``U_c``: the initial number of
    unknown entries of class c). Pseudo-labels accumulate and persist in the loss's state
    (``pseudo_mask``, ``soft_targets``: (N, C) buffers). A pseudo-labelled entry no longer gets the
    entropy term but ``beta·[s·nlog(p) + (1-s)·nlog(1-p)]``. Reduction ``sum / (B·C)``.

    Per-dataset settings (bs, lr, alpha, beta, warmup_epochs), 10 epochs, theta 0.9:
    VOC (8, 1e-5, 0.2, 0.02, 5); COCO (16, 1e-5, 0.1, 0.9, 5); NUS (16, 1e-5, 0.1, 0.2, 4);
    CUB (8, 1e-4, 0.01, 0.4, 3) (``EM_APL_DATASET_DEFAULTS``; the defaults here are COCO's).
    Published mAP (VOC / COCO / NUS / CUB, end-to-end): 89.19 / 70.87 / 47.59 / 21.84.

    Which entries are observed is taken from ``observed_labels`` when given; otherwise the loss
    records each training batch's targets (rows never seen count as unknown; on a batch split over
    processes, see ``set_batch_split``, every process records every share's rows). ``U_c`` is counted at
    the first pseudo-labeling round. Each call needs the batch's ``index``; a step reads and
    writes only the batch's rows. In ``eval()`` mode nothing is recorded.

    Args:
        num_classes: C.
        num_examples: N, the training-set size.
        observed_labels: Optional (N, C) {-1, 0, 1} training labels.
        alpha: α, weight of the entropy term (0.1).
        beta: β, weight of the soft-negative term (0.9).
        warmup_epochs: T_w, epochs of plain EM before the first pseudo-labeling round (5).
        num_epochs: T, total number of training epochs (10).
        theta: θ, fraction of each class's unknown entries pseudo-labelled by the end (0.9).
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    requires_index = True
    needs_predictions = True

    def __init__(
            self,
            num_classes: int,
            num_examples: int,
            observed_labels: Optional[torch.Tensor] = None,
            alpha: float = 0.1,
            beta: float = 0.9,
            warmup_epochs: int = 5,
            num_epochs: int = 10,
            theta: float = 0.9,
            **kwargs,
    ):
        super().__init__(alpha=alpha, num_classes=check_positive_int("num_classes", num_classes), **kwargs)
        self.num_examples = check_positive_int("num_examples", num_examples)
        self.beta = check_number("beta", beta, minimum=0.0)
        self.theta = check_number("theta", theta, 0.0, 1.0)
        self.warmup_epochs = check_non_negative_int("warmup_epochs", warmup_epochs)
        self.num_epochs = check_positive_int("num_epochs", num_epochs)
        if num_epochs <= warmup_epochs:
            raise ValueError(f"num_epochs ({num_epochs}) must exceed warmup_epochs ({warmup_epochs})")
        shape = (num_examples, num_classes)
        self.register_buffer("observed_mask", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("pseudo_mask", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("soft_targets", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("initial_unknown", torch.full((num_classes,), -1, dtype=torch.long))
        self._labels_given = observed_labels is not None
        if observed_labels is not None:
            observed_labels = torch.as_tensor(observed_labels)
            check_observed_labels(observed_labels, shape, name="observed_labels")
            self.observed_mask.copy_(observed_labels != 0)
            self.initial_unknown.copy_((observed_labels == 0).sum(dim=0))

    def pseudo_labels_per_round(self) -> torch.Tensor:
        """Return the (C,) number of soft negatives added per class and round,
        ``floor(theta·U_c / (num_epochs - warmup_epochs))`` (-1 while ``U_c`` is not yet known).
        """
        unknown = self.initial_unknown.double()
        counts = torch.floor(self.theta * unknown / (self.num_epochs - self.warmup_epochs) + 1e-9).long()
        return torch.where(self.initial_unknown < 0, torch.full_like(counts, -1), counts)

    def compute(self, logits, targets, index=None):
        index = self.check_index(index, logits.shape[0], self.num_examples, targets)
        rows = index.to(self.pseudo_mask.device)
        if self.training and not self._labels_given:
            with torch.no_grad():
                self.observed_mask[rows] = (targets != 0).to(self.observed_mask.device)
        pseudo = self.pseudo_mask[rows].to(logits.device) & (targets == 0)
        soft = self.soft_targets[rows].to(logits.device)
        # EM on entries still unknown; the soft-negative BCE on pseudo-labelled ones.
        return self.fused_mean(logits, targets, pseudo, soft)

    def _forward_split(self, logits, targets, index, share, failure=None):
        """As every loss, then (recording observed entries) every share's rows are recorded on every process."""
        value = super()._forward_split(logits, targets, index, share, failure)
        if self.training and not self._labels_given:
            device = logits.device
            rows, observed = share.gather_rows([torch.as_tensor(index).to(device).long(), targets.to(device) != 0],
                                               name="em_apl rows")
            with torch.no_grad():
                self.observed_mask[rows.to(self.observed_mask.device)] = observed.to(self.observed_mask.device)
        return value

    @property
    def predictions_due(self) -> bool:
        """False during the warm-up (1-based epoch ``self.epoch + 1 < warmup_epochs``), where
        :meth:`update_from_predictions` is a no-op: the training-set inference pass can be skipped."""
        return self.epoch + 1 >= self.warmup_epochs

    @torch.no_grad()
    def update_from_predictions(self, probs: torch.Tensor) -> Optional[torch.Tensor]:
        """Add this round's soft negatives (a no-op before epoch ``warmup_epochs``, 1-based).

        Call after each epoch, with ``self.epoch`` still the epoch just finished.

        Args:
            probs: (N, C) training-set probabilities, row i for example ``index == i``.

        Returns:
            (C,) int64 number of soft negatives added per class, or None during the warm-up.
        """
        probs = torch.as_tensor(probs)
        shape = tuple(self.pseudo_mask.shape)
        if tuple(probs.shape) != shape:
            raise ValueError(f"probs must have shape (num_examples, num_classes) = {shape}, got {tuple(probs.shape)}")
        if not probs.is_floating_point() or not bool(torch.isfinite(probs).all()) \
                or bool(((probs < 0) | (probs > 1)).any()):
            raise ValueError("probs must be finite float probabilities in [0, 1] (sigmoid of the logits)")
        if self.epoch + 1 < self.warmup_epochs:
            return None
        probs = probs.to(device=self.soft_targets.device, dtype=torch.float32)
        if bool((self.initial_unknown < 0).any()):
            self.initial_unknown.copy_((~self.observed_mask).sum(dim=0))
        candidates = ~(self.observed_mask | self.pseudo_mask)
        order = torch.sort(probs.masked_fill(~candidates, math.inf), dim=0, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(0, order, torch.arange(shape[0], device=order.device).unsqueeze(1).expand(shape))
        new = candidates & (ranks < self.pseudo_labels_per_round().unsqueeze(0))
        self.soft_targets[new] = probs[new]
        self.pseudo_mask |= new
        return new.sum(dim=0)

    def extra_repr(self) -> str:
        return (f"num_examples={self.num_examples}, num_classes={self.num_classes}, beta={self.beta}, "
                f"warmup_epochs={self.warmup_epochs}, num_epochs={self.num_epochs}, theta={self.theta}, "
                + super().extra_repr())
