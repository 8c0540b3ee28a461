"""One run's settings, resolved once: the checked flags plus everything derived from them and the data.

``check_args`` makes the checks that need no data (names of the loss, model and trackers, a push's
token and endpoint) so they fail in seconds; ``resolve_settings`` makes every check that needs the
data and returns a frozen :class:`RunSettings`: the flags as attributes (``settings.lr``), the resolved
k of EPR-like losses, the loss's options, where its state starts from, and the phases to train. The
run's ``config.yaml`` is :meth:`RunSettings.to_config`.
"""
import argparse
import dataclasses
import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import timm
import torch

from .._registry import get_loss_class
from ..checkpoints import check_checkpoint_classes, load_loss_state, parse_checkpoint, read_model_config
from ..data.options import check_dataset_options, parse_dataset_options
from .flags import FLAGS, loss_options
from .run_data import RunData
from .label_matrices import estimate_expected_num_pos
from .builders import build_loss, estimator_optimizer, loss_parameters, trainable_state_parameters
from .pseudo_labels import PseudoLabelSettings, resolve_pseudo_label_settings, rule_takes_k

__all__ = ["PhaseSettings", "RunSettings", "check_args", "resolve_settings", "TRACKER_MODULES",
           "pretrained_weights_cached", "offline_weights_message", "NETWORK_ERRORS", "epochs_horizon",
           "thread_count_of_run"]

#: torch's own thread count when this module was imported (before a run set one).
TORCH_DEFAULT_THREADS = torch.get_num_threads()

#: accelerate trackers and the module each needs installed.
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                   "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                   "trackio": "trackio"}


@dataclass(frozen=True)
class PhaseSettings:
    """One training phase of a run.

    Args:
        name: ``"main"`` or ``"linear_phase"`` (the first phase of ``linear_init``).
        mode: ``"linear"`` (a linear head on fixed features) or ``"end_to_end"``.
        output_dir: The phase's run folder.
        epochs: Epochs of the phase.
        lr: Learning rate.
        batch_size: Global batch size.
        head_lr_mult: Learning-rate multiplier of the classifier.
        resume: Continue from the phase's last checkpoint (a shared linear phase always does).
        config: What the phase folder's ``config.yaml`` records.
    """

    name: str
    mode: str
    output_dir: str
    epochs: int
    lr: float
    batch_size: int
    head_lr_mult: float
    resume: bool
    config: Mapping[str, Any] = field(default_factory=dict)


def _to_config(self) -> Dict[str, Any]:
    """The flags as resolved for this run (``expected_num_pos`` resolved), and the pseudo-labels' resolved rule
    options and loss weights: what ``config.yaml`` records."""
    config = {f.dest: getattr(self, f.dest) for f in FLAGS}
    if config["search_storage"]:  # a database URL's password never reaches a file
        from ..hub.public import mask_url_credentials

        config["search_storage"] = mask_url_credentials(config["search_storage"])
    pseudo = self.pseudo_labels
    config["pseudo_label_options"] = dict(pseudo.rule_options) if pseudo else None
    config["pseudo_label_loss_weights"] = dict(pseudo.loss_weights) if pseudo else None
    return config


#: The flags (as attributes, checked) plus the derived settings below.
RunSettings = make_dataclass(
    "RunSettings",
    [(flag.dest, flag.annotation) for flag in FLAGS] + [
        ("config", Optional[str]),
        ("expected_num_pos_source", Optional[str]),
        ("dataset_options", Mapping[str, Any]),
        ("loss_options", Mapping[str, Any]),
        ("targets", str),
        ("init_loss_state_source", Optional[str]),
        ("init_loss_state_note", Optional[str]),
        ("phases", Tuple[PhaseSettings, ...]),
        ("num_processes", int),
        ("pseudo_labels", Optional[PseudoLabelSettings]),
    ],
    frozen=True, namespace={"to_config": _to_config, "__module__": __name__},
)
RunSettings.__doc__ = """A run's settings, computed once by :func:`resolve_settings` (frozen).

Every flag of the recipe is an attribute (``settings.lr``, ``settings.model``); besides:

Args:
    config: The YAML config the flags were read with, if any.
    expected_num_pos_source: Where k came from (``flag``, ``benchmark``, ``estimated ...``), or None.
    dataset_options: The builder options (``--dataset-option``).
    loss_options: Loss constructor arguments set by the user.
    targets: ``"full"`` (multi-hot training labels, full-label losses) or ``"observed"``.
    init_loss_state_source: Where the loss state starts from, or None (fresh).
    init_loss_state_note: A line for the log about it, or None.
    phases: The phases to train, in order.
    num_processes: Processes of the run.
    pseudo_labels: The teacher's resolved rule and loss weights (``--teacher``), or None.
"""


def offline_weights_message(model: str, why: str) -> str:
    """The one message for pretrained weights that cannot be had: name ``--no-pretrained``."""
    return (f"--model {model}: its pretrained weights are not in the local Hugging Face cache and {why}; "
            "pass --no-pretrained to start from random weights, or download them once while online")


def _network_errors() -> Tuple[type, ...]:
    """Exceptions that mean the Hub (or a weights URL) could not be reached."""
    import urllib.error

    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    errors = [ConnectionError, TimeoutError, urllib.error.URLError, LocalEntryNotFoundError, OfflineModeIsEnabled]
    for client in ("httpx", "httpx2"):  # huggingface_hub's HTTP client, whichever is installed
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


NETWORK_ERRORS = _network_errors()


def pretrained_weights_cached(model: str) -> Optional[bool]:
    """Whether timm's pretrained weights of the timm model name ``model`` are on disk (the Hugging Face cache, or
    timm's download cache for weights hosted at a URL); None when timm names no source to check.

    Args:
        model: A timm model name, with or without its pretrained tag (``resnet50.a1_in1k``).
    """
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model)
    except (RuntimeError, ValueError, KeyError):
        return None
    if cfg is None:
        return None
    if cfg.file or cfg.state_dict is not None:
        return True
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin",
                                                                    "open_clip_model.safetensors",
                                                                    "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str) for name in names)
    if cfg.url:
        from timm.models._hub import check_cached_file

        return bool(check_cached_file(cfg.url))
    return None


def _hub_unreachable(endpoint: str) -> Optional[str]:
    """Why a TCP connection to the Hub's host fails (one try, a few seconds), or None (reachable, or behind a
    proxy this check cannot see through)."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=5).close()
    except OSError as err:
        return f"the Hub ({endpoint}) is unreachable ({err.strerror or type(err).__name__})"
    return None


def _check_pretrained_weights(args) -> None:
    """``--pretrained`` with weights not cached, offline (``HF_HUB_OFFLINE``) or with the Hub unreachable: fail now
    (before the data, without the download's retries), naming --no-pretrained."""
    from huggingface_hub import constants

    if not args.pretrained or args.model.startswith(("hf-hub:", "local-dir:")):
        return
    if pretrained_weights_cached(args.model) is not False:
        return
    if constants.is_offline_mode():
        raise ValueError(offline_weights_message(args.model, "HF_HUB_OFFLINE is set"))
    from timm.models import get_pretrained_cfg

    if get_pretrained_cfg(args.model).hf_hub_id:
        why = _hub_unreachable(constants.ENDPOINT)
        if why:
            raise ValueError(offline_weights_message(args.model, why))


def check_args(args: argparse.Namespace) -> None:
    """The checks that need no data: loss, model and tracker names, a push's token and endpoint.

    Args:
        args: Parsed arguments.

    Raises:
        ValueError: naming the flag and what was expected.
    """
    if not args.dataset:
        raise ValueError("no dataset: pass --dataset NAME_OR_PATH, or a config that sets it (-c FILE.yaml; the demo "
                         "is -c recipes/configs/demo.yaml)")
    get_loss_class(args.loss)  # unknown loss: the registry's message, with the closest name
    if args.feature_backbone and not timm.is_model(args.feature_backbone):
        raise ValueError(f"--feature-backbone {args.feature_backbone!r} is not a timm model name")
    if args.model.startswith(("hf-hub:", "local-dir:")):
        parse_checkpoint(args.model)
    elif not timm.is_model(args.model):
        close = timm.list_models(f"*{args.model.split('.')[0][:6]}*")[:8]
        raise ValueError(f"unknown timm model {args.model!r}; similar names: {close}")
    if args.train_mode != "linear_fixed_features":  # images for sure (features datasets need no backbone)
        _check_pretrained_weights(args)
    if args.log_with:
        module = TRACKER_MODULES.get(args.log_with)
        if module is None:
            raise ValueError(f"--log-with {args.log_with!r} is not an accelerate tracker; known: {sorted(TRACKER_MODULES)}")
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"--log-with {args.log_with}: the package {module!r} is not installed "
                             f"(pip install {module}), so nothing would be logged")
    if args.push_to_hub:
        from ..hub import check_push_access

        check_push_access(args.push_to_hub, repo_type="model")
    options = parse_dataset_options(args.dataset_option)
    from ..data import is_dataset

    if is_dataset(args.dataset):  # a registered builder: its own options only (cache_dir is the loader's)
        check_dataset_options(args.dataset, {k: v for k, v in options.items() if k != "cache_dir"},
                              reserved={"root": "--data-dir", "seed": "--observed-seed"})


def thread_count_of_run(threads: Any, local_processes: int) -> int:
    """The CPU threads of each process for ``--threads``: the number given; ``auto``: ``OMP_NUM_THREADS`` when set
    (``accelerate launch`` sets 1), else torch's default divided by the processes on this machine, at least 1.

    Args:
        threads: ``"auto"`` or an integer > 0.
        local_processes: Processes of the run on this machine.
    """
    if threads != "auto":
        return int(threads)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, TORCH_DEFAULT_THREADS // max(1, local_processes))


def epochs_horizon(settings) -> Optional[str]:
    """Why the number of epochs is part of what a run computes (so more epochs cannot extend it), or None.

    Args:
        settings: The run's settings (or parsed arguments).
    """
    if settings.sched != "none":
        return f"--sched {settings.sched} spreads its learning rates over --epochs"
    if "num_epochs" in loss_parameters(settings.loss):
        return f"--loss {settings.loss} takes the number of epochs (num_epochs) when it is built"
    return None


def _expected_num_pos(args, data: RunData) -> Tuple[Optional[float], Optional[str]]:
    """k of EPR/ROLE-like losses: the flag, else the benchmark's value, else clean validation labels."""
    if args.expected_num_pos is not None:
        return float(args.expected_num_pos), "flag"
    from ..data import get_dataset_info, is_dataset

    if is_dataset(args.dataset) and get_dataset_info(args.dataset).expected_num_pos is not None:
        return float(get_dataset_info(args.dataset).expected_num_pos), "benchmark"
    k = estimate_expected_num_pos(data.val_full)
    return (k, "estimated from the clean validation labels") if k is not None else (None, None)


def _load_into_probe(probe: torch.nn.Module, source: str) -> None:
    """Check that a saved loss state fits a loss built on the meta device (names, shapes, values)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        load_loss_state(probe, source)


def _init_loss_state(args, probe: torch.nn.Module) -> Tuple[Optional[str], Optional[str]]:
    """Where the loss state starts from (``--init-loss-state``), checked against the loss's shapes now."""
    choice = args.init_loss_state
    if choice in (None, "", "none"):
        return None, "loss state: fresh (--init-loss-state none)"
    if choice != "auto":
        try:
            _load_into_probe(probe, choice)
        except ValueError as err:
            raise ValueError(f"--init-loss-state {choice}: {err}") from err
        return choice, f"loss state: loaded from {choice}"
    if not args.model.startswith(("hf-hub:", "local-dir:")) or not args.pretrained:
        return None, None
    source = parse_checkpoint(args.model)
    if source.file("loss_state.safetensors", required=False) is None:
        return None, f"loss state: fresh ({args.model} holds no loss_state.safetensors)"
    try:
        _load_into_probe(probe, args.model)
    except ValueError as err:
        return None, f"loss state: fresh, the one in {args.model} does not fit ({err})"
    return args.model, f"loss state: loaded from {args.model} (--init-loss-state none to start fresh)"


def _phases(args) -> Tuple[PhaseSettings, ...]:
    main_mode = "linear" if args.train_mode == "linear_fixed_features" else "end_to_end"
    main = PhaseSettings("main", main_mode, args.output_dir, args.epochs, args.lr, args.batch_size,
                         args.head_lr_mult, args.resume)
    if args.train_mode != "linear_init":
        return (main,)
    shared = args.linear_phase_dir is not None
    phase_dir = args.linear_phase_dir or os.path.join(args.output_dir, "linear_phase")
    linear = PhaseSettings("linear_phase", "linear", phase_dir, args.linear_epochs, args.linear_lr,
                           args.linear_batch_size, 1.0, args.resume or shared)
    return linear, main


def resolve_settings(args: argparse.Namespace, data: RunData, num_processes: int = 1) -> "RunSettings":
    """Every check that needs the data, then the frozen settings of the run.

    Args:
        args: Parsed arguments (checked by :func:`check_args`).
        data: The loaded data.
        num_processes: Processes of the run (the global batch is split over them).

    Returns:
        The :class:`RunSettings`.

    Raises:
        ValueError: naming the flag and what was expected.
    """
    loss_cls = get_loss_class(args.loss)
    if args.model.startswith(("hf-hub:", "local-dir:")) and args.pretrained:
        check_checkpoint_classes(read_model_config(args.model), data.class_names, f"--model {args.model}")
    targets = "full" if getattr(loss_cls, "target_encoding", "observed") == "multi_hot" else "observed"
    if targets == "full" and data.train_full is None:
        raise ValueError(f"--loss {args.loss} trains on full labels, but the training labels of {args.dataset!r} are "
                         "observed labels only (single positives or partial labels, no full labels); use a dataset "
                         "with full labels, or '--loss an' (its single-positive equivalent)")
    val_set_variant = "observed" if data.val_full is None else args.val_set_variant  # no full labels: observed
    if args.train_mode == "linear_fixed_features" and data.kind == "image":  # the frozen backbone's weights
        _check_pretrained_weights(args)
    if args.train_mode != "linear_fixed_features" and data.kind != "image":
        raise ValueError(f"--train-mode {args.train_mode} needs images, but {args.dataset!r} holds features; use "
                         "--train-mode linear_fixed_features")
    if (args.cl or args.boostlu) and args.train_mode == "linear_fixed_features":
        raise ValueError("--cl and --boostlu change the network: use them with end_to_end or linear_init")
    phases = _phases(args)
    options = loss_options(args)
    k, k_source = None, None
    k_for = [f"--loss {args.loss}"] if "expected_num_pos" in loss_parameters(args.loss) else []
    if args.teacher and rule_takes_k(args.pseudo_label_rule, args.pseudo_label_kwargs):
        k_for.append(f"--pseudo-label-rule {args.pseudo_label_rule}")
    if k_for:  # k reaches every consumer: the loss and the pseudo-label rule alike
        k, k_source = _expected_num_pos(args, data)
        if k is None:
            raise ValueError(f"{' and '.join(k_for)} need(s) k, the expected number of positives per image: "
                             f"{args.dataset!r} is not a benchmark with a known k and has no clean validation labels "
                             "to estimate it from; pass --expected-num-pos")
    pseudo = resolve_pseudo_label_settings(args.loss, args.teacher, args.pseudo_label_rule, args.pseudo_label_kwargs,
                                           k, options)
    if pseudo is not None:
        options.update(pseudo.loss_weights)  # every pseudo-label the rule emits gets a loss term
    with torch.device("meta"):  # builds nothing: checks the loss's options, gives its state's shapes
        probe = build_loss(args.loss, data.num_classes, data.num_train, None, k, phases[0].epochs, None,
                           options=options)
    if trainable_state_parameters(probe):  # a label estimator: its optimizer must go with --opt
        estimator_optimizer(args.estimator_optimizer, data.num_train * data.num_classes, args.opt, args.weight_decay)
    source, note = _init_loss_state(args, probe)
    flags = {flag.dest: getattr(args, flag.dest) for flag in FLAGS}
    flags["expected_num_pos"] = k
    flags["val_set_variant"] = val_set_variant
    settings = RunSettings(
        **flags, config=getattr(args, "config", None), expected_num_pos_source=k_source,
        dataset_options=parse_dataset_options(args.dataset_option), loss_options=options, targets=targets,
        init_loss_state_source=source, init_loss_state_note=note, phases=phases, num_processes=num_processes,
        pseudo_labels=pseudo)
    if phases[0].name == "linear_phase":
        shared = {k: v for k, v in settings.to_config().items()
                  if k not in ("lr", "batch_size", "epochs", "head_lr_mult", "output_dir")}
        phases = (dataclasses.replace(phases[0], config=shared), phases[1])
        settings = dataclasses.replace(settings, phases=phases)
    return settings
