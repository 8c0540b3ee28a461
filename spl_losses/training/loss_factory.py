"""Building any registered loss from a run, and handing a loss state from one phase to the next.

The constructor decides what a loss receives (``spl_losses.loss_kwargs``, the registry's router):
``num_classes``, ``num_examples``, ``observed_labels`` (dense {-1, 0, 1} training labels),
``expected_num_pos``, ``num_epochs``, ``seed``, ``sparse`` and the options the user set.
"""
from typing import Any, Dict, Optional

import torch
from torch import nn

from .._registry import get_loss_class, loss_kwargs, loss_parameters

__all__ = ["loss_parameters", "build_loss", "build_run_loss", "trainable_state_parameters",
           "hand_off_loss_state", "run_estimator_optimizer"]


def build_loss(
        name: str,
        num_classes: int,
        num_examples: int,
        observed_labels: Optional[torch.Tensor] = None,
        expected_num_pos: Optional[float] = None,
        num_epochs: Optional[int] = None,
        seed: Optional[int] = None,
        sparse: bool = False,
        options: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """Create loss ``name`` with the arguments its constructor takes.

    Args:
        name: Registered loss name.
        num_classes: C.
        num_examples: N, the training-set size (losses with per-example state).
        observed_labels: (N, C) {-1, 0, 1} training labels (estimator / label-matrix initialisation).
        expected_num_pos: k of EPR/ROLE-like losses.
        num_epochs: Total epochs (losses with epoch schedules).
        seed: Seed of the loss's own random initialisation.
        sparse: Ask for sparse gradients of per-example state (when the loss supports it).
        options: Loss options set by the user; an option the loss does not take is an error.

    Returns:
        The loss module.
    """
    options = dict(options or {})
    available = {"num_classes": num_classes, "num_examples": num_examples, "observed_labels": observed_labels,
                 "expected_num_pos": expected_num_pos, "num_epochs": num_epochs, "seed": seed,
                 "sparse": True if sparse else None}
    kwargs = loss_kwargs(name, available, options)
    if "expected_num_pos" in loss_parameters(name) and "expected_num_pos" not in kwargs:
        raise ValueError(f"loss {name!r} needs expected_num_pos (k): pass --expected-num-pos")
    return get_loss_class(name)(**kwargs)


def trainable_state_parameters(loss: nn.Module):
    """The loss's trainable parameters (ROLE's label estimator), as a list (possibly empty).

    Args:
        loss: The loss module.
    """
    return [p for p in loss.parameters() if p.requires_grad]


def build_run_loss(settings, data, epochs: int, sparse: bool = False, check_inputs: bool = True) -> nn.Module:
    """The loss of one phase of a run, built once (on the CPU; the phase moves it).

    Args:
        settings: The run's :class:`~spl_losses.training.settings.RunSettings`.
        data: The run's :class:`~spl_losses.training.data.RunData` (with its teacher's pseudo-labels, if any).
        epochs: Epochs of the phase (losses with epoch schedules).
        sparse: Sparse gradients for per-example state (``--estimator-optimizer lazy_adam`` or ``sparse_adam``).
        check_inputs: The loss's per-call input checks (off where the targets are the run's own label
            matrices, checked when they were built: a device sync per step saved).
    """
    options = dict(settings.loss_options, check_inputs=check_inputs)
    if data.train_pseudo is not None:
        options["pseudo_labels"] = data.train_pseudo
    return build_loss(settings.loss, data.num_classes, data.num_train, data.train_observed,
                      settings.expected_num_pos, epochs, settings.seed, sparse=sparse, options=options)


def run_estimator_optimizer(settings, data, device) -> str:
    """``--estimator-optimizer`` resolved for this run's estimator size and device (``auto``: LazyAdam when large).

    Args:
        settings: The run's settings (``loss``, ``estimator_optimizer``, ``opt``, ``weight_decay``).
        data: The run's data (N, C).
        device: The training device.
    """
    from .optim import estimator_optimizer

    if "sparse" not in loss_parameters(settings.loss):  # no label estimator
        return "adam"
    return estimator_optimizer(settings.estimator_optimizer, data.num_train * data.num_classes, settings.opt,
                               settings.weight_decay, torch.device(device).type)


@torch.no_grad()
def hand_off_loss_state(source: nn.Module, target: nn.Module) -> None:
    """Start ``target``'s state from ``source``'s (linear_init: linear phase -> fine-tuning).

    Label estimators are handed over as ROLE's reference does, through their probabilities
    (``init_from_estimates``, which clips them before the inverse sigmoid); every other tensor of the
    state is copied exactly.

    Args:
        source: The linear phase's loss.
        target: The fine-tuning loss (built for the same data).
    """
    from ..losses import LabelEstimator

    estimators = {name for name, module in target.named_modules() if isinstance(module, LabelEstimator)}
    logit_keys = {f"{name}.logits" if name else "logits" for name in estimators}
    result = target.load_state_dict({k: v for k, v in source.state_dict().items() if k not in logit_keys},
                                    strict=False)
    missing = sorted(set(result.missing_keys) - logit_keys)
    if missing or result.unexpected_keys:
        raise ValueError(f"cannot hand the loss state over: missing {missing[:5]}, unexpected "
                         f"{list(result.unexpected_keys)[:5]}")
    sources = dict(source.named_modules())
    for name in estimators:
        target.get_submodule(name).init_from_estimates(sources[name].estimates())
