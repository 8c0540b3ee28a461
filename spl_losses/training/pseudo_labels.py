"""Teacher pseudo-labels of a run (``--teacher``, ``--pseudo-label-rule``): computed once, before training.

The teacher scores the training split once (cached by teacher, weights, preprocessing and the split's
fingerprint, and read from beside the dataset when a copy travels with it), then the rule turns the
scores into the (N, C) pseudo-labels the loss (``vlpl``, ``gpr``) keeps as per-example state. The main
process computes; the others read the cache it wrote.
"""
import os
from typing import Any, Dict, Optional

import torch

__all__ = ["check_teacher_settings", "teacher_pseudo_labels"]

_TEACHER_KINDS = ("clip:", "model:")


def _rule_kwargs(rule: str, kwargs: Dict[str, Any], expected_num_pos: Optional[float]) -> Dict[str, Any]:
    from ..teachers import RULES

    import inspect

    kwargs = dict(kwargs)
    takes = inspect.signature(RULES[rule]).parameters
    if "expected_num_pos" in takes and "expected_num_pos" not in kwargs and expected_num_pos is not None:
        kwargs["expected_num_pos"] = expected_num_pos
    return kwargs


def check_teacher_settings(args, takes_pseudo_labels: bool, expected_num_pos: Optional[float]) -> None:
    """Refuse, before any work, a teacher for a loss without pseudo-labels, a malformed teacher string or
    rule options the rule does not take.

    Args:
        args: Parsed arguments.
        takes_pseudo_labels: Whether the loss takes ``pseudo_labels``.
        expected_num_pos: The run's k (the ``prevalence`` rule's default).
    """
    from ..teachers import create_rule

    if not args.teacher:
        return
    if not takes_pseudo_labels:
        raise ValueError(f"--teacher gives pseudo-labels, but --loss {args.loss} takes none (use vlpl or gpr)")
    if not (args.teacher == "knn" or args.teacher.startswith(_TEACHER_KINDS) and args.teacher.split(":", 1)[1]):
        raise ValueError(f"--teacher {args.teacher!r}: expected clip:MODEL[@TAG], model:CHECKPOINT or knn")
    create_rule(args.pseudo_label_rule, **_rule_kwargs(args.pseudo_label_rule, args.pseudo_label_kwargs,
                                                       expected_num_pos))


def teacher_pseudo_labels(accelerator, settings, data) -> Optional[torch.Tensor]:
    """The run's (N, C) pseudo-labels of the training split, or None without ``--teacher``.

    Args:
        accelerator: The ``accelerate.Accelerator`` (the main process scores first).
        settings: The run's settings.
        data: The run's data.
    """
    if not settings.teacher:
        return None
    from ..teachers import create_rule, create_teacher, teacher_scores

    kwargs = dict(settings.teacher_kwargs)
    if settings.teacher.startswith("clip:"):  # class prompts from the dataset's class names
        kwargs.setdefault("class_names", list(data.class_names))
    teacher = create_teacher(settings.teacher, **kwargs)
    source = settings.dataset if os.path.isdir(os.path.expanduser(settings.dataset)) or "/" in settings.dataset \
        else None

    def scores():
        return teacher_scores(teacher, data.splits["train"], cache_dir=settings.teacher_cache_dir,
                              dataset_source=source)

    with accelerator.main_process_first():  # the main process computes, the others read its cache
        values = scores()
    rule = create_rule(settings.pseudo_label_rule, **_rule_kwargs(settings.pseudo_label_rule,
                                                                  settings.pseudo_label_kwargs,
                                                                  settings.expected_num_pos))
    pseudo = rule(values, data.train_observed)
    accelerator.print(f"pseudo-labels from {settings.teacher} ({settings.pseudo_label_rule}): "
                      f"{int((pseudo > 0).sum())} positive, {int((pseudo < 0).sum())} negative entries")
    return pseudo
