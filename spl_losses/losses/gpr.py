"""Generalized pseudo-label robust loss (GPR) of Tran et al. (ICCV 2025), "More Reliable Pseudo-labels,
Better Performance: A Generalized Approach to Single Positive Multi-label Learning" (the AEVLP framework).

Implemented from the paper's description as summarised below; its equations could not be checked
symbol by symbol, so every term has its own weight (set one to 0 to drop the term). The authors' code
(CC BY-NC-SA) was not used.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .._registry import register_loss
from ._checks import check_expected_num_pos, check_number
from ._citations import TRAN_2025
from ._functional import epr_of_sum, expected_positive_regularizer
from .gr import GeneralizedRobustLoss
from .vlpl import PseudoLabelState

__all__ = ["GPRLoss", "GPR_DATASET_DEFAULTS"]

_LOG_EPS = 1e-7  # the epsilon of GR's logs, used for every log term here

#: The paper's per-dataset settings of the loss and its training, keyed by this package's dataset names
#: (Adam, lr 1e-5). Its pseudo-label settings are ``spl_losses.teachers.AEVLP_PSEUDO_LABEL_DEFAULTS``.
GPR_DATASET_DEFAULTS: Dict[str, Dict[str, float]] = {
    "voc2012": dict(lambda1=0.7, lambda2=0.4, reg=0.05, batch_size=8, num_epochs=8, lr=1e-5),
    "coco2014": dict(lambda1=0.7, lambda2=0.5, reg=0.001, batch_size=16, num_epochs=8, lr=1e-5),
    "nuswide": dict(lambda1=0.7, lambda2=0.5, reg=0.001, batch_size=16, num_epochs=10, lr=1e-5),
    "cub200": dict(lambda1=0.8, lambda2=0.2, reg=0.01, batch_size=8, num_epochs=10, lr=1e-5),
}


@register_loss("gpr")
class GPRLoss(PseudoLabelState, GeneralizedRobustLoss):
    """Generalized pseudo-label robust loss (GPR, Tran et al., ICCV 2025; the loss of AEVLP).

    GR's loss (Chen et al., IJCAI 2024) extended to pseudo-labels. Per entry, with ``p = sigmoid(x)``,
    ``p̄`` = p detached, GR's weights ``k = sigmoid(w·p̄ + b)`` and ``v = exp(-(p̄ - mu)² / (2·sigma²))``
    on GR's epoch schedule, and ``nlog(u) = -log(u + 1e-7)``:

    - observed positive: ``nlog(p)``; observed negative: ``nlog(1 - p)``;
    - positive pseudo-label: ``(1 - clamp(v, 1 - lambda1, 1 - lambda2))·[rho·nlog(p) + (1 - rho)·nlog(1 - p)]``;
    - negative pseudo-label: ``v·nlog(1 - p)``;
    - other unknown entries: GR's ``v·[k·L1(p) + (1 - k)·L2(p)]``, ``L1 = (1 - p^q2)/q2``, ``L2 = (1 - (1-p)^q3)/q3``;

    mean over B·C, plus ``reg·(mean_b sum_c p - k)² / C²`` (the EPR regulariser, k = ``expected_num_pos``).
    A soft pseudo-label ``P`` in (0, 1) mixes ``P·(positive term) + (1 - P)·(GR term)`` (likewise for ``P < 0``).
    The pseudo-labels of the paper ("DAMP") come from CLIP ViT-B/16 on the global view and a g×g grid of
    crops, fused, then the top-k classes whose score reaches a threshold
    (``spl_losses.teachers.CLIPTeacher(grid=g)`` and ``TopKRule``).

    Published mAP (VOC / COCO / NUS / CUB, ResNet-50 end-to-end): 90.46 / 73.54 / 50.70 / 24.89.
    Settings (lambda1, lambda2, reg, batch size, epochs): VOC (0.7, 0.4, 0.05, 8, 8); COCO (0.7, 0.5, 0.001,
    16, 8); NUS (0.7, 0.5, 0.001, 16, 10); CUB (0.8, 0.2, 0.01, 8, 10); Adam lr 1e-5 (``GPR_DATASET_DEFAULTS``).

    Args:
        num_classes: C.
        num_examples: N, the training-set size.
        expected_num_pos: k of the EPR regulariser (VOC 1.5, COCO 2.9, NUS 1.9, CUB 31.4).
        pseudo_labels: (N, C) pseudo-labels in [-1, 1], row i for example ``index == i``; None starts with
            none (plain GR + regulariser) until :meth:`set_pseudo_labels` or ``load_state_dict``.
        lambda1: λ1: positive pseudo-labels weigh at most ``lambda1`` (0.7).
        lambda2: λ2: positive pseudo-labels weigh at least ``lambda2`` (0.5).
        rho: ρ, the positive share of the smoothed pseudo-positive target (0.9).
        reg: Weight of the EPR regulariser (0.001).
        neg_weight: Extra factor of the negative pseudo-label term (1).
        warmup_epochs: Epochs of GR alone before pseudo-labels are used (0).
        num_epochs: T of GR's schedules (10; the paper trains 8 on VOC/COCO).
        **kwargs: GR's schedule and shape (``w0``, ``wT``, ``b0``, ``bT``, ``mu0``, ``sigma0``, ``muT``,
            ``sigmaT``, ``q2``, ``q3``) and ``check_inputs``.
    """

    paper = "Tran et al., ICCV 2025"
    citation = TRAN_2025

    #: The constructor argument weighing negative pseudo-labels (positives are weighed by lambda1/lambda2).
    pseudo_positive_weight_arg = None
    pseudo_negative_weight_arg = "neg_weight"

    def __init__(
            self,
            num_classes: int,
            num_examples: int,
            expected_num_pos: float,
            pseudo_labels: Optional[torch.Tensor] = None,
            lambda1: float = 0.7,
            lambda2: float = 0.5,
            rho: float = 0.9,
            reg: float = 0.001,
            neg_weight: float = 1.0,
            warmup_epochs: int = 0,
            num_epochs: int = 10,
            **kwargs,
    ):
        super().__init__(num_epochs=num_epochs, num_classes=num_classes, **kwargs)
        self.expected_num_pos = check_expected_num_pos(expected_num_pos)
        self.lambda1 = check_number("lambda1", lambda1, 0.0, 1.0)
        self.lambda2 = check_number("lambda2", lambda2, 0.0, 1.0)
        if self.lambda2 > self.lambda1:
            raise ValueError(f"lambda2 ({lambda2}) must not exceed lambda1 ({lambda1}): positive pseudo-labels "
                             "weigh between lambda2 and lambda1")
        self.rho = check_number("rho", rho, 0.0, 1.0)
        self.reg = check_number("reg", reg, minimum=0.0)
        self.neg_weight = check_number("neg_weight", neg_weight, minimum=0.0)
        self.init_pseudo_labels(num_classes, num_examples, pseudo_labels, warmup_epochs)

    split_statistics = 1  # the sum of p over the batch (its EPR regulariser)

    def compute(self, logits, targets, index=None):
        value, p = self._entry_mean(logits, targets, index)
        if self.reg > 0:
            value = value + self.reg * expected_positive_regularizer(p, self.expected_num_pos)
        return value

    def split_compute(self, logits, targets, index=None):
        value, p = self._entry_mean(logits, targets, index)
        return value, p.sum().reshape(1)

    def split_regularizer(self, statistics, batch_size, num_classes):
        return self.reg * epr_of_sum(statistics[0], batch_size, num_classes, self.expected_num_pos)

    def _entry_mean(self, logits, targets, index):
        """The mean over entries of the per-entry terms, and p (with its graph)."""
        w_pos, w_neg = self.pseudo_label_weights(index, targets)
        w, b, mu, sigma = self.schedule()
        p = torch.sigmoid(logits)
        p_bar = p.detach()
        k = torch.sigmoid(w * p_bar + b)
        v = torch.exp(-(p_bar - mu) ** 2 / (2.0 * sigma ** 2))
        # p^q2 and (1-p)^q3 in log space: finite gradients where p underflows
        l1 = (1.0 - torch.exp(self.q2 * F.logsigmoid(logits))) / self.q2
        l2 = (1.0 - torch.exp(self.q3 * F.logsigmoid(-logits))) / self.q3
        gr_unknown = v * (k * l1 + (1.0 - k) * l2)
        nlog_p = -torch.log(p + _LOG_EPS)
        nlog_1mp = -torch.log(1.0 - p + _LOG_EPS)
        pos_weight = 1.0 - v.clamp(1.0 - self.lambda1, 1.0 - self.lambda2)
        pseudo_pos = pos_weight * (self.rho * nlog_p + (1.0 - self.rho) * nlog_1mp)
        pseudo_neg = self.neg_weight * v * nlog_1mp
        gr_weight = (targets == 0).float() - w_pos - w_neg
        per_entry = ((targets == 1).float() * nlog_p + (targets == -1).float() * nlog_1mp
                     + w_pos * pseudo_pos + w_neg * pseudo_neg + gr_weight * gr_unknown)
        return per_entry.sum() / per_entry.numel(), p

    def extra_repr(self) -> str:
        return (f"{self.pseudo_label_repr()}, expected_num_pos={self.expected_num_pos}, lambda1={self.lambda1}, "
                f"lambda2={self.lambda2}, rho={self.rho}, reg={self.reg}, neg_weight={self.neg_weight}, "
                + super().extra_repr())
