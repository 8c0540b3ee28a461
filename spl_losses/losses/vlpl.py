"""Vision-language pseudo-labels (VLPL) of Xing et al. (CVPR Workshops 2024), "Vision-Language
Pseudo-Labels for Single-Positive Multi-Label Learning", and the per-example pseudo-label state that
every teacher-based loss of the package shares.

Pseudo-labels are loss state given at construction, like ``observed_labels`` of the estimator losses:
an (N, C) float tensor ``P`` with values in [-1, 1], row i for the training example ``index == i``
(``spl_losses.teachers`` computes it from a teacher's scores and a rule). ``P > 0`` is a positive
pseudo-label of confidence ``P``, ``P < 0`` a negative one of confidence ``-P``, 0 none; hard rules give
{-1, 0, 1}. It is stored as the buffer ``pseudo_labels`` (saved in the ``state_dict``) and read per batch
with ``index``, so the call stays ``loss(logits, targets, index)`` with targets in {-1, 0, 1}.
Pseudo-labels only act on unknown entries (target 0): observed labels always win.
"""
from typing import Dict, Optional, Tuple

import torch

from .._registry import register_loss
from .base import SPLoss
from ._checks import check_number, check_positive_int
from ._citations import XING_2024
from ._functional import neg_log_terms

__all__ = ["PseudoLabelState", "VLPLLoss", "VLPL_DATASET_DEFAULTS", "check_pseudo_labels"]

#: The paper's per-dataset settings (its ``main_clip.py``), keyed by this package's dataset names:
#: alpha (EM's weight), batch size and learning rate; beta 0.7, threshold 0.3, temperature 0.01, 10 epochs.
VLPL_DATASET_DEFAULTS: Dict[str, Dict[str, float]] = {
    "voc2012": dict(alpha=0.2, batch_size=8, lr=1e-5),
    "coco2014": dict(alpha=0.1, batch_size=8, lr=1e-5),
    "nuswide": dict(alpha=0.1, batch_size=8, lr=1e-5),
    "cub200": dict(alpha=0.01, batch_size=8, lr=1e-4),
}


def check_pseudo_labels(pseudo_labels, shape: Tuple[int, int], name: str = "pseudo_labels") -> torch.Tensor:
    """Return ``pseudo_labels`` as a float32 tensor after checking its shape and values.

    Args:
        pseudo_labels: (N, C) tensor or array with finite values in [-1, 1].
        shape: The expected (N, C).
        name: Name used in error messages.
    """
    if not isinstance(pseudo_labels, torch.Tensor):
        pseudo_labels = torch.as_tensor(pseudo_labels)
    if tuple(pseudo_labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape (num_examples, num_classes) = {tuple(shape)}, "
                         f"got {tuple(pseudo_labels.shape)}")
    if pseudo_labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold numbers in [-1, 1] (1 positive, -1 negative, 0 none), got a bool tensor")
    values = pseudo_labels.float()
    if not bool(torch.isfinite(values).all()) or bool((values.abs() > 1).any()):
        raise ValueError(f"{name} must hold finite values in [-1, 1] (1 positive, -1 negative, 0 none); "
                         f"got values in [{float(values.min())}, {float(values.max())}]")
    return values


class PseudoLabelState:
    """Mixin of the losses trained on per-example pseudo-labels (see the module docstring).

    Subclasses call :meth:`init_pseudo_labels` in ``__init__`` and :meth:`pseudo_label_weights` in
    ``compute``. ``requires_index`` is True: every call needs the batch's ``index``.
    """

    requires_index = True

    def init_pseudo_labels(self, num_classes: int, num_examples: int, pseudo_labels, warmup_epochs: int) -> None:
        """Create the ``pseudo_labels`` buffer (zeros when None) and the warm-up length.

        Args:
            num_classes: C.
            num_examples: N.
            pseudo_labels: (N, C) values in [-1, 1], or None (set later with :meth:`set_pseudo_labels`
                or ``load_state_dict``).
            warmup_epochs: Epochs (0-based ``self.epoch < warmup_epochs``) during which pseudo-labels are ignored.
        """
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_examples = check_positive_int("num_examples", num_examples)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a non-negative int, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.register_buffer("pseudo_labels", torch.zeros(num_examples, num_classes, dtype=torch.float32))
        if pseudo_labels is not None:
            self.set_pseudo_labels(pseudo_labels)

    @torch.no_grad()
    def set_pseudo_labels(self, pseudo_labels) -> None:
        """Replace the (N, C) pseudo-labels (e.g. after another self-training round).

        Args:
            pseudo_labels: (N, C) values in [-1, 1]: 1 positive, -1 negative, 0 none; fractions are confidences.
        """
        values = check_pseudo_labels(pseudo_labels, tuple(self.pseudo_labels.shape))
        self.pseudo_labels.copy_(values.to(self.pseudo_labels.device))

    def pseudo_label_weights(self, index: Optional[torch.Tensor], targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The batch's positive and negative pseudo-label weights, zero on observed entries and during warm-up.

        Args:
            index: (B,) example indices (checked).
            targets: (B, C) float32 {-1, 0, 1} targets.

        Returns:
            ``(w_pos, w_neg)``: (B, C) float32 tensors in [0, 1] with ``w_pos + w_neg <= 1``.
        """
        index = self.check_index(index, targets.shape[0], self.num_examples, targets)
        if self.epoch < self.warmup_epochs:
            zeros = torch.zeros_like(targets)
            return zeros, zeros
        pseudo = self.pseudo_labels.index_select(0, index.to(self.pseudo_labels.device)).to(targets.device)
        pseudo = pseudo * (targets == 0)
        return pseudo.clamp_min(0.0), (-pseudo).clamp_min(0.0)

    def pseudo_label_repr(self) -> str:
        return f"num_examples={self.num_examples}, num_classes={self.num_classes}, warmup_epochs={self.warmup_epochs}"


@register_loss("vlpl")
class VLPLLoss(PseudoLabelState, SPLoss):
    """Vision-language pseudo-labels (VLPL, Xing et al., CVPR Workshops 2024): EM plus pseudo-positives.

    A frozen CLIP ViT-L/14 (336 px) scores every class prompt; ``s = softmax_c(cos(image, text_c) / T)``
    (T = 0.01) and classes with ``s > 0.3`` become positive pseudo-labels
    (``spl_losses.teachers.CLIPTeacher`` and ``ThresholdRule``). Per entry, with ``p = sigmoid(x)`` and the
    reference log ``nlog(v) = -log(v + 1e-5)`` (``ls`` = ``ls_coef``):

    - observed positive: ``nlog(p)``; observed negative: ``nlog(1 - p)``;
    - pseudo-positive: ``beta·[(1 - ls)·nlog(p) + ls·nlog(1 - p)]``;
    - pseudo-negative: ``beta_neg·[ls·nlog(p) + (1 - ls)·nlog(1 - p)]`` (0 with the default ``beta_neg = 0``,
      as in the original, where negative pseudo-labels only remove the entropy term);
    - other unknown entries: EM's ``-alpha·H(p)``, ``H(p) = p·nlog(p) + (1 - p)·nlog(1 - p)``;

    reduced as ``sum / (B·C)``. A soft pseudo-label ``P`` in (0, 1) mixes: ``P·pseudo-positive term +
    (1 - P)·entropy term`` (likewise for ``P < 0`` with the negative term), so hard labels are the special
    case ``|P| = 1``. The original computes the pseudo-labels per batch from the (flipped) training view;
    CLIP is frozen, so here they are computed once on the deterministic view and cached.

    Published mAP (VOC / COCO / NUS / CUB, ResNet-50 end-to-end): 89.10 / 71.45 / 49.55 / 24.02.
    Settings: alpha VOC 0.2, COCO 0.1, NUS 0.1, CUB 0.01; beta 0.7; batch 8; lr 1e-5 (CUB 1e-4); 10 epochs
    (``VLPL_DATASET_DEFAULTS``).

    Args:
        num_classes: C.
        num_examples: N, the training-set size.
        pseudo_labels: (N, C) pseudo-labels in [-1, 1], row i for example ``index == i``; None starts with
            none (plain EM) until :meth:`set_pseudo_labels` or ``load_state_dict``.
        alpha: α, weight of the entropy term on unknown entries without pseudo-label (0.1, COCO/NUS).
        beta: β, weight of the pseudo-positive term (0.7).
        beta_neg: Weight of the pseudo-negative term (0: negative pseudo-labels only drop the entropy term).
        ls_coef: Label smoothing of the pseudo-label terms (0.1: targets 0.9 / 0.1).
        warmup_epochs: Epochs of plain EM before pseudo-labels are used (0, the original's setting).
        eps: Epsilon of the reference log ``-log(p + eps)``.
        stable: Use the log-sigmoid form instead of the reference form.
        check_inputs: Validate inputs on every call.
    """

    paper = "Xing et al., CVPRW 2024"
    citation = XING_2024
    batch_reduction = "mean"
    #: The constructor arguments weighing positive and negative pseudo-labels (read by the training recipe,
    #: which sets both explicitly for the rule that makes the pseudo-labels).
    pseudo_positive_weight_arg = "beta"
    pseudo_negative_weight_arg = "beta_neg"

    def __init__(
            self,
            num_classes: int,
            num_examples: int,
            pseudo_labels: Optional[torch.Tensor] = None,
            alpha: float = 0.1,
            beta: float = 0.7,
            beta_neg: float = 0.0,
            ls_coef: float = 0.1,
            warmup_epochs: int = 0,
            **kwargs,
    ):
        super().__init__(**kwargs)
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        self.beta = check_number("beta", beta, minimum=0.0)
        self.beta_neg = check_number("beta_neg", beta_neg, minimum=0.0)
        self.ls_coef = check_number("ls_coef", ls_coef, 0.0, 1.0)
        self.init_pseudo_labels(num_classes, num_examples, pseudo_labels, warmup_epochs)

    def compute(self, logits, targets, index=None):
        w_pos, w_neg = self.pseudo_label_weights(index, targets)
        observed_pos = (targets == 1).float()
        observed_neg = (targets == -1).float()
        ls = self.ls_coef
        # per entry: a·nlog(p) + b·nlog(1-p) - alpha·e·[p·nlog(p) + (1-p)·nlog(1-p)]
        a = observed_pos + self.beta * (1.0 - ls) * w_pos + self.beta_neg * ls * w_neg
        b = observed_neg + self.beta * ls * w_pos + self.beta_neg * (1.0 - ls) * w_neg
        entropy_weight = (targets == 0).float() - w_pos - w_neg
        nlog_p, nlog_1mp, p = neg_log_terms(logits, self.stable, self.eps)
        per_entry = a * nlog_p + b * nlog_1mp - self.alpha * entropy_weight * (p * nlog_p + (1.0 - p) * nlog_1mp)
        return per_entry.sum() / per_entry.numel()

    def extra_repr(self) -> str:
        return (f"{self.pseudo_label_repr()}, alpha={self.alpha}, beta={self.beta}, beta_neg={self.beta_neg}, "
                f"ls_coef={self.ls_coef}, " + super().extra_repr())
