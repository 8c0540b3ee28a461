"""The two kinds of training phase: a linear head on fixed features, and the whole network end to end.

Each phase builds its loss once, starts the loss state once (from the previous phase, a published
checkpoint, or a resumed checkpoint), trains with a validation pass after every epoch, restores the
best epoch and scores test, and returns one typed :class:`PhaseOutcome`.
"""
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from ..checkpoints import load_loss_state
from .data import RunData
from .evaluation import predict_loader
from .features import default_cache_dir, extract_or_load_features, feature_cache_path, weights_fingerprint
from .device_options import apply_device_options, contiguous_parameters
from .image_data import flip_images
from .input_pipeline import ImagePipeline
from .linear_head import build_linear_optimizers, new_linear_head, predict_linear, train_linear_epoch
from .loss_factory import build_run_loss, hand_off_loss_state, run_estimator_optimizer, trainable_state_parameters
from .modeling import copy_linear_head, create_model, timm_model_of
from .optim import build_optimizer, build_scheduler, param_groups
from .phase_book import PhaseBook
from .sampling import ShardedBatchSampler, epoch_flip_mask, epoch_permutation
from .train_step import LinearStep, TrainStep

__all__ = ["PhaseOutcome", "train_linear_phase", "train_end_to_end_phase"]


@dataclass
class PhaseOutcome:
    """What a phase leaves: its results (None when it stopped before its last epoch: resume it) and, at the
    best epoch, the trained network and loss.

    Args:
        results: The phase's results (best epoch, validation and test metrics), or None.
        loss: The loss, with its state at the best epoch (CPU).
        model: The network (a timm model, or BoostLU around one), or None for a features dataset.
        head: The linear head of a linear phase, else None.
        in_features: The head's input size (linear phase).
    """

    results: Optional[Dict[str, Any]]
    loss: Optional[nn.Module] = None
    model: Optional[nn.Module] = None
    head: Optional[nn.Linear] = None
    in_features: Optional[int] = None

    @property
    def finished(self) -> bool:
        return self.results is not None


def _run_facts(settings, data: RunData) -> Dict[str, Any]:
    return {"dataset": settings.dataset, "model": settings.model, "loss": settings.loss,
            "train_mode": settings.train_mode, "label_names": list(data.class_names),
            "observed_seed": settings.observed_seed, "expected_num_pos": settings.expected_num_pos,
            "seed": settings.seed, "num_processes": settings.num_processes}


def _start_loss_state(loss: nn.Module, settings, book: PhaseBook, handoff: Optional[PhaseOutcome]) -> Optional[str]:
    """Start the loss state once: a resumed checkpoint wins, else the previous phase, else --init-loss-state."""
    checkpoint = book.resume_point()
    if checkpoint is None and handoff is not None:
        hand_off_loss_state(handoff.loss, loss)
    elif checkpoint is None and settings.init_loss_state_source:
        load_loss_state(loss, settings.init_loss_state_source)
    return checkpoint


def _check_shares(model: nn.Module, num_examples: int, batch_size: int, num_processes: int) -> None:
    """Refuse, before training, an epoch whose last global batch leaves a process no rows for a BatchNorm model."""
    last = num_examples % batch_size
    if 0 < last < num_processes and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"the last global batch of every epoch has {last} row(s) ({num_examples} training examples, "
                         f"batch size {batch_size}), fewer than the {num_processes} processes: a process would get "
                         "no rows, which BatchNorm cannot train on; choose a batch size or process count that leaves "
                         "at least one row per process")


def _val_labels(settings, data: RunData) -> torch.Tensor:
    return data.val_full if settings.val_set_variant == "clean" else data.val_observed


def _features(accelerator, settings, data: RunData, model: Optional[nn.Module], batch_size: int):
    """The (N, D) features of every split: the dataset's column, or the frozen backbone's (cached)."""
    if model is None:
        return {s: torch.from_numpy(np.asarray(data.splits[s].with_format("numpy")["features"], dtype=np.float32))
                for s in ("train", "validation", "test")}
    backbone = apply_device_options(timm_model_of(model), channels_last=settings.channels_last)
    pipeline = ImagePipeline.for_run(accelerator, settings, backbone)
    accelerator.print(pipeline.summary(accelerator.device))
    weights = weights_fingerprint(backbone)
    feats = {}
    for split in ("train", "validation", "test"):
        path = feature_cache_path(settings.cache_dir or default_cache_dir(), settings.model, weights,
                                  settings.image_size, data.fingerprints[split], precision=settings.mixed_precision)
        feats[split] = extract_or_load_features(accelerator, backbone, data.splits[split], pipeline, path,
                                                batch_size=max(batch_size, 64 * accelerator.num_processes),
                                                fingerprint=data.fingerprints[split], split_name=split,
                                                show_progress=settings.progress, description=f"features {split}")
    return feats


def train_linear_phase(accelerator, settings, data: RunData, phase) -> PhaseOutcome:
    """A linear head trained on whole feature tensors (replicated on every process: no data is split).

    Args:
        accelerator: The ``accelerate.Accelerator``.
        settings: The run's settings.
        data: The run's data.
        phase: The phase's settings.
    """
    device, show = accelerator.device, settings.progress and accelerator.is_main_process
    accelerator.free_memory()  # forget an earlier phase's prepared objects
    set_seed(settings.seed)
    model = create_model(settings, data.num_classes) if data.kind == "image" else None
    feats = _features(accelerator, settings, data, model, phase.batch_size)
    in_features = feats["train"].shape[1]
    head = new_linear_head(settings.seed, in_features, data.num_classes, model)
    estimator = run_estimator_optimizer(settings, data, device)
    loss_fn = build_run_loss(settings, data, phase.epochs, sparse=estimator != "adam")
    step = LinearStep(head, loss_fn)
    book = PhaseBook(accelerator, settings, phase, data.fingerprints, step)
    checkpoint = _start_loss_state(loss_fn, settings, book, None)
    step = accelerator.prepare_model(step, evaluation_mode=True)
    optimizers = [accelerator.prepare_optimizer(o) for o in
                  build_linear_optimizers(settings, phase.lr, head, loss_fn, estimator)]
    steps_per_epoch = -(-data.num_train // phase.batch_size)
    scheduler = build_scheduler(optimizers[0], settings.sched, phase.epochs, steps_per_epoch, settings.warmup_epochs,
                                settings.warmup_lr, settings.min_lr, settings.decay_epochs, settings.decay_rate)
    book.begin(checkpoint)
    x_train, x_val, x_test = (feats[s].to(device) for s in ("train", "validation", "test"))
    y_train = (data.train_full if settings.targets == "full" else data.train_observed).to(device)
    autocast = accelerator.autocast if settings.mixed_precision != "no" else None
    for epoch in tqdm(book.epochs_to_run, desc=f"{phase.name} epochs", disable=not show):
        start = time.perf_counter()
        loss_fn.set_epoch(epoch - 1)
        order = epoch_permutation(data.num_train, settings.seed, epoch - 1).to(device)
        train_loss = train_linear_epoch(head, loss_fn, optimizers, x_train, y_train, order, phase.batch_size,
                                        autocast=autocast, scheduler=scheduler,
                                        first_update=(epoch - 1) * steps_per_epoch)
        if loss_fn.predictions_due:
            loss_fn.update_from_predictions(torch.sigmoid(predict_linear(head, x_train)))
        if not book.end_epoch(epoch, train_loss, predict_linear(head, x_val).cpu(), _val_labels(settings, data),
                              time.perf_counter() - start):
            break
    if not book.finished:
        return PhaseOutcome(results=None)
    book.restore_best()
    results = book.results(predict_linear(head, x_test).cpu(), data.test_full, _run_facts(settings, data))
    if model is not None:
        copy_linear_head(head.cpu(), timm_model_of(contiguous_parameters(model)))
    return PhaseOutcome(results=results, loss=loss_fn.cpu(), model=model, head=head.cpu(), in_features=in_features)


def train_end_to_end_phase(accelerator, settings, data: RunData, phase,
                           handoff: Optional[PhaseOutcome] = None) -> PhaseOutcome:
    """The whole network (and the contrastive term with ``--cl``), data split over processes.

    Args:
        accelerator: The ``accelerate.Accelerator``.
        settings: The run's settings.
        data: The run's data.
        phase: The phase's settings.
        handoff: linear_init: the linear phase's outcome (its head and loss state start this phase).
    """
    device, show = accelerator.device, settings.progress and accelerator.is_main_process
    accelerator.free_memory()
    set_seed(settings.seed)
    model = create_model(settings, data.num_classes)
    estimator = run_estimator_optimizer(settings, data, device)
    loss_fn = build_run_loss(settings, data, phase.epochs, sparse=estimator != "adam")
    pipeline = ImagePipeline.for_run(accelerator, settings, timm_model_of(model))
    accelerator.print(pipeline.summary(accelerator.device))
    apply_device_options(model, settings.channels_last, settings.compile, settings.compile_mode)
    contrastive = two_views = None
    if settings.cl:
        from timm.data import resolve_model_data_config

        from ..losses.contrastive import ContrastiveAuxiliary
        from ..transforms import create_two_view_transform

        contrastive = ContrastiveAuxiliary.from_model(model, cl_coef=settings.cl_coef, supervised=settings.cl_supervised)
        two_views = create_two_view_transform(resolve_model_data_config(timm_model_of(model)),
                                              input_size=settings.image_size)
    step = TrainStep(model, loss_fn, contrastive)
    book = PhaseBook(accelerator, settings, phase, data.fingerprints, step)
    if handoff is not None and book.resume_point() is None:
        copy_linear_head(handoff.head, timm_model_of(model))
    checkpoint = _start_loss_state(loss_fn, settings, book, handoff)
    splits, fingerprints = data.splits, data.fingerprints
    eval_bs = accelerator.num_processes * max(-(-phase.batch_size // accelerator.num_processes), 2)  # split evenly
    # each process's share of every global batch (the last one too): P processes train one process's batches
    shares = ShardedBatchSampler(data.num_train, phase.batch_size, settings.seed, accelerator.process_index,
                                 accelerator.num_processes)
    _check_shares(model, data.num_train, phase.batch_size, accelerator.num_processes)
    train_loader = pipeline.loader(splits["train"], phase.batch_size, fingerprints["train"], batch_sampler=shares,
                                   two_view_transform=two_views, split_name="train")
    loaders = [pipeline.loader(splits[s], eval_bs, fingerprints[s], split_name=s)
               for s in ("validation", "test", "train")]
    classifier = timm_model_of(model).get_classifier()
    head_ids = {id(p) for p in classifier.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    backbone += list(contrastive.parameters()) if contrastive is not None else []
    groups = param_groups(phase.lr, backbone=backbone, head=list(classifier.parameters()),
                          loss_state=trainable_state_parameters(loss_fn), head_lr_mult=phase.head_lr_mult,
                          state_lr_mult=settings.lr_mult)
    optimizer = build_optimizer(groups, settings.opt, settings.momentum, settings.weight_decay, estimator)
    step, optimizer, val_loader, test_loader, train_eval_loader = accelerator.prepare(step, optimizer, *loaders)
    steps_per_epoch = -(-len(train_loader) // settings.grad_accum_steps)
    scheduler = build_scheduler(optimizer, settings.sched, phase.epochs, steps_per_epoch, settings.warmup_epochs,
                                settings.warmup_lr, settings.min_lr, settings.decay_epochs, settings.decay_rate)
    unwrapped = accelerator.unwrap_model(step)
    book.begin(checkpoint)
    targets = (data.train_full if settings.targets == "full" else data.train_observed).to(device)
    updates = book.epochs_done * steps_per_epoch
    for epoch in book.epochs_to_run:
        start = time.perf_counter()
        shares.set_epoch(epoch - 1)  # the order is a function of (seed, epoch)
        unwrapped.loss.set_epoch(epoch - 1)
        flips = epoch_flip_mask(data.num_train, settings.seed, epoch - 1).to(device)
        step.train()
        total, batches = torch.zeros((), device=device), 0
        for i, batch in enumerate(tqdm(train_loader, desc=f"{phase.name} epoch {epoch}", leave=False,
                                       disable=not show)):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            index = batch["index"]
            views = (batch["view1"], batch["view2"]) if contrastive is not None else (None, None)
            # gradients are synchronised and applied every grad_accum_steps batches and at the epoch's end
            update = (i + 1) % settings.grad_accum_steps == 0 or i + 1 == len(train_loader)
            with contextlib.nullcontext() if update else accelerator.no_sync(step):
                images = pipeline.normalize(flip_images(batch["pixel_values"], flips[index]))
                loss_value = step(images, targets[index], index, *views)
                accelerator.backward(loss_value)
            total += loss_value.detach()
            batches += 1
            if not update:
                continue
            unwrapped.sync_estimator_gradients()  # a row-sparse estimator's rows, exchanged outside DDP
            if settings.clip_grad is not None:
                accelerator.clip_grad_norm_(step.parameters(), settings.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=updates)
            if settings.log_with and updates % settings.log_interval == 0:
                book.log_step(updates, float(loss_value.detach()), optimizer.param_groups[0]["lr"])
        train_loss = float(accelerator.reduce(total, "mean")) / max(batches, 1)
        if unwrapped.loss.predictions_due:
            probs = torch.sigmoid(predict_loader(unwrapped.model, train_eval_loader, accelerator, data.num_train,
                                                 show_progress=show, description="train predictions",
                                                 preprocess=pipeline.normalize))
            unwrapped.loss.update_from_predictions(probs.to(device))
        val_scores = predict_loader(unwrapped.model, val_loader, accelerator, data.split_size("validation"),
                                    show_progress=show, description="validation", preprocess=pipeline.normalize)
        if not book.end_epoch(epoch, train_loss, val_scores, _val_labels(settings, data), time.perf_counter() - start):
            break
    if not book.finished:
        return PhaseOutcome(results=None)
    book.restore_best()
    test_scores = predict_loader(unwrapped.model, test_loader, accelerator, data.split_size("test"),
                                 show_progress=show, description="test", preprocess=pipeline.normalize)
    results = book.results(test_scores, data.test_full, _run_facts(settings, data))
    return PhaseOutcome(results=results, loss=unwrapped.loss.cpu(),
                        model=contiguous_parameters(unwrapped.model.cpu()))
