"""Teacher pseudo-labels of a run (``--teacher``, ``--pseudo-label-rule``): checked once, computed once.

Everything about a run's pseudo-labels is decided here, for every path of the recipe (a single run, the
points of a ``--search`` trained together, several processes, linear and end to end):

- :func:`resolve_pseudo_label_settings` (before any work) checks the teacher string, builds the rule with
  its resolved options (``k`` of the ``prevalence`` rule is the run's ``--expected-num-pos`` unless the
  rule's options set it) and decides the loss weights of the pseudo-labels: every pseudo-label the rule can
  emit gets a loss term. A rule that emits negatives gets a negative weight of 1 unless one is given; a
  weight of 0 for them, or a loss with no negative term, is refused naming the loss and the rule. Both the
  rule options and the weights are recorded in ``config.yaml``.
- :func:`teacher_pseudo_labels` scores the training split once (cached by teacher, weights, preprocessing
  and the split's fingerprint; the main process computes, the others read its cache), applies the rule,
  and returns the (N, C) pseudo-labels, row i for the training example ``index == i``, with their counts.
"""
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

__all__ = ["PseudoLabelSettings", "resolve_pseudo_label_settings", "teacher_pseudo_labels", "rule_takes_k",
           "TEACHER_KINDS"]

#: Teacher strings: ``KIND:VALUE`` for these kinds, or ``knn``.
TEACHER_KINDS = ("clip:", "model:", "scores:")
#: Weight of positive pseudo-labels per rule where it differs from the loss's own default (VLPL's 0.7 was
#: tuned for its CLIP threshold rule; the prevalence rule's ranked positives are weighed fully).
POSITIVE_WEIGHT_BY_RULE = {"prevalence": 1.0}
#: Weight of negative pseudo-labels from a rule that emits them, unless given.
NEGATIVE_WEIGHT = 1.0


@dataclass(frozen=True)
class PseudoLabelSettings:
    """A run's resolved pseudo-label settings.

    Args:
        teacher: The teacher string (``clip:...``, ``model:...``, ``scores:PATH`` or ``knn``).
        rule: The rule's name.
        rule_options: The rule's arguments as resolved (``expected_num_pos`` filled in where it takes it).
        loss_weights: Loss constructor arguments weighing the pseudo-labels (e.g. ``{"beta": 1.0,
            "beta_neg": 1.0}`` for vlpl).
        emits_negatives: Whether the rule can give negative pseudo-labels.
    """

    teacher: str
    rule: str
    rule_options: Mapping[str, Any]
    loss_weights: Mapping[str, float]
    emits_negatives: bool


def rule_takes_k(rule: str, rule_kwargs: Mapping[str, Any]) -> bool:
    """Whether rule ``rule`` takes k (``expected_num_pos``) and its options leave it to the run.

    Args:
        rule: The rule's name.
        rule_kwargs: ``--pseudo-label-kwargs``.
    """
    from ..teachers import RULES

    if rule not in RULES:
        raise ValueError(f"unknown pseudo-label rule {rule!r}; choose from {sorted(RULES)}")
    return "expected_num_pos" in inspect.signature(RULES[rule]).parameters and "expected_num_pos" not in rule_kwargs


def _check_teacher_string(teacher: str) -> None:
    if teacher == "knn":
        return
    kind, sep, rest = teacher.partition(":")
    if not sep or f"{kind}:" not in TEACHER_KINDS or not rest:
        raise ValueError(f"--teacher {teacher!r}: expected clip:MODEL[@TAG], model:CHECKPOINT, scores:PATH or knn")


def _constructor_default(loss_cls, argument: str) -> Any:
    parameter = inspect.signature(loss_cls.__init__).parameters.get(argument)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def resolve_pseudo_label_settings(loss: str, teacher: Optional[str], rule: str, rule_kwargs: Mapping[str, Any],
                                  expected_num_pos: Optional[float],
                                  loss_options: Mapping[str, Any]) -> Optional[PseudoLabelSettings]:
    """Check a run's teacher flags and resolve its rule and loss weights, before any work.

    Args:
        loss: ``--loss``.
        teacher: ``--teacher`` (None: no pseudo-labels).
        rule: ``--pseudo-label-rule``.
        rule_kwargs: ``--pseudo-label-kwargs``.
        expected_num_pos: The run's resolved k (the ``prevalence`` rule's k unless its options set one).
        loss_options: The loss options the user set (a weight given there wins over the rule's default).

    Returns:
        The :class:`PseudoLabelSettings`, or None without a teacher.

    Raises:
        ValueError: a teacher for a loss without pseudo-labels, a malformed teacher, bad rule options, or
            negative pseudo-labels that would get no loss term (naming the loss and the rule).
    """
    from .._registry import get_loss_class, loss_parameters
    from ..teachers import create_rule

    if not teacher:
        return None
    if "pseudo_labels" not in loss_parameters(loss):
        raise ValueError(f"--teacher gives pseudo-labels, but --loss {loss} takes none (use vlpl or gpr)")
    _check_teacher_string(teacher)
    options = dict(rule_kwargs)
    if rule_takes_k(rule, options):
        if expected_num_pos is None:
            raise ValueError(f"--pseudo-label-rule {rule} needs k, the expected number of positives per image: "
                             "pass --expected-num-pos (or expected_num_pos in --pseudo-label-kwargs)")
        options["expected_num_pos"] = float(expected_num_pos)
    rule_obj = create_rule(rule, **options)
    loss_cls = get_loss_class(loss)
    weights: Dict[str, float] = {}
    positive_arg = getattr(loss_cls, "pseudo_positive_weight_arg", None)
    negative_arg = getattr(loss_cls, "pseudo_negative_weight_arg", None)
    if positive_arg:
        default = POSITIVE_WEIGHT_BY_RULE.get(rule, _constructor_default(loss_cls, positive_arg))
        weights[positive_arg] = float(loss_options.get(positive_arg, default))
    if rule_obj.emits_negatives:
        if not negative_arg:
            raise ValueError(f"--pseudo-label-rule {rule} gives negative pseudo-labels, but --loss {loss} has no "
                             "term for them; use a rule without negatives")
        weights[negative_arg] = float(loss_options.get(negative_arg, NEGATIVE_WEIGHT))
        if weights[negative_arg] <= 0:
            raise ValueError(f"--pseudo-label-rule {rule} gives negative pseudo-labels, but --loss {loss} weighs them "
                             f"with {negative_arg}={weights[negative_arg]}: they would get no loss term; give "
                             f"{negative_arg} > 0, or a rule without negatives")
    elif negative_arg:
        weights[negative_arg] = float(loss_options.get(negative_arg, _constructor_default(loss_cls, negative_arg)))
    return PseudoLabelSettings(teacher, rule, options, weights, rule_obj.emits_negatives)


def _counts(pseudo: torch.Tensor, scores: torch.Tensor, observed: torch.Tensor, full: Optional[torch.Tensor],
            expected_num_pos: Optional[float]) -> Dict[str, Any]:
    """What the pseudo-labels are: counts, and how they agree with the observed (and full) labels."""
    positive, negative = pseudo > 0, pseudo < 0
    observed_pos = observed > 0
    top = max(1, math.ceil(expected_num_pos or 1.0))
    ranked = torch.zeros_like(observed_pos)
    ranked.scatter_(1, scores.topk(min(top, scores.shape[1]), dim=1).indices, True)
    counts: Dict[str, Any] = {
        "positive": int(positive.sum()), "negative": int(negative.sum()), "entries": int(pseudo.numel()),
        "positive_per_image": float(positive.sum(dim=1).float().mean()) if pseudo.shape[0] else 0.0,
        # share of the observed positives among the teacher's top ceil(k) classes of their image
        "observed_agreement": float((ranked & observed_pos).sum() / observed_pos.sum().clamp_min(1)),
    }
    if full is not None:  # simulated single positives: how right the pseudo-labels are
        truth = full > 0
        counts["positive_precision"] = float((positive & truth).sum() / positive.sum().clamp_min(1))
        counts["negative_precision"] = float((negative & ~truth).sum() / negative.sum().clamp_min(1))
    return counts


def teacher_pseudo_labels(accelerator, pseudo: Optional[PseudoLabelSettings], teacher_kwargs: Mapping[str, Any],
                          teacher_cache_dir: Optional[str], dataset: str,
                          data) -> Tuple[Optional[torch.Tensor], Optional[Dict[str, Any]]]:
    """A run's (N, C) pseudo-labels of the training split and their counts, or (None, None) without a teacher.

    Args:
        accelerator: The ``accelerate.Accelerator`` (the main process scores first).
        pseudo: The run's :class:`PseudoLabelSettings` (None: no teacher).
        teacher_kwargs: ``--teacher-kwargs``.
        teacher_cache_dir: ``--teacher-cache-dir``.
        dataset: ``--dataset`` (a local folder or Hub id: cached scores may travel with it).
        data: The run's :class:`~spl_losses.training.run_data.RunData`.
    """
    if pseudo is None:
        return None, None
    from ..teachers import create_rule, create_teacher, teacher_scores

    kwargs = dict(teacher_kwargs)
    if pseudo.teacher.startswith(("clip:", "scores:")):  # class prompts / columns from the dataset's class names
        kwargs.setdefault("class_names", list(data.class_names))
    teacher = create_teacher(pseudo.teacher, **kwargs)
    source = dataset if os.path.isdir(os.path.expanduser(dataset)) or "/" in dataset else None
    with accelerator.main_process_first():  # the main process computes, the others read its cache
        scores = teacher_scores(teacher, data.splits["train"], cache_dir=teacher_cache_dir, dataset_source=source)
    scores = torch.as_tensor(scores, dtype=torch.float32)
    expected = (data.num_train, data.num_classes)
    if tuple(scores.shape) != expected:
        raise ValueError(f"--teacher {pseudo.teacher} gave scores of shape {tuple(scores.shape)} for the training split; "
                         f"expected (training rows, classes) = {expected}")
    labels = create_rule(pseudo.rule, **pseudo.rule_options)(scores, data.train_observed)
    counts = _counts(labels, scores, data.train_observed, data.train_full,
                     pseudo.rule_options.get("expected_num_pos"))
    counts.update(teacher=pseudo.teacher, rule=pseudo.rule, loss_weights=dict(pseudo.loss_weights))
    accelerator.print(
        f"pseudo-labels from {pseudo.teacher} ({pseudo.rule}): {counts['positive']} positive, {counts['negative']} "
        f"negative of {counts['entries']} entries ({counts['positive_per_image']:.2f} positives per image; "
        f"{100 * counts['observed_agreement']:.1f}% of the observed positives in the teacher's top classes"
        + (f"; precision {100 * counts['positive_precision']:.1f}% positive, "
           f"{100 * counts['negative_precision']:.1f}% negative" if "positive_precision" in counts else "")
        + f"); loss weights {dict(pseudo.loss_weights)}")
    return labels, counts
