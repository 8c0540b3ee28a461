"""What a run trains, built from its settings: the timm model, any registered loss, optimizers and schedules.

Optimizers and learning-rate schedules from timm, with the recipe's parameter groups.

Parameter groups: the backbone at ``lr``, the classifier at ``lr * head_lr_mult`` (10 in the large-loss
reference), the loss's trainable state (ROLE's estimator) at ``lr * state_lr_mult`` (10 in the ROLE
reference). The optimizer is ``timm.optim.create_optimizer_v2`` (``adam`` by default, as the protocol;
note that timm's ``sgd`` is Nesterov SGD and ``momentum`` plain SGD with momentum).

The label estimator's optimizer (``--estimator-optimizer``, :func:`estimator_optimizer`): ``adam`` keeps
it a dense parameter group of that optimizer, as the reference; ``lazy_adam`` gives it sparse gradients
and :class:`~spl_losses.optim.LazyAdam`, the same Adam (to float tolerance) at O(B·C) per step instead of
O(N·C); ``sparse_adam`` gives it ``torch.optim.SparseAdam``, another optimizer (its moments decay only on
the steps a row is read). The two row-sparse ones are Adam: they need ``--opt adam`` (or ``adamw``) without
weight decay, and take its betas and eps. Either way :func:`build_optimizer` returns one optimizer (a
:class:`~spl_losses.optim.CombinedOptimizer` when the estimator has its own), so a scheduler sets every
group's rate and a checkpoint saves every state. The schedule is ``timm.scheduler.create_scheduler_v2``
stepped per update (none by default: a constant rate, as the protocol); it is a pure function of the step
count, so a resumed run continues it exactly.

The networks a run trains: a timm model (optionally BoostLU-wrapped) and the linear-head hand-off.

Building any registered loss from a run, and handing a loss state from one phase to the next.

The constructor decides what a loss receives (``spl_losses.loss_kwargs``, the registry's router):
``num_classes``, ``num_examples``, ``observed_labels`` (dense {-1, 0, 1} training labels),
``expected_num_pos``, ``num_epochs``, ``seed``, ``sparse`` and the options the user set.
"""
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from .._registry import get_loss_class, loss_kwargs, loss_parameters
from ..optim import CombinedOptimizer, LazyAdam

__all__ = ["ESTIMATOR_OPTIMIZERS", "LAZY_ADAM_MIN_ENTRIES", "LAZY_ADAM_MIN_ENTRIES_ACCELERATOR", "param_groups",
           "estimator_optimizer", "build_optimizer", "build_scheduler", "create_model", "timm_model_of",
           "copy_linear_head", "attach_estimator_optimizer", "loss_parameters", "build_loss", "build_run_loss", "trainable_state_parameters",
           "hand_off_loss_state", "run_estimator_optimizer"]


#: Choices of ``--estimator-optimizer``.
ESTIMATOR_OPTIMIZERS = ("auto", "lazy_adam", "adam", "sparse_adam")
#: ``auto`` picks LazyAdam from this many estimator entries N·C on, where its step is faster than dense
#: Adam's: on one CPU core (B = 16, C = 80; benchmarks/estimator_optimizer.py) LazyAdam's costs 0.6-0.8 ms
#: whatever N in shuffled epochs with a checkpoint per epoch, 1.2-1.5 ms for rows drawn at random; dense
#: Adam's ~1.1 ms per million entries (crossover 0.5 to 1.3 million). Below it both cost little.
LAZY_ADAM_MIN_ENTRIES = 1_000_000
#: The same on an accelerator (CUDA): LazyAdam's ~100 small kernels and a few host syncs per step against
#: dense Adam's memory traffic (~36 bytes per entry with the dense gradient) at ~2 TB/s. An estimate, not
#: a measurement; under data parallelism dense Adam also all-reduces 4·N·C bytes per step.
LAZY_ADAM_MIN_ENTRIES_ACCELERATOR = 30_000_000
#: ``--opt`` values that are Adam when the weight decay is 0 (the row-sparse optimizers' family).
_ADAM_FAMILY = ("adam", "adamw")
_STATE_GROUP = "loss_state"


def param_groups(
        lr: float,
        backbone: Sequence[nn.Parameter] = (),
        head: Sequence[nn.Parameter] = (),
        loss_state: Sequence[nn.Parameter] = (),
        head_lr_mult: float = 1.0,
        state_lr_mult: float = 10.0,
) -> List[Dict]:
    """Optimizer parameter groups (empty groups left out).

    Args:
        lr: Base learning rate (backbone).
        backbone: Backbone parameters.
        head: Classifier parameters (``lr * head_lr_mult``).
        loss_state: Trainable loss state (``lr * state_lr_mult``), the group named ``loss_state``.
        head_lr_mult: Head multiplier.
        state_lr_mult: Loss-state multiplier.
    """
    groups = [{"params": list(backbone), "lr": lr, "name": "backbone"},
              {"params": list(head), "lr": lr * head_lr_mult, "name": "head"},
              {"params": list(loss_state), "lr": lr * state_lr_mult, "name": _STATE_GROUP}]
    return [g for g in groups if g["params"]]


def estimator_optimizer(choice: str, num_entries: int, opt: str = "adam", weight_decay: float = 0.0,
                        device_type: str = "cpu") -> str:
    """The label estimator's optimizer: ``lazy_adam``, ``adam`` (dense, in the ``opt`` optimizer) or ``sparse_adam``.

    Args:
        choice: ``auto``, ``lazy_adam``, ``adam`` or ``sparse_adam`` (``--estimator-optimizer``).
        num_entries: N·C, the estimator's entries (``auto`` picks ``lazy_adam`` from
            :data:`LAZY_ADAM_MIN_ENTRIES` on, :data:`LAZY_ADAM_MIN_ENTRIES_ACCELERATOR` off the CPU, when
            ``opt`` is Adam without weight decay).
        opt: The network's optimizer (``--opt``).
        weight_decay: The weight decay (``--weight-decay``).
        device_type: The training device's type (``cpu``, ``cuda``, ...).

    Raises:
        ValueError: an unknown choice, or a row-sparse one with an optimizer other than Adam.
    """
    if choice not in ESTIMATOR_OPTIMIZERS:
        raise ValueError(f"--estimator-optimizer must be one of {', '.join(ESTIMATOR_OPTIMIZERS)}, got {choice!r}")
    adam = opt in _ADAM_FAMILY and weight_decay == 0.0
    if choice == "auto":
        least = LAZY_ADAM_MIN_ENTRIES if device_type == "cpu" else LAZY_ADAM_MIN_ENTRIES_ACCELERATOR
        return "lazy_adam" if adam and num_entries >= least else "adam"
    if choice != "adam" and not adam:
        raise ValueError(f"--estimator-optimizer {choice} is Adam without weight decay; with --opt {opt} and "
                         f"--weight-decay {weight_decay:g} the network would train with another optimizer. Use "
                         "--estimator-optimizer adam (the estimator then follows --opt, as a dense parameter group) "
                         "or --opt adam with --weight-decay 0")
    return choice


def _fused_ok(groups: List[Dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _timm_optimizer(groups: List[Dict], opt: str, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    kwargs = {"fused": True} if opt in _ADAM_FAMILY and _fused_ok(groups) else {}
    if opt in ("sgd", "nesterov", "momentum"):
        kwargs["momentum"] = momentum
    try:
        return create_optimizer_v2(groups, opt=opt, lr=groups[0]["lr"], weight_decay=weight_decay, **kwargs)
    except (AssertionError, KeyError, ValueError) as err:
        raise ValueError(f"--opt {opt!r}: timm.optim could not create it ({err})") from None


def build_optimizer(
        groups: List[Dict],
        opt: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        estimator: str = "adam",
) -> torch.optim.Optimizer:
    """The optimizer stepping ``groups``; with a row-sparse ``estimator`` one, the ``loss_state`` group gets it.

    Args:
        groups: Parameter groups (see :func:`param_groups`).
        opt: A ``timm.optim`` optimizer name (``adam``, ``adamw``, ``momentum``, ``sgd``, ...).
        momentum: Momentum of SGD-like optimizers.
        weight_decay: Weight decay (0 in the protocol).
        estimator: The ``loss_state`` group's optimizer, resolved by :func:`estimator_optimizer`: ``adam``
            (a group of the ``opt`` optimizer), ``lazy_adam`` or ``sparse_adam`` (its parameters then
            have sparse gradients: build the loss with ``sparse=True``).

    Returns:
        The ``opt`` optimizer, or a :class:`~spl_losses.optim.CombinedOptimizer` of it and the
        estimator's (the estimator's alone if no other group is given).
    """
    if estimator not in ESTIMATOR_OPTIMIZERS[1:]:
        raise ValueError(f"estimator must be lazy_adam, adam or sparse_adam (resolve auto with estimator_optimizer), "
                         f"got {estimator!r}")
    state = [g for g in groups if g.get("name") == _STATE_GROUP]
    if estimator == "adam" or not state:
        return _timm_optimizer(groups, opt, momentum, weight_decay)
    estimator_optimizer(estimator, 0, opt, weight_decay)  # refuses a row-sparse one beside another optimizer
    dense_groups = [g for g in groups if g.get("name") != _STATE_GROUP]
    dense = _timm_optimizer(dense_groups, opt, momentum, weight_decay) if dense_groups else None
    betas, eps = (tuple(dense.defaults["betas"]), dense.defaults["eps"]) if dense is not None else ((0.9, 0.999), 1e-8)
    if estimator == "lazy_adam":
        sparse = LazyAdam(state, lr=state[0]["lr"], betas=betas, eps=eps)
    else:
        sparse = torch.optim.SparseAdam(state, lr=state[0]["lr"], betas=betas, eps=eps)
    return sparse if dense is None else CombinedOptimizer([dense, sparse])


def build_scheduler(optimizer: torch.optim.Optimizer, sched: str, epochs: int, updates_per_epoch: int,
                    warmup_epochs: int = 0, warmup_lr: float = 1e-6, min_lr: float = 0.0, decay_epochs: int = 30,
                    decay_rate: float = 0.1):
    """A timm scheduler stepped per update (``scheduler.step_update(num_updates)``), or None for a constant rate.

    Args:
        optimizer: The optimizer.
        sched: ``none``, ``cosine``, ``step``, ``multistep``, ``poly`` or ``tanh``.
        epochs: Epochs of the phase.
        updates_per_epoch: Optimizer steps per epoch.
        warmup_epochs: Linear warm-up epochs from ``warmup_lr``.
        warmup_lr: Learning rate at the start of the warm-up.
        min_lr: Lowest rate of decaying schedules.
        decay_epochs: Step schedule: epochs between decays.
        decay_rate: Step schedules: factor per decay.
    """
    if sched == "none" and warmup_epochs == 0:
        return None
    if sched == "none":  # constant after the warm-up: a step schedule that never decays
        sched, decay_rate, decay_epochs = "step", 1.0, max(epochs, 1)
    scheduler, _ = create_scheduler_v2(optimizer, sched=sched, num_epochs=epochs, decay_epochs=decay_epochs,
                                       decay_rate=decay_rate, min_lr=min_lr, warmup_lr=warmup_lr,
                                       warmup_epochs=warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=max(updates_per_epoch, 1))
    return scheduler


def create_model(settings, num_classes: int) -> nn.Module:
    """The run's network: ``timm.create_model`` (a timm name or a published ``hf-hub:``/``local-dir:``
    checkpoint), wrapped in :class:`~spl_losses.models.BoostLU` with ``--boostlu``.

    Args:
        settings: The run's settings (``model``, ``pretrained``, ``model_kwargs``, ``boostlu``, ``boostlu_alpha``).
        num_classes: C.
    """
    from .settings import NETWORK_ERRORS, offline_weights_message

    kwargs = dict(settings.model_kwargs or {})
    try:
        if settings.boostlu:
            from ..models import create_boostlu_model

            return create_boostlu_model(settings.model, alpha=settings.boostlu_alpha, pretrained=settings.pretrained,
                                        num_classes=num_classes, **kwargs)
        return timm.create_model(settings.model, pretrained=settings.pretrained, num_classes=num_classes, **kwargs)
    except NETWORK_ERRORS as err:  # the download failed: the Hub (or the weights' URL) unreachable
        if not settings.pretrained or settings.model.startswith(("hf-hub:", "local-dir:")):
            raise
        raise ValueError(offline_weights_message(settings.model, f"the download failed ({type(err).__name__})")) \
            from err


def timm_model_of(model: nn.Module) -> nn.Module:
    """The stock timm model inside a BoostLU wrapper, or the model itself.

    Args:
        model: A timm model or a :class:`~spl_losses.models.BoostLU`.
    """
    from ..models import BoostLU

    return model.model if isinstance(model, BoostLU) else model


@torch.no_grad()
def copy_linear_head(head: nn.Linear, model: nn.Module) -> None:
    """Copy a trained linear head into a timm model's classifier (``model.get_classifier()``).

    Args:
        head: The trained ``nn.Linear`` (D -> C).
        model: The timm model (its classifier must be an ``nn.Linear`` of the same shape).
    """
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"the model's classifier is {type(classifier).__name__}, expected nn.Linear")
    if classifier.weight.shape != head.weight.shape:
        raise ValueError(f"head shape {tuple(head.weight.shape)} does not match the classifier's "
                         f"{tuple(classifier.weight.shape)}")
    classifier.weight.copy_(head.weight)
    if classifier.bias is not None and head.bias is not None:
        classifier.bias.copy_(head.bias)


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


def attach_estimator_optimizer(loss: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Give each label estimator of ``loss`` the optimizer that steps its logits (``LabelEstimator.use_optimizer``):
    under LazyAdam the estimator catches its rows up through it before reading them.

    Args:
        loss: The run's loss.
        optimizer: What :func:`build_optimizer` returned (a :class:`~spl_losses.optim.CombinedOptimizer` is
            searched for the optimizer holding each estimator's logits).
    """
    from ..losses import LabelEstimator

    inner = list(optimizer.optimizers) if isinstance(optimizer, CombinedOptimizer) else [optimizer]
    for module in loss.modules():
        if isinstance(module, LabelEstimator):
            owner = next((o for o in inner if any(p is module.logits for g in o.param_groups for p in g["params"])),
                         None)
            module.use_optimizer(owner)


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
        data: The run's :class:`~spl_losses.training.run_data.RunData` (with its teacher's pseudo-labels, if any).
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
    from .builders import estimator_optimizer

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
