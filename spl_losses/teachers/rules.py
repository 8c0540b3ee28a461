"""Pseudo-label rules: from a teacher's (N, C) scores to the (N, C) pseudo-labels of ``vlpl`` / ``gpr``.

A rule returns values in [-1, 1]: 1 a positive pseudo-label, -1 a negative one, 0 none; with ``soft=True``
a positive carries its score and a negative ``1 - score`` as its confidence (the losses then mix the
pseudo-label term with their unknown-entry term in that proportion). Entries observed in
``observed_labels`` (non-zero) get 0: observed labels always win.

What the first version of ``benchmarks/teacher_gap.py`` showed (its own loop of linear heads on frozen real
features): positive pseudo-labels alone, even at precision 0.95, leave a head where EM leaves it; negatives
chosen as the ones a teacher is surest of (the easy ones) made things worse, while negatives covering most of
the true negatives are what closes the gap. :class:`PrevalenceRule` (both ends of every class's ranking, sized
by the expected number of positives) on an earlier EM run's scores, with ``vlpl(beta=1, beta_neg=1)``, closed
73% of the assume-negative -> full-label gap (EM alone: 49%), 81-82% after one or two more self-training
rounds. Through ``recipes/train.py`` (the script's present form, one seed): round 0 ``em_apl`` 69%, then
rounds of ``vlpl`` with the prevalence rule taught by the round before 78%, 88%, 84%; the true labels as
the teacher 96%.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["PseudoLabelRule", "ThresholdRule", "TopKRule", "PrevalenceRule", "SoftRule", "create_rule", "RULES"]


def _check_scores(scores: torch.Tensor, observed_labels: Optional[torch.Tensor]):
    scores = torch.as_tensor(scores).float()
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, C), got shape {tuple(scores.shape)}")
    if observed_labels is not None:
        observed_labels = torch.as_tensor(observed_labels)
        if observed_labels.shape != scores.shape:
            raise ValueError(f"observed_labels has shape {tuple(observed_labels.shape)}, scores {tuple(scores.shape)}")
    return scores, observed_labels


def _number(name: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


class PseudoLabelRule:
    """Base of the rules: ``rule(scores, observed_labels=None)`` -> (N, C) pseudo-labels in [-1, 1]."""

    soft: bool = False

    @property
    def emits_negatives(self) -> bool:
        """Whether the rule, as configured, can give negative pseudo-labels (a loss must then weigh them)."""
        return False

    def select(self, scores: torch.Tensor, observed_labels: Optional[torch.Tensor]):
        """The (N, C) bool masks ``(positive, negative)`` of the rule (negatives win where both).

        Args:
            scores: (N, C) float32 scores.
            observed_labels: (N, C) {-1, 0, 1} labels or None.
        """
        raise NotImplementedError

    def __call__(self, scores: torch.Tensor, observed_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pseudo-labels for every unknown entry.

        Args:
            scores: (N, C) teacher scores in [0, 1].
            observed_labels: Optional (N, C) {-1, 0, 1} labels; observed entries get 0.

        Returns:
            (N, C) float32 values in [-1, 1].
        """
        scores, observed_labels = _check_scores(scores, observed_labels)
        positive, negative = self.select(scores, observed_labels)
        clipped = scores.clamp(0.0, 1.0)
        pos_value = clipped if self.soft else torch.ones_like(scores)
        neg_value = (1.0 - clipped) if self.soft else torch.ones_like(scores)
        out = torch.where(negative, -neg_value, torch.where(positive, pos_value, torch.zeros_like(scores)))
        if observed_labels is not None:
            out = out.masked_fill(observed_labels != 0, 0.0)
        return out


def _lowest_per_row(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of each row's ``floor(fraction·C)`` lowest scores (VLPL's negative pseudo-labels)."""
    count = int(fraction * scores.shape[1])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count:
        mask.scatter_(1, scores.topk(count, dim=1, largest=False).indices, True)
    return mask


@dataclass
class ThresholdRule(PseudoLabelRule):
    """VLPL's rule (Xing et al., 2024): positives where the score exceeds ``threshold``.

    Args:
        threshold: Positive where ``score > threshold`` (``>=`` with ``strict=False``); VLPL uses 0.3 on
            CLIP's softmax at T = 0.01.
        negative_threshold: Negative where ``score < negative_threshold`` (None: none).
        negative_fraction: Also negative: each row's ``floor(fraction·C)`` lowest scores (VLPL's "partial", 0).
        strict: Compare with ``>`` (VLPL) or ``>=``.
        soft: Confidence-weighted values (the score, or 1 - score for negatives) instead of ±1.
    """

    threshold: float = 0.3
    negative_threshold: Optional[float] = None
    negative_fraction: float = 0.0
    strict: bool = True
    soft: bool = False

    def __post_init__(self):
        _number("threshold", self.threshold)
        if self.negative_threshold is not None:
            _number("negative_threshold", self.negative_threshold)
        _number("negative_fraction", self.negative_fraction, 0.0, 1.0)

    @property
    def emits_negatives(self) -> bool:
        return self.negative_threshold is not None or self.negative_fraction > 0

    def select(self, scores, observed_labels):
        positive = scores > self.threshold if self.strict else scores >= self.threshold
        negative = _lowest_per_row(scores, self.negative_fraction)
        if self.negative_threshold is not None:
            negative |= scores < self.negative_threshold
        return positive, negative


@dataclass
class TopKRule(PseudoLabelRule):
    """AEVLP's rule (Tran et al., 2025): each row's ``k`` highest-scoring classes that reach ``threshold``.

    Args:
        k: Classes kept per row (3; 32 on CUB).
        threshold: Minimum score of a positive (``>=``).
        negative_threshold: Negative where ``score < negative_threshold`` (None: none).
        soft: Confidence-weighted values instead of ±1.
    """

    k: int = 3
    threshold: float = 0.0
    negative_threshold: Optional[float] = None
    soft: bool = False

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        _number("threshold", self.threshold)

    @property
    def emits_negatives(self) -> bool:
        return self.negative_threshold is not None

    def select(self, scores, observed_labels):
        top = torch.zeros_like(scores, dtype=torch.bool)
        top.scatter_(1, scores.topk(min(self.k, scores.shape[1]), dim=1).indices, True)
        negative = scores < self.negative_threshold if self.negative_threshold is not None else torch.zeros_like(top)
        return top & (scores >= self.threshold), negative


@dataclass
class PrevalenceRule(PseudoLabelRule):
    """Both ends of every class's ranking, sized by the expected number of positives (this package's rule).

    For class c with ``n_c`` observed positives, about ``h_c = (k - 1)·n_c`` of its unknown entries are
    positive (each image shows about k classes and its observed one is drawn among them). Among the class's
    unknown entries ranked by score, the top ``floor((1 - positive_margin)·h_c)`` become positives and
    those ranked beyond ``ceil((1 + negative_margin)·h_c)`` negatives; the band around the boundary stays
    unlabelled. The ranking is per class, so the teacher's scores need no calibration; the negatives cover
    every kind of negative, not only the easy ones.

    Args:
        expected_num_pos: k, the expected number of positives per image (VOC 1.5, COCO 2.9, NUS 1.9, CUB 31.4).
        positive_margin: Share of ``h_c`` left out at the positive end (0.3).
        negative_margin: Share of ``h_c`` left out beyond the boundary at the negative end (0.35).
    """

    expected_num_pos: float = 2.0
    positive_margin: float = 0.3
    negative_margin: float = 0.35

    def __post_init__(self):
        _number("expected_num_pos", self.expected_num_pos, 1.0)
        _number("positive_margin", self.positive_margin, 0.0, 1.0)
        _number("negative_margin", self.negative_margin, 0.0)

    @property
    def emits_negatives(self) -> bool:
        return True

    def select(self, scores, observed_labels):
        if observed_labels is None:
            raise ValueError("PrevalenceRule needs observed_labels (it counts each class's observed positives)")
        unknown = observed_labels.to(scores.device) == 0
        hidden = (self.expected_num_pos - 1.0) * (observed_labels == 1).sum(dim=0).to(scores)
        order = scores.masked_fill(~unknown, -math.inf).argsort(dim=0, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(0, order, torch.arange(scores.shape[0], device=order.device).unsqueeze(1).expand_as(order))
        positive = unknown & (ranks < torch.floor((1.0 - self.positive_margin) * hidden))
        negative = unknown & (ranks >= torch.ceil((1.0 + self.negative_margin) * hidden))
        return positive, negative


@dataclass
class SoftRule(PseudoLabelRule):
    """Every unknown entry a positive pseudo-label whose confidence is its score (scores below ``min_score`` 0).

    Args:
        min_score: Scores below it give no pseudo-label.
    """

    min_score: float = 0.0
    soft: bool = True

    def __post_init__(self):
        _number("min_score", self.min_score)
        self.soft = True

    def select(self, scores, observed_labels):
        return scores >= self.min_score, torch.zeros_like(scores, dtype=torch.bool)


#: Rule names for :func:`create_rule` (and the recipe's ``--pseudo-label-rule``).
RULES = {"threshold": ThresholdRule, "topk": TopKRule, "prevalence": PrevalenceRule, "soft": SoftRule}


def create_rule(name: str, **kwargs) -> PseudoLabelRule:
    """A rule by name: ``threshold``, ``topk``, ``prevalence`` or ``soft``.

    Args:
        name: The rule's name.
        **kwargs: Its arguments (``threshold=0.3``, ``k=3``, ``expected_num_pos=2.9``, ``soft=True``, ...).
    """
    if name not in RULES:
        raise ValueError(f"unknown pseudo-label rule {name!r}; choose from {sorted(RULES)}")
    try:
        return RULES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"pseudo-label rule {name!r}: {err}") from err
