#!/usr/bin/env python
"""Train a timm model with a single-positive multi-label loss, following Cole et al.'s protocol (CVPR 2021).

    accelerate launch recipes/train.py                                   # the demo: recipes/configs/demo.yaml
    accelerate launch recipes/train.py -c recipes/configs/demo.yaml --epochs 1 --output-dir output/demo_1epoch
    accelerate launch recipes/train.py -c recipes/configs/voc2012_role_end_to_end.yaml --data-dir /data/voc
    accelerate launch recipes/train.py --dataset my_images --loss em --model resnet50 --output-dir runs/em

This script owns the run, and there is one: :func:`run`. It reads top to bottom:

1. flags and YAML -> checks that need no data (:func:`check_args`) -> the data, loaded and checked once ->
   the settings, resolved once (:func:`resolve_settings`: every check before any training);
2. the run folder: checked, locked, ``config.yaml`` written; the teacher's pseudo-labels, computed once;
3. each phase: :func:`train_linear` (a linear head on fixed features; the loop below) or
   :func:`train_end_to_end` (the whole network; the loop below): model, loss, optimizer, scheduler, then for
   every epoch train, validate, checkpoint; the best epoch restored and scored on test;
4. the finished run: plot, exported model, ``results.json`` (written last: a run with results is usable),
   then the push to the Hub.

A single run is ``run([args])``. ``--search`` (:func:`run_search`) trains every grid point with the same
:func:`run`; in ``linear_fixed_features`` mode the waiting points that differ only in the learning rate are
handed to one :func:`run` call, whose linear loop trains their heads on the same batches (one data pass per
epoch, each point in its own run folder, the numbers of each point those of training it alone). A config's
``losses`` list runs one run per loss and compares them (the demo does).

Train modes: ``linear_fixed_features``, ``end_to_end`` and ``linear_init`` (the linear mode with its own
``--linear-*`` settings, then fine-tuning from its best head with the loss state handed over).
The run folder (``--output-dir``) holds config.yaml, metrics.jsonl, results.json, val_map.png,
``model/`` (a stock timm model, or a LinearProbe for features, plus loss_state.safetensors) and
``checkpoints/``. ``--batch-size`` is the global batch, split over processes. Epochs count from 1.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from spl_losses.checkpoints import load_loss_state
from spl_losses.data.options import parse_dataset_options
from spl_losses.hub import write_model_card
from spl_losses.training.builders import (attach_estimator_optimizer, build_optimizer, build_run_loss,
                                          build_scheduler, copy_linear_head, create_model, hand_off_loss_state,
                                          param_groups, run_estimator_optimizer, timm_model_of,
                                          trainable_state_parameters)
from spl_losses.training.cli import run_cli
from spl_losses.training.evaluation import predict_loader
from spl_losses.training.features import run_features
from spl_losses.training.flags import flag_defaults, parse_args
from spl_losses.training.images import ImagePipeline, apply_device_options, contiguous_parameters, flip_images
from spl_losses.training.linear import (build_linear_optimizers, new_linear_head, predict_linear,
                                        train_head_group_epoch)
from spl_losses.training.parallel import (LinearStep, ShardedBatchSampler, TrainStep, check_process_shares,
                                          check_sync_bn, epoch_flip_mask, epoch_permutation, sync_batchnorm)
from spl_losses.training.phase_book import PhaseBook, PhaseOutcome, TrainingDiverged
from spl_losses.training.pseudo_labels import teacher_pseudo_labels
from spl_losses.training.run_data import RunData, load_data
from spl_losses.training.run_dir import (IDENTITY_IGNORED, RunDir, export_model, plot_val_map, read_json, read_jsonl,
                                         write_json)
from spl_losses.training.settings import (RunSettings, check_args, epochs_horizon, resolve_settings,
                                          thread_count_of_run)
from spl_losses.training.study import REFERENCE_GRID, SearchStudy, group_key, select_winner

#: Why a run has no test metrics: its dataset's test split has no full labels.
NO_CLEAN_TEST = "no clean test: the test split has no full labels, so no test metrics are computed"
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.yaml")
#: The one setting the runs trained together by one linear loop may differ in (besides their folders).
GROUPED_KEY = "lr"


def make_accelerator(args) -> Accelerator:
    """The run's ``Accelerator``: precision, trackers, gradient accumulation; batches split over processes and
    copied to the device asynchronously (from page-locked memory on CUDA)."""
    return Accelerator(mixed_precision=args.mixed_precision, log_with=args.log_with,
                       project_dir=args.output_dir if args.log_with else None,
                       gradient_accumulation_steps=args.grad_accum_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True))


def describe(accelerator: Accelerator, group: Sequence[RunSettings], data: RunData) -> None:
    """What runs where, printed once on the main process."""
    settings = group[0]
    sizes = ", ".join(f"{s} {data.split_size(s):,}" for s in ("train", "validation", "test"))
    accelerator.print(f"{settings.dataset}: {data.num_classes} classes, {sizes} ({data.kind})")
    lrs = f"lr {', '.join(str(s.lr) for s in group)} trained together" if len(group) > 1 else f"lr {settings.lr}"
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device} "
                      f"({torch.get_num_threads()} CPU thread(s) each), mixed precision "
                      f"{accelerator.mixed_precision}; global batch {settings.batch_size}, {lrs}, "
                      f"loss {settings.loss}, {settings.train_mode} -> {', '.join(s.output_dir for s in group)}")
    if settings.expected_num_pos is not None:
        accelerator.print(f"k (expected positives per image) = {settings.expected_num_pos:.3f} "
                          f"({settings.expected_num_pos_source})")
    if settings.init_loss_state_note:
        accelerator.print(settings.init_loss_state_note)
    labels = data.labels_summary()
    origin = {"given": "given by the dataset", "simulated": "simulated single positives",
              "stored": "stored with the dataset"}[data.labels_origin]
    accelerator.print(f"training labels: observed labels {origin}, "
                      f"{labels['positives_per_image']:.2f} observed positive(s) and {labels['negatives_per_image']:.2f} "
                      "observed negative(s) per image")
    if data.val_full is None:
        accelerator.print("validation: observed labels (the dataset has no full validation labels: Cole et al.'s "
                          "'observed' variant, unobserved entries counted as negatives)")
    if data.test_full is None:
        accelerator.print(f"test: {NO_CLEAN_TEST}")


def run_facts(settings: RunSettings, data: RunData) -> Dict[str, Any]:
    """What a run's results record besides its metrics (``labels``: which kind of labels it trained on)."""
    labels = data.labels_summary(rule=settings.dataset_options.get("observed_sampling"), seed=settings.observed_seed)
    return {"dataset": settings.dataset, "model": settings.model, "loss": settings.loss,
            "train_mode": settings.train_mode, "label_names": list(data.class_names),
            "observed_seed": settings.observed_seed, "expected_num_pos": settings.expected_num_pos,
            "seed": settings.seed, "num_processes": settings.num_processes,
            "num_threads": torch.get_num_threads(), "labels": labels,
            **({"test_note": NO_CLEAN_TEST} if data.test_full is None else {})}


def validation_labels(settings: RunSettings, data: RunData) -> torch.Tensor:
    """Clean (full) or observed validation labels, by ``--val-set-variant`` (observed: the observed positives,
    every other entry, observed negatives included, counted as negative)."""
    return data.val_full if settings.val_set_variant == "clean" else (data.val_observed > 0).float()


def _map(value: Optional[float], width: int = 0) -> str:
    """A mAP for the log: two decimals, or ``-`` where there is none (no clean test)."""
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def training_targets(settings: RunSettings, data: RunData) -> torch.Tensor:
    """The (N, C) training targets: full labels for the full-label losses, else the observed labels."""
    return data.train_full if settings.targets == "full" else data.train_observed


def start_loss_state(loss: torch.nn.Module, settings: RunSettings, checkpoint: Optional[str],
                     handoff: Optional[PhaseOutcome]) -> None:
    """Start the loss state once: a resumed checkpoint wins (loaded later), else the previous phase, else
    ``--init-loss-state``."""
    if checkpoint is None and handoff is not None:
        hand_off_loss_state(handoff.loss, loss)
    elif checkpoint is None and settings.init_loss_state_source:
        load_loss_state(loss, settings.init_loss_state_source)


# ------------------------------------------------------------------------------------------ the linear loop
@dataclasses.dataclass
class LinearHead:
    """One run's head in the linear loop: its settings, head, loss, optimizers, schedule and bookkeeping."""

    settings: RunSettings
    head: torch.nn.Linear
    loss: torch.nn.Module
    book: PhaseBook
    optimizers: list
    scheduler: Any
    model: Optional[torch.nn.Module]
    running: bool = True


def train_linear(accelerator: Accelerator, group: Sequence[RunSettings], data: RunData,
                 phase_index: int = 0) -> List[PhaseOutcome]:
    """The linear loop: heads on fixed features (replicated on every process: no data is split), one head per
    run of ``group`` (runs equal but for the learning rate), all trained on the same batches.

    Args:
        accelerator: The run's ``Accelerator``.
        group: The runs' settings (one for a single run).
        data: The runs' data.
        phase_index: Which of the runs' phases (``linear_init``: 0, the linear phase).

    Returns:
        Each run's :class:`PhaseOutcome` (results None: stopped, resume later).
    """
    first, show = group[0], group[0].progress and accelerator.is_main_process
    phase = first.phases[phase_index]
    accelerator.free_memory()  # forget an earlier phase's prepared objects
    heads: List[LinearHead] = []
    feats = None
    for settings in group:
        point_phase = settings.phases[phase_index]
        if len(group) > 1:  # named by its folder in the log
            name = os.path.basename(os.path.normpath(point_phase.output_dir))
            point_phase = dataclasses.replace(point_phase, name=name)
        set_seed(settings.seed)
        model = create_model(settings, data.num_classes) if data.kind == "image" else None
        if feats is None:  # the same frozen features for every head
            feats = run_features(accelerator, settings, data, model, phase.batch_size)
        head = new_linear_head(settings.seed, feats["train"].shape[1], data.num_classes, model)
        # each head's own Accelerator: its checkpoints hold its objects only, so a point continues alone
        own = Accelerator(mixed_precision=accelerator.mixed_precision,
                          gradient_accumulation_steps=accelerator.gradient_accumulation_steps)
        estimator = run_estimator_optimizer(settings, data, own.device)
        loss_fn = build_run_loss(settings, data, point_phase.epochs, sparse=estimator != "adam", check_inputs=False)
        book = PhaseBook(accelerator, settings, point_phase, data.fingerprints, LinearStep(head, loss_fn),
                         checkpoint_accelerator=own)
        start_loss_state(loss_fn, settings, book.resume_from, None)
        own.prepare_model(book.module, evaluation_mode=True)
        optimizers = [own.prepare_optimizer(o)
                      for o in build_linear_optimizers(settings, point_phase.lr, head, loss_fn, estimator)]
        scheduler = build_scheduler(optimizers[0], settings.sched, point_phase.epochs,
                                    -(-data.num_train // point_phase.batch_size), settings.warmup_epochs,
                                    settings.warmup_lr, settings.min_lr, settings.decay_epochs, settings.decay_rate)
        book.begin()
        heads.append(LinearHead(settings, head, loss_fn, book, optimizers, scheduler, model,
                                running=len(book.epochs_to_run) > 0))
    device = accelerator.device
    x_train, x_val, x_test = (feats[s].to(device) for s in ("train", "validation", "test"))
    y_train = training_targets(first, data).to(device)
    val_labels = validation_labels(first, data)
    autocast = accelerator.autocast if accelerator.mixed_precision != "no" else None
    steps_per_epoch = -(-data.num_train // phase.batch_size)
    start_epoch = min((h.book.epochs_done + 1 for h in heads if h.running), default=phase.epochs + 1)
    for epoch in tqdm(range(start_epoch, phase.epochs + 1), desc=f"{phase.name} epochs", disable=not show):
        active = [i for i, h in enumerate(heads) if h.running and h.book.epochs_done == epoch - 1]
        if not active:  # heads resumed from later checkpoints wait for the others to catch up
            continue
        start = time.perf_counter()
        for i in active:
            heads[i].loss.set_epoch(epoch - 1)
        order = epoch_permutation(data.num_train, first.seed, epoch - 1).to(device)
        train_losses = train_head_group_epoch(
            [h.head for h in heads], [h.loss for h in heads], [h.optimizers for h in heads], x_train, y_train, order,
            phase.batch_size, active=active, schedulers=[h.scheduler for h in heads],
            first_update=(epoch - 1) * steps_per_epoch, autocast=autocast)
        val_scores = {}
        for i in active:
            if heads[i].loss.predictions_due:
                heads[i].loss.update_from_predictions(torch.sigmoid(predict_linear(heads[i].head, x_train)))
            val_scores[i] = predict_linear(heads[i].head, x_val).cpu()
        seconds = time.perf_counter() - start  # the epoch of every head trained in it
        for i in active:
            heads[i].running = heads[i].book.end_epoch(epoch, train_losses[i], val_scores[i], val_labels, seconds)
    outcomes = []
    for h in heads:
        if not h.book.finished or h.book.failure:  # failure: non-finite before any good epoch
            outcomes.append(PhaseOutcome(results=None, failure=h.book.failure))
            continue
        h.book.restore_best()
        results = h.book.results(predict_linear(h.head, x_test).cpu(), data.test_full, run_facts(h.settings, data))
        if h.model is not None:
            copy_linear_head(h.head.cpu(), timm_model_of(contiguous_parameters(h.model)))
        outcomes.append(PhaseOutcome(results=results, loss=h.loss.cpu(), model=h.model, head=h.head.cpu(),
                                     in_features=x_test.shape[1]))
    return outcomes


# ---------------------------------------------------------------------------------------- the end-to-end loop
def train_end_to_end(accelerator: Accelerator, settings: RunSettings, data: RunData, phase,
                     handoff: Optional[PhaseOutcome] = None) -> PhaseOutcome:
    """The whole network (and the contrastive term with ``--cl``), each process training its share of every
    global batch.

    Args:
        accelerator: The run's ``Accelerator``.
        settings: The run's settings.
        data: The run's data.
        phase: The phase's settings.
        handoff: linear_init: the linear phase's outcome (its head and loss state start this phase).
    """
    device, show = accelerator.device, settings.progress and accelerator.is_main_process
    accelerator.free_memory()
    set_seed(settings.seed)
    model = create_model(settings, data.num_classes)
    model = sync_batchnorm(model, settings.sync_bn, accelerator.num_processes, accelerator.is_main_process)
    estimator = run_estimator_optimizer(settings, data, device)
    loss_fn = build_run_loss(settings, data, phase.epochs, sparse=estimator != "adam", check_inputs=False)
    pipeline = ImagePipeline.for_run(accelerator, settings, timm_model_of(model))
    accelerator.print(pipeline.summary(accelerator.device))
    apply_device_options(model, settings.channels_last, settings.compile, settings.compile_mode)
    contrastive = two_views = None
    if settings.cl:
        from timm.data import resolve_model_data_config

        from spl_losses.losses.contrastive import ContrastiveAuxiliary
        from spl_losses.transforms import create_two_view_transform

        contrastive = ContrastiveAuxiliary.from_model(model, cl_coef=settings.cl_coef,
                                                      supervised=settings.cl_supervised)
        two_views = create_two_view_transform(resolve_model_data_config(timm_model_of(model)),
                                              input_size=settings.image_size)
    step = TrainStep(model, loss_fn, contrastive)
    book = PhaseBook(accelerator, settings, phase, data.fingerprints, step)
    if handoff is not None and book.resume_from is None:
        copy_linear_head(handoff.head, timm_model_of(model))
    start_loss_state(loss_fn, settings, book.resume_from, handoff)
    splits, fingerprints = data.splits, data.fingerprints
    eval_bs = accelerator.num_processes * max(-(-phase.batch_size // accelerator.num_processes), 2)  # split evenly
    # each process's share of every global batch (the last one too): P processes train one process's batches
    shares = ShardedBatchSampler(data.num_train, phase.batch_size, settings.seed, accelerator.process_index,
                                 accelerator.num_processes)
    check_process_shares(model, data.num_train, phase.batch_size, accelerator.num_processes)
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
    attach_estimator_optimizer(loss_fn, optimizer)  # the estimator catches its rows up through its optimizer
    step, optimizer, val_loader, test_loader, train_eval_loader = accelerator.prepare(step, optimizer, *loaders)
    steps_per_epoch = -(-len(train_loader) // settings.grad_accum_steps)
    scheduler = build_scheduler(optimizer, settings.sched, phase.epochs, steps_per_epoch, settings.warmup_epochs,
                                settings.warmup_lr, settings.min_lr, settings.decay_epochs, settings.decay_rate)
    unwrapped = accelerator.unwrap_model(step)
    book.begin()
    targets = training_targets(settings, data).to(device)
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
        if not book.end_epoch(epoch, train_loss, val_scores, validation_labels(settings, data),
                              time.perf_counter() - start):
            break
    if not book.finished or book.failure:  # failure: non-finite before any good epoch
        return PhaseOutcome(results=None, failure=book.failure)
    book.restore_best()
    test_scores = predict_loader(unwrapped.model, test_loader, accelerator, data.split_size("test"),
                                 show_progress=show, description="test", preprocess=pipeline.normalize)
    results = book.results(test_scores, data.test_full, run_facts(settings, data))
    return PhaseOutcome(results=results, loss=unwrapped.loss.cpu(), model=contiguous_parameters(unwrapped.model.cpu()))


# ------------------------------------------------------------------------------------------------- the run
def train_phases(accelerator: Accelerator, group: Sequence[RunSettings], data: RunData) -> List[PhaseOutcome]:
    """Train the phases of the runs in order: each run's last phase's outcome."""
    if len(group) > 1:  # runs differing only in lr (linear mode): their heads in one linear loop
        return train_linear(accelerator, group, data)
    settings, outcome = group[0], None
    for index, phase in enumerate(settings.phases):
        if phase.name == "main":
            outcome = (train_linear(accelerator, [settings], data, index)[0] if phase.mode == "linear" else
                       train_end_to_end(accelerator, settings, data, phase, handoff=outcome))
            continue
        # linear_init's linear phase: a run folder of its own, reused when finished (a search shares it)
        phase_dir = RunDir(phase.output_dir)
        phase_dir.check(phase.config, flag_defaults(), resume=True)
        with phase_dir.held(accelerator, wait=True):
            if accelerator.is_main_process:
                phase_dir.write_config(phase.config)
            outcome = train_linear(accelerator, [settings], data, index)[0]
            if outcome.finished and accelerator.is_main_process:
                plot_val_map(phase_dir.file("val_map.png"), {phase.name: read_jsonl(phase_dir.file("metrics.jsonl"))},
                             title=f"{settings.dataset}: {settings.loss} ({phase.name}, {phase.mode})",
                             best={phase.name: outcome.results["best_epoch"]})
                write_json(phase_dir.file("results.json"), outcome.results)
        if not outcome.finished:
            break
    return [outcome]


def finish_run(accelerator: Accelerator, settings: RunSettings, data: RunData, outcome: PhaseOutcome,
               pseudo_counts: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A finished run's plot, exported model and ``results.json`` (last: a run with results is complete), then
    its push."""
    run_dir = RunDir(settings.output_dir)
    results = dict(outcome.results)
    if pseudo_counts is not None:
        results["pseudo_labels"] = pseudo_counts
    if accelerator.is_main_process:
        plot_val_map(run_dir.file("val_map.png"), {"main": read_jsonl(run_dir.file("metrics.jsonl"))},
                     title=f"{dataset_name(settings.dataset)}: {settings.loss} ({settings.train_mode})",
                     best={"main": results["best_epoch"]})
        export_model(run_dir.path, settings, data.class_names, outcome)
        write_json(run_dir.file("results.json"), results)
        if not settings.push_to_hub:  # the card a push would publish (a push writes it again, with its name)
            write_model_card(run_dir.path, local_repo_id(settings.output_dir))
    accelerator.wait_for_everyone()
    test = f"test mAP {_map(results['test_map'])}" if results["test_map"] is not None else NO_CLEAN_TEST
    accelerator.print(f"best epoch {results['best_epoch']}: val mAP {results['val_map']:.2f}, {test} -> {run_dir.path}")
    return results


def dataset_name(dataset: str) -> str:
    """A dataset's name for a plot's title: a registered name, or a folder's base name (not its full path)."""
    return os.path.basename(os.path.normpath(dataset)) if os.path.exists(dataset) else dataset


def local_repo_id(output_dir: str) -> str:
    """The Hub name a local model card shows until the run is pushed: ``YOUR_ORG/<run folder name>``."""
    return f"YOUR_ORG/{os.path.basename(os.path.normpath(os.path.abspath(output_dir)))}"


def check_group(group: Sequence[RunSettings]) -> None:
    """Refuse runs trained together that differ in more than the learning rate and the run folder."""
    ignored = set(IDENTITY_IGNORED) | {GROUPED_KEY}
    reference = {k: v for k, v in group[0].to_config().items() if k not in ignored}
    for settings in group[1:]:
        config = {k: v for k, v in settings.to_config().items() if k not in ignored}
        diff = sorted(k for k in set(reference) | set(config) if reference.get(k) != config.get(k))
        if diff:
            raise ValueError(f"runs trained as one group may differ only in {GROUPED_KEY}; {settings.output_dir} "
                             f"differs from {group[0].output_dir} in {diff}")
    if len(group) > 1 and group[0].train_mode != "linear_fixed_features":
        raise ValueError(f"only linear_fixed_features runs train together, got --train-mode {group[0].train_mode}")


def run(point_args: Sequence[argparse.Namespace], accelerator: Optional[Accelerator] = None
        ) -> List[Optional[Dict[str, Any]]]:
    """The run: one (``[args]``), or several ``linear_fixed_features`` runs equal but for ``--lr`` and
    ``--output-dir`` whose heads one linear loop trains together. Each run folder is checked and locked as a
    run's own; a finished run's results are reused (with ``--resume``).

    Args:
        point_args: Each run's parsed arguments.
        accelerator: The ``Accelerator`` (default: made from the arguments).

    Returns:
        Each run's results, or None for a run stopped by ``--stop-after`` (continue it with ``--resume``).
    """
    first = point_args[0]
    check_args(first)  # cheap checks first: building a dataset can take long
    accelerator = accelerator or make_accelerator(first)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    torch.set_num_threads(thread_count_of_run(first.threads, local_processes))  # the same under every launcher
    check_sync_bn(first.sync_bn, accelerator.device)
    for args in point_args:
        RunDir(args.output_dir).check_writable()
    data = load_data(first.dataset, first.data_dir, parse_dataset_options(first.dataset_option), first.observed_seed,
                     force_rebuild=first.rebuild_dataset)
    group = [resolve_settings(args, data, accelerator.num_processes) for args in point_args]
    check_group(group)
    results: List[Optional[Dict[str, Any]]] = [None] * len(group)
    todo = []
    extended = set()
    for i, settings in enumerate(group):
        run_dir = RunDir(settings.output_dir)
        state = run_dir.check(settings.to_config(), flag_defaults(), settings.resume, horizon=epochs_horizon(settings))
        if state == "unclaimed":
            accelerator.print(f"{run_dir.path}: reused (the run recorded in it finished no epoch)")
        if state == "extend":
            accelerator.print(f"{run_dir.path}: continued from epoch {run_dir.trained_epochs} to {settings.epochs}")
            extended.add(i)
            todo.append(i)
        elif not run_dir.finished:
            todo.append(i)
        elif not settings.resume:
            raise ValueError(f"--output-dir {run_dir.path} already holds this finished run; pass --resume to reuse "
                             "its results, or choose another --output-dir to train again")
        else:
            accelerator.print(f"{run_dir.path}: finished earlier, results reused")
            results[i] = read_json(run_dir.file("results.json"))
    if not todo:
        return results
    training = [group[i] for i in todo]
    with contextlib.ExitStack() as locks:
        for i in todo:
            settings, run_dir = group[i], RunDir(group[i].output_dir)
            locks.enter_context(run_dir.held(accelerator))
            if accelerator.is_main_process:
                if i in extended:
                    run_dir.start_extension()
                run_dir.write_config(settings.to_config())
        settings = training[0]
        if settings.log_with:
            config = settings.to_config()
            accelerator.init_trackers("logs", config={k: v for k, v in config.items()
                                                      if isinstance(v, (int, float, str, bool))})
        describe(accelerator, training, data)
        pseudo, counts = teacher_pseudo_labels(accelerator, settings.pseudo_labels, settings.teacher_kwargs,
                                               settings.teacher_cache_dir, settings.dataset, data)
        data = dataclasses.replace(data, train_pseudo=pseudo)
        try:
            outcomes = train_phases(accelerator, training, data)
        except KeyboardInterrupt:  # every finished epoch is checkpointed: say how to continue
            command = " ".join(["accelerate launch recipes/train.py", *sys.argv[1:]])
            accelerator.print(f"\ninterrupted: the epochs finished so far are saved in "
                              f"{settings.output_dir}/checkpoints; continue with\n"
                              f"  {command}{'' if settings.resume else ' --resume'}")
            raise
        for i, outcome in zip(todo, outcomes):
            if outcome.finished:
                results[i] = finish_run(accelerator, group[i], data, outcome, counts)
        if settings.log_with and results[todo[0]] is not None:
            if results[todo[0]]["test_map"] is not None:
                accelerator.log({"test/map": results[todo[0]]["test_map"],
                                 "test/map_skip_empty": results[todo[0]]["test_map_skip_empty"]})
            accelerator.end_training()
    failed = {i: outcome.failure for i, outcome in zip(todo, outcomes) if outcome.failure}
    if any(results[i] is None and i not in failed for i in todo):
        accelerator.print(f"stopped after --stop-after {first.stop_after} epoch(s); continue with --resume")
    for i in todo:
        if results[i] is not None and group[i].push_to_hub and accelerator.is_main_process:
            from spl_losses.hub import push_run_to_hub

            url = push_run_to_hub(group[i].output_dir, group[i].push_to_hub, private=group[i].private)
            accelerator.print(f"pushed: {url}")
    if failed:  # the others finished above
        raise TrainingDiverged(failed, results)
    return results


def train(args, accelerator: Optional[Accelerator] = None) -> Optional[Dict[str, Any]]:
    """One run into ``args.output_dir``: :func:`run` of one; its results (None when stopped by ``--stop-after``)."""
    return run([args], accelerator)[0]


# -------------------------------------------------------------------------------------------------- search
def search_point_args(args, params: Dict[str, Any], name: str):
    """The arguments of one search point: its values, its run folder ``OUTPUT_DIR/name``, resumable."""
    point_args = argparse.Namespace(**{**vars(args), **params, "output_dir": os.path.join(args.output_dir, name),
                                       "search": False, "resume": True})
    if args.train_mode == "linear_init" and not args.linear_phase_dir \
            and not any(k.startswith("linear_") for k in params):
        point_args.linear_phase_dir = os.path.join(args.output_dir, "linear_phase")  # trained once, shared
    return point_args


def can_train_together(args, accelerator: Accelerator) -> bool:
    """Whether a search's points that differ only in the learning rate go to one :func:`run` (one linear loop):
    linear mode on fixed features, one process (the study lives on it), no tracker (a point logs to its own
    folder only)."""
    return args.train_mode == "linear_fixed_features" and accelerator.num_processes == 1 and not args.log_with


def train_points(args, accelerator: Accelerator, study: Optional[SearchStudy], taken) -> bool:
    """Train taken search points with :func:`run`, those of one :func:`group_key` in one call; False when
    ``--stop-after`` stopped them. Every taken point's run folder is locked before any trains (a RUNNING trial
    whose folder is free counts as abandoned); a failed group's points are told failed."""
    with contextlib.ExitStack() as locks:
        for trial, (_, name) in taken:
            accelerator.print(f"[search] {name}")
            locks.enter_context(RunDir(os.path.join(args.output_dir, name)).held(accelerator))
            if study:
                study.mark_locked(trial, os.path.join(args.output_dir, name))
        groups: Dict[Any, list] = {}
        for trial, (params, name) in taken:
            groups.setdefault(group_key(params), []).append((trial, search_point_args(args, params, name)))
        for group in groups.values():
            failures: Dict[int, str] = {}
            try:
                results = run([point_args for _, point_args in group], accelerator)
            except TrainingDiverged as err:  # failed for good (never retried); the group's other points finished
                results, failures = err.results, err.failures
                for index, reason in failures.items():
                    accelerator.print(f"[search] failed {os.path.basename(group[index][1].output_dir)}: {reason}")
            except BaseException:
                if study:
                    for trial, _ in group:
                        study.finish(trial, None)
                raise
            if study:  # told while the locks are held: a RUNNING trial whose owner is gone means a dead worker
                for index, ((trial, _), result) in enumerate(zip(group, results)):
                    if index in failures:
                        study.fail(trial, failures[index])
                    else:
                        study.finish(trial, result)
            if any(result is None for index, result in enumerate(results) if index not in failures):
                return False
    return True


def run_search(args, grid: Optional[Dict[str, List[Any]]] = None, space: Optional[Dict[str, Any]] = None):
    """A hyperparameter search in a shared Optuna study: this worker trains waiting points with :func:`run` until
    none is left (start the same command elsewhere to add workers); the winner by validation mAP."""
    accelerator = make_accelerator(args)
    searched = set(space or {}) if args.search_sampler == "tpe" else set(grid or REFERENCE_GRID)
    base_config = {k: v for k, v in vars(args).items()  # what every point shares: the study refuses another
                   if k not in IDENTITY_IGNORED and k not in searched and not k.startswith("search")}
    study = SearchStudy(args.output_dir, args.search_storage, args.search_study, grid=grid or REFERENCE_GRID,
                        space=space, sampler=args.search_sampler, num_trials=args.search_trials, seed=args.seed,
                        allowed=list(flag_defaults()), base_config=base_config) if accelerator.is_main_process else None
    together = (study is not None and study.sampler == "grid" and args.search_group_size != 1
                and can_train_together(args, accelerator))
    while True:
        if together:  # the waiting points of one batch size, in one linear loop
            taken = study.next_trials(group_key, limit=args.search_group_size)
        else:  # one point at a time, the same point on every process
            trial, point = study.next_trial() if study else (None, None)
            point = broadcast_object_list([point])[0] if accelerator.num_processes > 1 else point
            taken = [(trial, point)] if point is not None else []
        if not taken:
            break
        if not train_points(args, accelerator, study, taken):
            return {}  # --stop-after
    if not accelerator.is_main_process:
        return {}
    runs, failed = study.summaries(), study.failed()
    if not study.done:
        accelerator.print(f"[search] {len(runs)} point(s) finished; the others are being trained by other workers")
        return {"runs": runs, "failed": failed}
    for point in failed:
        accelerator.print(f"[search] {point['name']} failed (not retried): {point['reason']}")
    if not runs:
        raise ValueError(f"every point of the search in {args.output_dir} failed: {failed[0]['reason']}")
    winner = select_winner(runs)
    summary = {"grid": grid or REFERENCE_GRID, "space": space, "runs": runs, "failed": failed, "winner": winner}
    write_json(os.path.join(args.output_dir, "search.json"), summary)
    plot_val_map(os.path.join(args.output_dir, "val_map.png"),
                 {r["name"]: read_jsonl(os.path.join(r.get("run_dir") or os.path.join(args.output_dir, r["name"]),
                                                     "metrics.jsonl")) for r in runs},
                 title=f"{dataset_name(args.dataset)}: {args.loss} search",
                 best={r["name"]: r["best_epoch"] for r in runs})
    accelerator.print(f"\n{'search point':<28} {'val mAP':>8} {'test mAP':>9} {'best ep':>8}")
    for r in runs:
        accelerator.print(f"{r['name']:<28} {r['val_map']:8.2f} {_map(r['test_map'], 9)} {r['best_epoch']:8d}")
    accelerator.print(f"[search] winner {winner['name']}: val mAP {winner['val_map']:.2f}, "
                      f"test mAP {_map(winner['test_map'])}")
    return summary


# ------------------------------------------------------------------------------------------ loss comparison
def compare_losses(args, losses: List[str]) -> List[Dict[str, Any]]:
    """One run per loss into ``OUTPUT_DIR/LOSS`` (finished runs reused), a table and one comparison plot."""
    accelerator = make_accelerator(args)
    rows = []
    for loss in losses:
        loss_args = argparse.Namespace(**{**vars(args), "loss": loss,
                                          "output_dir": os.path.join(args.output_dir, loss)})
        finished = os.path.join(loss_args.output_dir, "results.json")
        before = os.path.getmtime(finished) if os.path.isfile(finished) else None
        loss_args.resume = loss_args.resume or before is not None
        start = time.perf_counter()
        results = train(loss_args, accelerator)
        if results is None:
            return rows
        seconds = time.perf_counter() - start
        if before is not None and os.path.getmtime(finished) == before:  # reused: the time it trained for
            records = read_jsonl(os.path.join(loss_args.output_dir, "metrics.jsonl"))
            seconds = sum(r.get("seconds") or 0.0 for r in records)
        rows.append({"loss": loss, "val_map": results["val_map"], "test_map": results["test_map"],
                     "best_epoch": results["best_epoch"], "seconds": seconds, "full_labels": loss.startswith("bce")})
    if accelerator.is_main_process:
        print_comparison(args, rows)
    return rows


def print_comparison(args, rows: List[Dict[str, Any]]) -> None:
    """The comparison table, its plot, and what to do next."""
    plot_val_map(os.path.join(args.output_dir, "val_map.png"),
                 {r["loss"]: read_jsonl(os.path.join(args.output_dir, r["loss"], "metrics.jsonl")) for r in rows},
                 title=f"{dataset_name(args.dataset)}: validation mAP per loss",
                 best={r["loss"]: r["best_epoch"] for r in rows})
    print(f"\n{args.dataset} ({args.model}, {args.train_mode}, {args.epochs} epochs): test mAP of the best "
          "validation epoch")
    print(f"{'loss':<10} {'labels':<16} {'val mAP':>8} {'test mAP':>9} {'best ep':>8} {'seconds':>8}")
    for row in rows:
        kind = "full (bound)" if row["full_labels"] else "single positive"
        print(f"{row['loss']:<10} {kind:<16} {row['val_map']:8.2f} {_map(row['test_map'], 9)} {row['best_epoch']:8d} "
              f"{row['seconds']:8.1f}")
    best = max((r for r in rows if not r["full_labels"]), key=lambda r: r["val_map"], default=rows[0])
    print(f"\nNext: the models are in {args.output_dir}/LOSS/model (timm.create_model('local-dir:"
          f"{args.output_dir}/{best['loss']}/model', pretrained=True)); the plot is {args.output_dir}/val_map.png.")
    print("Your own images: list them in a CSV (path,labels with labels separated by '|'), then\n"
          "  accelerate launch recipes/train.py --dataset multilabel_files --dataset-option listing=my.csv "
          "--loss " f"{best['loss']} --output-dir runs/mine")


def main(argv: Optional[List[str]] = None):
    """Parse the command line and run: one run, a loss comparison (config key ``losses``) or a search."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parse_args(argv or ["-c", DEMO_CONFIG])
    if args.search:
        return run_search(args, extra.get("search_grid"), extra.get("search_space"))
    if extra.get("losses") and not any(a == "--loss" or a.startswith("--loss=") for a in argv):
        return compare_losses(args, extra["losses"])
    return train(args)


if __name__ == "__main__":
    run_cli(main)
