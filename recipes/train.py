#!/usr/bin/env python
"""Train a timm model with a single-positive multi-label loss, following Cole et al.'s protocol.

    accelerate launch recipes/train.py -c recipes/configs/voc2012_role_end_to_end.yaml --data-dir /data/voc
    python recipes/train.py --dataset digits_mosaic --model resnet10t --no-pretrained ...
    python recipes/train.py            # the demo: digits_mosaic, a small CNN from scratch, loss comparison

Train modes (SPEC §5): ``linear_fixed_features`` (a linear head on cached pooled features),
``end_to_end`` (the whole network) and ``linear_init`` (the linear mode with fixed hyperparameters
``--linear-*``, then end-to-end fine-tuning from its best head, with the loss state, e.g. ROLE's
estimator, handed over). Every epoch is validated; the best epoch by validation mAP is kept and
scored on test. ``--search`` runs the batch-size x lr grid, one run after another, resumable.

Outputs in ``--output-dir``: config.yaml, metrics.jsonl, results.json, val_map.png, model/ (timm
export or LinearProbe, plus loss_state.safetensors), checkpoints/ (accelerate save_state + the recipe's
bookkeeping and best-epoch weights, last two epochs kept).
``--batch-size`` is the global batch, split over processes (accelerate ``split_batches``).
"""
import argparse
import os
import shutil
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

import timm
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from spl_losses import get_loss_class
from spl_losses.training.arguments import (LOSS_OPTION_FLAGS, RUN_IDENTITY_IGNORED, build_parser, parse_args)
from spl_losses.training.evaluation import evaluate_scores, predict_loader
from spl_losses.training.features import (default_cache_dir, extract_or_load_features, feature_cache_path,
                                          weights_fingerprint)
from spl_losses.training.image_data import flip_images, loader_for_split, protocol_data_config, protocol_transform
from spl_losses.training.label_matrices import (check_index_column, dense_labels, estimate_expected_num_pos,
                                                has_full_labels, label_names)
from spl_losses.training.linear_head import predict_linear, train_linear_epoch
from spl_losses.training.loss_factory import build_loss, loss_takes, trainable_state_parameters
from spl_losses.training.model_state import copy_linear_head, load_tensor_state, tensor_state
from spl_losses.training.optim import build_optimizers, param_groups
from spl_losses.training.progress import BestEpochTracker
from spl_losses.training.run_files import (MetricsLog, check_output_dir, plot_val_map, read_json, write_config,
                                           write_json)
from spl_losses.training.sampling import EpochPermutationSampler, epoch_flip_mask, epoch_permutation
from spl_losses.training.search import REFERENCE_GRID, grid_points, is_finished, run_name, select_winner
from spl_losses.training.train_step import TrainStep

# The default single-positive method (EPR: best validation mAP on this demo among role, an_ls, em, ll_r, epr,
# gr), the assume-negative baseline and the full-label upper bound.
DEMO_LOSSES = ("epr", "an", "bce")
DEMO_FLAGS = ["--dataset", "digits_mosaic", "--dataset-kwargs", "{num_train: 1600, num_validation: 400, num_test: 400}",
              "--model", "resnet10t", "--pretrained", "false",
              "--model-kwargs", "{channels: [32, 64, 128, 256], stem_width: 16}",
              "--image-size", "32", "--train-mode", "end_to_end", "--epochs", "10", "--batch-size", "32",
              "--lr", "1e-3"]
DEMO_OUTPUT = os.path.join("output", "demo")


# --------------------------------------------------------------------------------------------- data
def load_data(args) -> SimpleNamespace:
    """Load the dataset and build every label matrix; all checks happen here, before training."""
    from spl_losses.data import load_spml_dataset

    kwargs = dict(args.dataset_kwargs or {})
    ds = load_spml_dataset(args.dataset, data_dir=args.data_dir, seed=args.observed_seed, **kwargs)
    for split in ("train", "validation", "test"):
        if split not in ds:
            raise ValueError(f"dataset {args.dataset!r} has no {split!r} split (splits: {list(ds)})")
        check_index_column(ds[split], split)
        if split != "test" and "observed_labels" not in ds[split].column_names:
            raise ValueError(f"dataset {args.dataset!r}: split {split!r} has no 'observed_labels' column "
                             "(the single positive per row); build it with spl_losses.data")
    names = label_names(ds["train"])
    num_classes = len(names)
    train, val, test = ds["train"], ds["validation"], ds["test"]
    kind = "features" if "features" in train.column_names else "image"
    if kind == "image" and "image" not in train.column_names:
        raise ValueError(f"dataset {args.dataset!r} has neither an 'image' nor a 'features' column")
    if "labels" not in test.column_names:
        raise ValueError(f"dataset {args.dataset!r}: the test split needs full 'labels' to be scored")
    data = SimpleNamespace(
        ds=ds, names=names, num_classes=num_classes, kind=kind, num_train=len(train),
        train_observed=dense_labels(train, "observed_labels", num_classes),
        train_full=dense_labels(train, "labels", num_classes) if has_full_labels(train) else None,
        val_full=dense_labels(val, "labels", num_classes) if has_full_labels(val) else None,
        val_observed=dense_labels(val, "observed_labels", num_classes),
        test_full=dense_labels(test, "labels", num_classes),
    )
    return data


def dataset_expected_num_pos(args, data) -> Tuple[Optional[float], str]:
    """k of EPR/ROLE-like losses: the flag, else the benchmark's value, else clean validation labels."""
    if args.expected_num_pos is not None:
        return float(args.expected_num_pos), "flag"
    from spl_losses.data import get_dataset_info, is_dataset

    if is_dataset(args.dataset):
        k = get_dataset_info(args.dataset).expected_num_pos
        if k is not None:
            return float(k), "benchmark"
    k = estimate_expected_num_pos(data.val_full)
    return (k, "estimated from clean validation labels") if k is not None else (None, "missing")


CHECKPOINT_PREFIXES = ("hf-hub:", "local-dir:")


def is_checkpoint_name(model: str) -> bool:
    """``hf-hub:ORG/NAME`` or ``local-dir:PATH``: a published checkpoint that timm resolves."""
    return model.startswith(CHECKPOINT_PREFIXES)


def check_names(args) -> None:
    """The loss and model names, before any data is loaded."""
    get_loss_class(args.loss)  # unknown loss: the registry's message
    if args.feature_backbone and not timm.is_model(args.feature_backbone):
        raise ValueError(f"--feature-backbone {args.feature_backbone!r} is not a timm model name")
    if is_checkpoint_name(args.model):
        if args.model.startswith("local-dir:"):
            folder = args.model[len("local-dir:"):]
            if not os.path.isfile(os.path.join(folder, "config.json")):
                raise ValueError(f"--model {args.model}: no config.json in {folder!r} (expected a model folder "
                                 "saved by timm.models.save_for_hf, e.g. OUTPUT_DIR/model of recipes/train.py)")
        return
    if not timm.is_model(args.model):
        close = timm.list_models(f"*{args.model.split('.')[0][:6]}*")[:8]
        raise ValueError(f"unknown timm model {args.model!r}; similar names: {close}")


def check_checkpoint_classes(args, data) -> None:
    """``--model hf-hub:/local-dir:`` with ``--pretrained``: the checkpoint's class count must be the dataset's
    (timm would otherwise silently drop the trained classifier)."""
    if not (is_checkpoint_name(args.model) and args.pretrained):
        return
    from spl_losses.hub import read_model_config

    config = read_model_config(args.model)
    classes = config.get("num_classes")
    if classes is not None and int(classes) != data.num_classes:
        raise ValueError(f"--model {args.model} predicts {classes} classes but {args.dataset!r} has "
                         f"{data.num_classes}; continue training on a dataset with the checkpoint's classes, or "
                         "start from a timm backbone name")
    names = config.get("label_names")
    if isinstance(names, list) and list(names) != list(data.names):
        print(f"note: --model {args.model} has the same class count as {args.dataset!r} but other class names")


def resolve_init_loss_state(args, probe_loss) -> Tuple[Optional[str], str]:
    """Where the loss state starts from: ``(source or None, a line for the log)``.

    An explicit ``--init-loss-state SOURCE`` must fit ``probe_loss`` (ValueError naming the shapes);
    ``auto`` loads ``--model``'s state only when it is a checkpoint with ``--pretrained`` and the state fits.
    """
    from spl_losses.hub import has_loss_state, load_loss_state

    choice = args.init_loss_state
    if choice in (None, "", "none"):
        return None, "loss state: fresh (--init-loss-state none)"
    if choice != "auto":
        try:
            load_loss_state(probe_loss, choice)
        except ValueError as err:
            raise ValueError(f"--init-loss-state {choice}: {err}") from err
        return choice, f"loss state: loaded from {choice}"
    if not is_checkpoint_name(args.model) or not args.pretrained:
        return None, None
    if not has_loss_state(args.model):
        return None, f"loss state: fresh ({args.model} holds no loss_state.safetensors)"
    try:
        load_loss_state(probe_loss, args.model)
    except ValueError as err:
        return None, f"loss state: fresh, the one in {args.model} does not fit ({err})"
    return args.model, f"loss state: loaded from {args.model} (--init-loss-state none to start fresh)"


def validate(args, data) -> Dict[str, Any]:
    """Every check that needs the data, before any work: returns the resolved loss settings."""
    loss_cls = get_loss_class(args.loss)
    check_checkpoint_classes(args, data)
    multi_hot = getattr(loss_cls, "target_encoding", "observed") == "multi_hot"
    if multi_hot and data.train_full is None:
        raise ValueError(f"--loss {args.loss} trains on full labels, but the training labels of {args.dataset!r} are "
                         "single positives; use a dataset with full labels, or '--loss an' (its single-positive "
                         "equivalent)")
    if args.val_set_variant == "clean" and data.val_full is None:
        raise ValueError(f"--val-set-variant clean needs full validation labels, which {args.dataset!r} lacks; "
                         "use --val-set-variant observed")
    if args.train_mode != "linear_fixed_features" and data.kind != "image":
        raise ValueError(f"--train-mode {args.train_mode} needs images, but {args.dataset!r} holds features; "
                         "use --train-mode linear_fixed_features")
    if (args.cl or args.boostlu) and args.train_mode == "linear_fixed_features":
        raise ValueError("--cl and --boostlu change the network and are only meaningful with end_to_end or linear_init")
    if args.sparse_estimator and args.train_mode == "end_to_end":
        raise ValueError("--sparse-estimator applies to linear training (linear_fixed_features and the linear phase "
                         "of linear_init); end_to_end trains the estimator with dense gradients")
    if args.batch_size <= 0 or args.epochs <= 0:
        raise ValueError(f"--batch-size and --epochs must be positive, got {args.batch_size} and {args.epochs}")
    options = {k: getattr(args, k) for k in LOSS_OPTION_FLAGS if getattr(args, k) is not None}
    options.update(args.loss_kwargs or {})
    k, k_source = None, None
    if loss_takes(args.loss, "expected_num_pos"):
        k, k_source = dataset_expected_num_pos(args, data)
        if k is None:
            raise ValueError(f"--loss {args.loss} needs k, the expected number of positives per image: "
                             f"{args.dataset!r} is not a benchmark with a known k and has no clean validation "
                             "labels to estimate it from; pass --expected-num-pos")
    # build once on CPU to surface bad options now (and whether a loss state to start from fits it)
    probe_loss = build_loss(args.loss, data.num_classes, data.num_train, data.train_observed, k, args.epochs,
                            args.seed, options=options)
    state_source, state_note = resolve_init_loss_state(args, probe_loss)
    return {"options": options, "expected_num_pos": k, "expected_num_pos_source": k_source, "multi_hot": multi_hot,
            "init_loss_state": state_source, "init_loss_state_note": state_note}


def init_loss_state(loss_fn: nn.Module, settings: Dict[str, Any]) -> None:
    """Load the loss state chosen by :func:`resolve_init_loss_state` (before training; ``--resume`` then
    restores its checkpoint over it)."""
    if settings.get("init_loss_state"):
        from spl_losses.hub import load_loss_state

        load_loss_state(loss_fn, settings["init_loss_state"])


def check_batch_split(accelerator, *batch_sizes: int) -> None:
    for bs in batch_sizes:
        if bs % accelerator.num_processes:
            raise ValueError(f"batch size {bs} must be divisible by the number of processes "
                             f"({accelerator.num_processes}); it is the global batch")


# --------------------------------------------------------------------------------------------- model
def create_model(args, num_classes: int) -> nn.Module:
    kwargs = dict(args.model_kwargs or {})
    if args.boostlu:
        from spl_losses.models import create_boostlu_model

        return create_boostlu_model(args.model, alpha=args.boostlu_alpha, pretrained=args.pretrained,
                                    num_classes=num_classes, **kwargs)
    return timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes, **kwargs)


def timm_model_of(model: nn.Module) -> nn.Module:
    """The stock timm model inside a BoostLU wrapper, or the model itself."""
    from spl_losses.models import BoostLU

    return model.model if isinstance(model, BoostLU) else model


def predictions_due(loss_fn: nn.Module) -> bool:
    """Whether the loss wants the training-set predictions after the epoch just finished (the loss protocol's
    ``predictions_due``; ``needs_predictions`` for losses that predate it)."""
    return bool(getattr(loss_fn, "predictions_due", getattr(loss_fn, "needs_predictions", False)))


# --------------------------------------------------------------------------------------------- run bookkeeping
class Run:
    """Files and state of one run (or of one phase of linear_init) in ``out``."""

    def __init__(self, accelerator, args, out: str, phase: str):
        self.accelerator, self.args, self.out, self.phase = accelerator, args, out, phase
        self.tracker = BestEpochTracker()
        self.log = MetricsLog(os.path.join(out, "metrics.jsonl"))
        self.ckpt_root = os.path.join(out, "checkpoints")
        self.best: Dict[str, Dict[str, torch.Tensor]] = {}
        self.start_epoch = 0
        self.epochs_this_call = 0

    def latest_checkpoint(self) -> Optional[str]:
        if not os.path.isdir(self.ckpt_root):
            return None
        found = sorted(d for d in os.listdir(self.ckpt_root)
                       if d.startswith("epoch_") and os.path.isfile(os.path.join(self.ckpt_root, d, "recipe_state.pt")))
        return os.path.join(self.ckpt_root, found[-1]) if found else None

    def begin(self, modules: Dict[str, nn.Module], optimizers: List[torch.optim.Optimizer]) -> None:
        """Fresh start, or restore the last checkpoint with ``--resume``."""
        acc = self.accelerator
        ckpt = self.latest_checkpoint() if self.args.resume else None
        if ckpt is None:
            if acc.is_main_process:
                shutil.rmtree(self.ckpt_root, ignore_errors=True)
                os.makedirs(self.out, exist_ok=True)
                self.log.keep_epochs_before(0)
            acc.wait_for_everyone()
            return
        acc.load_state(ckpt)
        state = torch.load(os.path.join(ckpt, "recipe_state.pt"), map_location="cpu", weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.tracker.load_state_dict(state["tracker"])
        self.start_epoch = self.tracker.epochs_done
        self.best = state["best"]
        if acc.is_main_process:
            self.log.keep_epochs_before(self.start_epoch)
        acc.wait_for_everyone()
        acc.print(f"[{self.phase}] resumed from {ckpt} at epoch {self.start_epoch}")

    def end_epoch(self, epoch: int, train_loss: float, val_scores: torch.Tensor, val_labels: torch.Tensor,
                  modules: Dict[str, nn.Module], optimizers: List[torch.optim.Optimizer], seconds: float) -> bool:
        """Score validation, keep the best weights, log, checkpoint. Returns whether to stop this call."""
        acc = self.accelerator
        metrics = evaluate_scores(val_scores, val_labels, prefix="val_")
        record = {"epoch": epoch, "train_loss": train_loss, "val_map": metrics["val_map"],
                  "val_map_skip_empty": metrics["val_map_skip_empty"], "seconds": round(seconds, 3)}
        if self.tracker.update(epoch, metrics["val_map"]):
            self.best = {name: tensor_state(module) for name, module in modules.items()}
        record["best_epoch"] = self.tracker.best_epoch
        if acc.is_main_process:  # logged first: a resumed run drops records past its checkpoint
            self.log.append(record)
        ckpt = os.path.join(self.ckpt_root, f"epoch_{epoch:03d}")
        acc.save_state(ckpt, safe_serialization=False)
        if acc.is_main_process:  # recipe_state.pt, written last and atomically, marks a complete checkpoint
            tmp = os.path.join(ckpt, "recipe_state.pt.tmp")
            torch.save({"modules": {n: m.state_dict() for n, m in modules.items()},
                        "optimizers": [o.state_dict() for o in optimizers],
                        "tracker": self.tracker.state_dict(), "best": self.best}, tmp)
            os.replace(tmp, os.path.join(ckpt, "recipe_state.pt"))
            for old in sorted(os.listdir(self.ckpt_root))[:-2]:
                shutil.rmtree(os.path.join(self.ckpt_root, old), ignore_errors=True)
        acc.wait_for_everyone()
        if self.args.log_with and self.phase == "main":
            acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and v == v}, step=epoch)
        acc.print(f"[{self.phase}] epoch {epoch + 1}: train loss {train_loss:.4f}  val mAP {record['val_map']:.2f}  "
                  f"(best epoch {self.tracker.best_epoch + 1})")
        self.epochs_this_call += 1
        stop = self.args.stop_after is not None and self.epochs_this_call >= self.args.stop_after
        return stop

    def restore_best(self, modules: Dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            if name in self.best:
                module.load_state_dict(self.best[name], strict=False)

    def finish(self, test_scores: torch.Tensor, test_labels: torch.Tensor, extra: Dict[str, Any]) -> Dict[str, Any]:
        test = evaluate_scores(test_scores, test_labels)
        records = self.log.records() if self.accelerator.is_main_process else []
        results = {"best_epoch": self.tracker.best_epoch, "val_map": self.tracker.best_val_map,
                   "val_map_skip_empty": next((r["val_map_skip_empty"] for r in records
                                               if r["epoch"] == self.tracker.best_epoch), None),
                   "test_map": test["map"], "test_map_skip_empty": test["map_skip_empty"], "test_metrics": test,
                   "epochs": self.tracker.epochs_done, **extra}
        if self.accelerator.is_main_process:
            write_json(os.path.join(self.out, "results.json"), results)
            plot_val_map(os.path.join(self.out, "val_map.png"), {self.phase: records},
                         title=f"{extra.get('loss')} / {extra.get('train_mode')}")
        return results


def results_extra(args, data, settings, phase_args) -> Dict[str, Any]:
    return {"dataset": args.dataset, "model": args.model, "loss": args.loss, "train_mode": args.train_mode,
            "label_names": data.names, "observed_seed": args.observed_seed,
            "expected_num_pos": settings["expected_num_pos"], "lr": phase_args.lr,
            "batch_size": phase_args.batch_size, "seed": args.seed, "num_processes": None}


# --------------------------------------------------------------------------------------------- train modes
def train_linear(accelerator, args, data, settings, out: str, phase: str, epochs: int, lr: float,
                 batch_size: int) -> SimpleNamespace:
    """linear_fixed_features: cached pooled features, then a linear head trained on whole tensors."""
    device = accelerator.device
    show = not args.no_progress
    accelerator.free_memory()  # forget objects prepared by an earlier run (a search) so checkpoints match
    set_seed(args.seed)
    model = None
    if data.kind == "features":
        feats = {s: torch.from_numpy(np.asarray(data.ds[s].with_format("numpy")["features"], dtype=np.float32))
                 for s in ("train", "validation", "test")}
    else:
        model = create_model(args, data.num_classes)
        backbone = timm_model_of(model)
        transform = protocol_transform(backbone, args.image_size)
        cache_dir = args.cache_dir or default_cache_dir()
        weights = weights_fingerprint(backbone)
        feats = {}
        for s in ("train", "validation", "test"):
            path = feature_cache_path(cache_dir, args.model, weights, args.image_size, data.ds[s]._fingerprint,
                                      precision=args.mixed_precision)
            feats[s] = extract_or_load_features(accelerator, backbone, data.ds[s], transform, path,
                                                batch_size=max(batch_size, 64 * accelerator.num_processes),
                                                workers=args.workers, show_progress=show, description=f"features {s}")
    in_features = feats["train"].shape[1]
    set_seed(args.seed)
    head = nn.Linear(in_features, data.num_classes)
    if model is not None:  # start from the timm classifier's own initialisation
        head.load_state_dict(timm_model_of(model).get_classifier().state_dict())
    targets = (data.train_full if settings["multi_hot"] else data.train_observed)
    loss_fn = build_loss(args.loss, data.num_classes, data.num_train, data.train_observed,
                         settings["expected_num_pos"], epochs, args.seed, sparse=args.sparse_estimator,
                         options=settings["options"])
    init_loss_state(loss_fn, settings)
    head, loss_fn = head.to(device), loss_fn.to(device)
    state_params = trainable_state_parameters(loss_fn)
    sparse = args.sparse_estimator and any(getattr(m, "sparse", False) for m in loss_fn.modules())
    groups = param_groups(lr, head=list(head.parameters()), loss_state=[] if sparse else state_params,
                          head_lr_mult=1.0, state_lr_mult=args.lr_mult)
    sparse_groups = [{"params": state_params, "lr": lr * args.lr_mult}] if sparse and state_params else None
    optimizers = build_optimizers(groups, args.opt, args.momentum, args.weight_decay, sparse_groups)
    x_train, x_val, x_test = (feats[s].to(device) for s in ("train", "validation", "test"))
    y_train = targets.to(device)
    val_labels = data.val_full if args.val_set_variant == "clean" else data.val_observed
    run = Run(accelerator, args, out, phase)
    modules = {"head": head, "loss": loss_fn}
    run.begin(modules, optimizers)
    stopped = False
    for epoch in tqdm(range(run.start_epoch, epochs), desc=f"{phase} epochs", disable=not (show and accelerator.is_main_process)):
        start = time.perf_counter()
        loss_fn.set_epoch(epoch)
        order = epoch_permutation(data.num_train, args.seed, epoch).to(device)
        train_loss = train_linear_epoch(head, loss_fn, optimizers, x_train, y_train, order, batch_size,
                                        autocast=accelerator.autocast if args.mixed_precision != "no" else None)
        if predictions_due(loss_fn):
            loss_fn.update_from_predictions(torch.sigmoid(predict_linear(head, x_train)))
        val_scores = predict_linear(head, x_val).cpu()
        if run.end_epoch(epoch, train_loss, val_scores, val_labels, modules, optimizers, time.perf_counter() - start):
            stopped = epoch + 1 < epochs
            break
    if stopped:
        return SimpleNamespace(stopped=True)
    run.restore_best(modules)
    test_scores = predict_linear(head, x_test).cpu()
    results = run.finish(test_scores, data.test_full, results_extra(args, data, settings,
                                                                      SimpleNamespace(lr=lr, batch_size=batch_size)))
    if model is not None:
        copy_linear_head(head.cpu(), timm_model_of(model))
    return SimpleNamespace(stopped=False, results=results, model=model, head=head.cpu(), loss=loss_fn.cpu(),
                           in_features=in_features)


def train_end_to_end(accelerator, args, data, settings, out: str, phase: str,
                     init: Optional[SimpleNamespace] = None) -> SimpleNamespace:
    """end_to_end (and the fine-tuning phase of linear_init)."""
    device = accelerator.device
    show = not args.no_progress
    accelerator.free_memory()
    set_seed(args.seed)
    model = create_model(args, data.num_classes)
    loss_fn = build_loss(args.loss, data.num_classes, data.num_train, data.train_observed,
                         settings["expected_num_pos"], args.epochs, args.seed, options=settings["options"])
    if init is not None:  # linear_init: the linear phase's best head and loss state
        copy_linear_head(init.head, timm_model_of(model))
        init_state = tensor_state(init.loss)
        if init_state:
            load_tensor_state(loss_fn, init_state)
    else:
        init_loss_state(loss_fn, settings)
    contrastive = None
    two_views = None
    if args.cl:
        from spl_losses.losses.contrastive import ContrastiveAuxiliary
        from spl_losses.transforms import create_two_view_transform
        from timm.data import resolve_model_data_config

        contrastive = ContrastiveAuxiliary.from_model(model, cl_coef=args.cl_coef, supervised=args.cl_supervised)
        two_views = create_two_view_transform(resolve_model_data_config(timm_model_of(model)),
                                              input_size=args.image_size)
    transform = protocol_transform(timm_model_of(model), args.image_size)
    train_loader = loader_for_split(data.ds["train"], transform, args.batch_size,
                                    sampler=EpochPermutationSampler(data.num_train, args.seed),
                                    workers=args.workers, two_view_transform=two_views)
    eval_bs = max(args.batch_size, 2 * accelerator.num_processes)
    val_loader = loader_for_split(data.ds["validation"], transform, eval_bs, workers=args.workers)
    test_loader = loader_for_split(data.ds["test"], transform, eval_bs, workers=args.workers)
    train_eval_loader = loader_for_split(data.ds["train"], transform, eval_bs, workers=args.workers)

    classifier = timm_model_of(model).get_classifier()
    head_ids = {id(p) for p in classifier.parameters()}
    backbone_params = [p for p in model.parameters() if id(p) not in head_ids]
    if contrastive is not None:
        backbone_params += list(contrastive.parameters())
    groups = param_groups(args.lr, backbone=backbone_params, head=list(classifier.parameters()),
                          loss_state=trainable_state_parameters(loss_fn), head_lr_mult=args.head_lr_mult,
                          state_lr_mult=args.lr_mult)
    step_module = TrainStep(model, loss_fn, contrastive)
    (optimizer,) = build_optimizers(groups, args.opt, args.momentum, args.weight_decay)
    step_module, optimizer, train_loader, val_loader, test_loader, train_eval_loader = accelerator.prepare(
        step_module, optimizer, train_loader, val_loader, test_loader, train_eval_loader)
    unwrapped = accelerator.unwrap_model(step_module)
    targets = (data.train_full if settings["multi_hot"] else data.train_observed).to(device)
    val_labels = data.val_full if args.val_set_variant == "clean" else data.val_observed
    run = Run(accelerator, args, out, phase)
    modules = {"model": unwrapped.model, "loss": unwrapped.loss}
    run.begin(modules, [])
    stopped = False
    for epoch in range(run.start_epoch, args.epochs):
        start = time.perf_counter()
        train_loader.set_epoch(epoch)  # accelerate's loader forwards it to the sampler: order = f(seed, epoch)
        unwrapped.loss.set_epoch(epoch)
        flips = epoch_flip_mask(data.num_train, args.seed, epoch)
        step_module.train()
        total, batches = torch.zeros((), device=device), 0
        for batch in tqdm(train_loader, desc=f"{phase} epoch {epoch + 1}", leave=False,
                          disable=not (show and accelerator.is_main_process)):
            index = batch["index"]
            images = flip_images(batch["pixel_values"], flips[index.cpu()])
            views = (batch["view1"], batch["view2"]) if contrastive is not None else (None, None)
            loss_value = step_module(images, targets[index], index, *views)
            accelerator.backward(loss_value)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss_value.detach()
            batches += 1
        train_loss = float(accelerator.reduce(total, "mean")) / max(batches, 1)
        if predictions_due(unwrapped.loss):
            probs = torch.sigmoid(predict_loader(unwrapped.model, train_eval_loader, accelerator, data.num_train,
                                                 show_progress=show, description="train predictions"))
            unwrapped.loss.update_from_predictions(probs.to(device))
        val_scores = predict_loader(unwrapped.model, val_loader, accelerator, len(data.ds["validation"]),
                                    show_progress=show, description="validation")
        if run.end_epoch(epoch, train_loss, val_scores, val_labels, modules, [], time.perf_counter() - start):
            stopped = epoch + 1 < args.epochs
            break
    if stopped:
        return SimpleNamespace(stopped=True)
    run.restore_best(modules)
    test_scores = predict_loader(unwrapped.model, test_loader, accelerator, len(data.ds["test"]),
                                 show_progress=show, description="test")
    results = run.finish(test_scores, data.test_full, results_extra(args, data, settings, args))
    return SimpleNamespace(stopped=False, results=results, model=unwrapped.model.cpu(), loss=unwrapped.loss.cpu())


# --------------------------------------------------------------------------------------------- export
def export(accelerator, args, data, outcome, out: str) -> None:
    if not accelerator.is_main_process:
        return
    model_dir = os.path.join(out, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    if outcome.model is not None:
        model = timm_model_of(outcome.model)
        model_config = {"label_names": data.names}
        if args.boostlu:  # the stock timm model is saved; logits at test time were BoostLU's (alpha below)
            model_config["boostlu_alpha"] = args.boostlu_alpha
        # the training preprocessing (squash to image_size, no crop), not timm's default for the architecture
        timm.models.save_for_hf(model, model_dir, model_config=model_config, safe_serialization=True,
                                data_config=protocol_data_config(model, args.image_size))
    else:
        from spl_losses.models.linear_probe import LinearProbe, preprocessing_from_timm

        preprocessing = None
        if args.feature_backbone:  # the features came from this timm model: record what it expects
            preprocessing = preprocessing_from_timm(timm.create_model(args.feature_backbone, pretrained=False))
        probe = LinearProbe(outcome.in_features, data.num_classes, label_names=data.names,
                            backbone=args.feature_backbone, preprocessing=preprocessing)
        probe.fc.load_state_dict(outcome.head.state_dict())
        probe.save_pretrained(model_dir)
    from spl_losses.hub import save_loss_state

    save_loss_state(outcome.loss, os.path.join(model_dir, "loss_state.safetensors"))


# --------------------------------------------------------------------------------------------- one run
def resolved_config(args) -> Dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items())}


def run(args, accelerator: Optional[Accelerator] = None) -> Optional[Dict[str, Any]]:
    """Train one configuration into ``args.output_dir``; returns results (None when stopped early)."""
    accelerator = accelerator or make_accelerator(args)
    out = args.output_dir
    check_names(args)  # cheap checks first: a dataset build can take long
    if args.train_mode != "linear_fixed_features":  # the linear head trains replicated on every process
        check_batch_split(accelerator, args.batch_size)
    defaults = vars(build_parser().parse_args([]))
    check_output_dir(out, resolved_config(args), RUN_IDENTITY_IGNORED + ("expected_num_pos",), defaults)
    data = load_data(args)
    settings = validate(args, data)
    config = resolved_config(args)
    config["expected_num_pos"] = settings["expected_num_pos"]
    check_output_dir(out, config, RUN_IDENTITY_IGNORED, defaults)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_config(out, config)
    if args.log_with:
        accelerator.init_trackers("logs",
                                  config={k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))})
    if settings["init_loss_state_note"]:
        accelerator.print(settings["init_loss_state_note"])
    if settings["expected_num_pos"] is not None:
        accelerator.print(f"k (expected positives) = {settings['expected_num_pos']:.3f} "
                          f"({settings['expected_num_pos_source']})")
    if args.train_mode == "linear_fixed_features":
        outcome = train_linear(accelerator, args, data, settings, out, "main", args.epochs, args.lr, args.batch_size)
    elif args.train_mode == "end_to_end":
        outcome = train_end_to_end(accelerator, args, data, settings, out, "main")
    else:
        phase_dir = args.linear_phase_dir or os.path.join(out, "linear_phase")
        phase_args = args
        if args.linear_phase_dir:  # a shared phase: same settings (checked), continued or reused if finished
            phase_config = {k: v for k, v in config.items() if k not in ("lr", "batch_size", "epochs", "head_lr_mult")}
            check_output_dir(phase_dir, phase_config, RUN_IDENTITY_IGNORED)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_config(phase_dir, phase_config)
            phase_args = argparse.Namespace(**{**vars(args), "resume": True})
        linear = train_linear(accelerator, phase_args, data, settings, phase_dir, "linear_phase", args.linear_epochs,
                              args.linear_lr, args.linear_batch_size)
        if linear.stopped:
            return None
        outcome = train_end_to_end(accelerator, args, data, settings, out, "main", init=linear)
    if outcome.stopped:
        accelerator.print(f"stopped after --stop-after {args.stop_after} epoch(s); continue with --resume")
        return None
    outcome.results["num_processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        write_json(os.path.join(out, "results.json"), outcome.results)
    export(accelerator, args, data, outcome, out)
    accelerator.wait_for_everyone()
    if args.log_with:
        accelerator.end_training()
    accelerator.print(f"best epoch {outcome.results['best_epoch'] + 1}: val mAP {outcome.results['val_map']:.2f}, "
                      f"test mAP {outcome.results['test_map']:.2f} -> {out}")
    if args.push_to_hub and accelerator.is_main_process:
        from spl_losses.hub import push_run_to_hub

        push_run_to_hub(out, args.push_to_hub)
    return outcome.results


def make_accelerator(args) -> Accelerator:
    return Accelerator(mixed_precision=args.mixed_precision, log_with=args.log_with,
                       project_dir=args.output_dir if args.log_with else None,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


# --------------------------------------------------------------------------------------------- search
def run_search(args, extra: Dict[str, Any]) -> Dict[str, Any]:
    """The grid of SPEC §5 (or ``search_grid`` of the config), resumable; the winner by val mAP."""
    grid = extra.get("search_grid") or REFERENCE_GRID
    flags = {a.dest for a in build_parser()._actions}
    points = grid_points(grid, allowed=sorted(flags))
    accelerator = make_accelerator(args)
    summaries = []
    for point in points:
        run_dir = os.path.join(args.output_dir, run_name(point))
        run_args = argparse.Namespace(**{**vars(args), **point, "output_dir": run_dir, "search": False})
        if args.train_mode == "linear_init" and not args.linear_phase_dir and not any(k.startswith("linear_") for k in point):
            run_args.linear_phase_dir = os.path.join(args.output_dir, "linear_phase")  # fixed: trained once
        if is_finished(run_dir):
            accelerator.print(f"[search] {run_name(point)}: finished, skipped")
        else:
            accelerator.print(f"[search] {run_name(point)}")
            if run(run_args, accelerator) is None:
                return {}
        results = read_json(os.path.join(run_dir, "results.json"))
        summaries.append({"name": run_name(point), "params": point, "val_map": results["val_map"],
                          "test_map": results["test_map"], "best_epoch": results["best_epoch"]})
    winner = select_winner(summaries)
    summary = {"grid": grid, "runs": summaries, "winner": winner}
    if accelerator.is_main_process:
        from spl_losses.training.run_files import read_jsonl

        write_json(os.path.join(args.output_dir, "search.json"), summary)
        plot_val_map(os.path.join(args.output_dir, "val_map.png"),
                     {s["name"]: read_jsonl(os.path.join(args.output_dir, s["name"], "metrics.jsonl"))
                      for s in summaries}, title="search")
    accelerator.print(f"[search] winner {winner['name']}: val mAP {winner['val_map']:.2f}, test mAP {winner['test_map']:.2f}")
    return summary


# --------------------------------------------------------------------------------------------- demo
def run_demo() -> List[Dict[str, Any]]:
    """The main job: digits_mosaic, a narrow resnet10t from scratch at 32 px, single positives vs AN vs full labels."""
    rows = []
    accelerator = None
    for loss in DEMO_LOSSES:
        args, _ = parse_args(DEMO_FLAGS + ["--loss", loss, "--output-dir", os.path.join(DEMO_OUTPUT, loss),
                                          "--no-progress"])
        accelerator = accelerator or make_accelerator(args)
        start = time.perf_counter()
        results = run(args, accelerator)
        rows.append({"loss": loss, "test_map": results["test_map"], "val_map": results["val_map"],
                     "best_epoch": results["best_epoch"] + 1, "seconds": time.perf_counter() - start})
    if accelerator.is_main_process:
        print("\ndigits_mosaic demo (narrow resnet10t, from scratch, 32 px, end to end, "
              f"{args.epochs} epochs): test mAP of the best validation epoch")
        print(f"{'loss':<8} {'labels':<16} {'val mAP':>8} {'test mAP':>9} {'best ep':>8} {'seconds':>8}")
        for row in rows:
            kind = "full (bound)" if row["loss"] == "bce" else "single positive"
            print(f"{row['loss']:<8} {kind:<16} {row['val_map']:8.2f} {row['test_map']:9.2f} "
                  f"{row['best_epoch']:8d} {row['seconds']:8.1f}")
    return rows


def main(argv: Optional[List[str]] = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        return run_demo()
    args, extra = parse_args(argv)
    if args.search:
        return run_search(args, extra)
    return run(args)


if __name__ == "__main__":
    main()
