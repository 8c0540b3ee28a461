"""Constructor-argument checks shared by every loss (one copy of each).

Each check returns the value in its canonical type or raises ``ValueError`` naming the argument,
what it expects and what it got. Numbers must be finite: a NaN or infinite hyperparameter would
silently turn every loss value into NaN.
"""
import math
from typing import Optional

__all__ = ["check_number", "check_positive_int", "check_non_negative_int", "check_num_classes",
           "check_expected_num_pos", "check_reduction", "REDUCTIONS"]

#: Reductions of the losses whose originals sum over entries (Hill, SPLC, ASL).
REDUCTIONS = ("sum", "mean", "batchmean")


def check_number(name: str, value, minimum: float = -math.inf, maximum: float = math.inf,
                 strict_minimum: bool = False, strict_maximum: bool = False) -> float:
    """Return ``value`` as a float after checking that it is a finite real number in range.

    Args:
        name: Argument name, used in the error message.
        value: The value to check (bool is refused).
        minimum: Lower bound.
        maximum: Upper bound.
        strict_minimum: Exclude the lower bound.
        strict_maximum: Exclude the upper bound.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_small = value <= minimum if strict_minimum else value < minimum
    too_large = value >= maximum if strict_maximum else value > maximum
    if too_small or too_large:
        low, high = "(" if strict_minimum else "[", ")" if strict_maximum else "]"
        raise ValueError(f"{name} must lie in {low}{minimum}, {maximum}{high}, got {value!r}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    """Return ``value`` after checking that it is an int >= 1 (bool is refused).

    Args:
        name: Argument name, used in the error message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_non_negative_int(name: str, value) -> int:
    """Return ``value`` after checking that it is an int >= 0 (bool is refused).

    Args:
        name: Argument name, used in the error message.
        value: The value to check.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def check_num_classes(num_classes: Optional[int], minimum: int = 1) -> Optional[int]:
    """Return ``num_classes`` (None allowed: read from the logits) after checking it is an int >= minimum.

    Args:
        num_classes: C, or None.
        minimum: Smallest allowed value.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < minimum):
        raise ValueError(f"num_classes must be an int >= {minimum}, got {num_classes!r}")
    return num_classes


def check_expected_num_pos(expected_num_pos) -> float:
    """Return k, the expected number of positives per image, after checking it is finite and >= 0.

    Args:
        expected_num_pos: k (Cole et al., 2021 use 1.5 for VOC 2012, 2.9 for COCO 2014, 1.9 for
            NUS-WIDE and 31.4 for CUB-200-2011).
    """
    if isinstance(expected_num_pos, bool) or not isinstance(expected_num_pos, (int, float)) \
            or not math.isfinite(expected_num_pos) or expected_num_pos < 0:
        raise ValueError(
            "expected_num_pos must be a finite non-negative number, the expected number of positives per "
            f"image (Cole et al., 2021: VOC 1.5, COCO 2.9, NUS-WIDE 1.9, CUB 31.4), got {expected_num_pos!r}")
    return float(expected_num_pos)


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` after checking it is one of :data:`REDUCTIONS`.

    Args:
        reduction: ``"sum"``, ``"mean"`` or ``"batchmean"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction
