"""Linear runs that differ only in their learning rate, trained together: one pass over the features per epoch.

A search in ``linear_fixed_features`` mode hands the waiting grid points that share a batch size (all their
other settings equal) to :func:`train_linear_group`; each point keeps everything a run trained alone has: its
own run folder (``config.yaml``, ``metrics.jsonl``, ``results.json``, ``val_map.png``, ``model/``), its own
checkpoints (in the same format, so a point continues alone or in another group), its head, optimizer, loss
state, validation, best epoch and early stopping. Only the data pass is shared
(:func:`~spl_losses.training.linear_grid.train_head_group_epoch`): every point's numbers are those of
``recipes/train.py`` training it alone. A point's logged ``seconds`` is its group's epoch time.

Points that resume from checkpoints of different epochs catch up in turn: an epoch's pass trains the points
whose next epoch it is. Finished points (``results.json``) are reused, never trained again.
"""
import contextlib
import dataclasses
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from ..checkpoints import load_loss_state
from ..data.options import parse_dataset_options
from .arguments import flag_defaults
from .data import RunData, load_data
from .export import export_model
from .linear_grid import train_head_group_epoch
from .linear_head import build_linear_optimizers, new_linear_head, predict_linear
from .loss_factory import build_run_loss, run_estimator_optimizer
from .modeling import copy_linear_head, create_model, timm_model_of
from .optim import build_scheduler
from .phase_book import PhaseBook
from .phases import PhaseOutcome, _features, _run_facts, _val_labels
from .run_dir import IDENTITY_IGNORED, RunDir
from .run_files import plot_val_map, read_json, read_jsonl, write_json
from .sampling import epoch_permutation
from .settings import check_args, resolve_settings
from .train_step import LinearStep

__all__ = ["can_train_as_group", "group_key", "train_linear_group", "train_linear_group_phase"]

#: The one setting the points of a group may differ in (besides their run folders).
GROUPED_KEY = "lr"


def can_train_as_group(args, accelerator) -> bool:
    """Whether a search's points can be trained in groups: linear mode on fixed features, one process, float32,
    no tracker (each point logs to its own folder only).

    Args:
        args: The search's parsed arguments.
        accelerator: The ``accelerate.Accelerator``.
    """
    return (args.train_mode == "linear_fixed_features" and accelerator.num_processes == 1
            and accelerator.mixed_precision == "no" and not args.log_with)


def group_key(params: Mapping[str, Any]) -> Tuple:
    """What the points of one group share: a grid point's values other than the learning rate.

    Args:
        params: A grid point (flag name -> value).
    """
    return tuple((k, repr(v)) for k, v in sorted(params.items()) if k != GROUPED_KEY)


@dataclasses.dataclass
class _Point:
    """One run of a group while it trains: its settings, head, loss and bookkeeping."""

    settings: Any
    head: nn.Linear
    loss: nn.Module
    book: PhaseBook
    optimizers: list
    scheduler: Any
    model: Optional[nn.Module]
    running: bool = True


def _start_point(accelerator, settings, data: RunData, in_features: int, model) -> _Point:
    """A point's head, loss, checkpoints (its own ``Accelerator``: a checkpoint holds this point's objects only),
    optimizers and schedule, started or resumed as a run of its own starts."""
    phase = settings.phases[0]
    phase = dataclasses.replace(phase, name=os.path.basename(os.path.normpath(phase.output_dir)))
    head = new_linear_head(settings.seed, in_features, data.num_classes, model)
    own = Accelerator(mixed_precision=accelerator.mixed_precision)
    estimator = run_estimator_optimizer(settings, data, own.device)
    loss_fn = build_run_loss(settings, data, phase.epochs, sparse=estimator != "adam")
    book = PhaseBook(own, settings, phase, data.fingerprints, LinearStep(head, loss_fn))
    checkpoint = book.resume_point()
    if checkpoint is None and settings.init_loss_state_source:
        load_loss_state(loss_fn, settings.init_loss_state_source)
    own.prepare_model(book.module, evaluation_mode=True)
    optimizers = [own.prepare_optimizer(o) for o in build_linear_optimizers(settings, phase.lr, head, loss_fn,
                                                                           estimator)]
    scheduler = build_scheduler(optimizers[0], settings.sched, phase.epochs, -(-data.num_train // phase.batch_size),
                                settings.warmup_epochs, settings.warmup_lr, settings.min_lr, settings.decay_epochs,
                                settings.decay_rate)
    book.begin(checkpoint)
    return _Point(settings, head, loss_fn, book, optimizers, scheduler, model)


def train_linear_group_phase(accelerator, group: Sequence[Any], data: RunData) -> List[PhaseOutcome]:
    """Train the linear phase of several runs together (see the module docstring).

    Args:
        accelerator: The ``accelerate.Accelerator`` (one process, no mixed precision).
        group: The runs' settings, equal except for the learning rate and the run folder.
        data: The runs' data.

    Returns:
        Each run's :class:`~spl_losses.training.phases.PhaseOutcome` (results None: stopped, resume later).
    """
    if not group:
        return []
    first = group[0]
    device, show = accelerator.device, first.progress and accelerator.is_main_process
    feats, points = None, []
    for settings in group:
        set_seed(settings.seed)
        model = create_model(settings, data.num_classes) if data.kind == "image" else None
        if feats is None:  # the same frozen features for every point
            feats = _features(accelerator, settings, data, model, settings.phases[0].batch_size)
        points.append(_start_point(accelerator, settings, data, feats["train"].shape[1], model))
    batch_size, epochs = first.phases[0].batch_size, first.phases[0].epochs
    x_train, x_val, x_test = (feats[s].to(device) for s in ("train", "validation", "test"))
    y_train = (data.train_full if first.targets == "full" else data.train_observed).to(device)
    val_labels = _val_labels(first, data)
    for p in points:
        p.running = len(p.book.epochs_to_run) > 0
    start_epoch = min((p.book.epochs_done + 1 for p in points if p.running), default=epochs + 1)
    for epoch in tqdm(range(start_epoch, epochs + 1), desc="linear group epochs", disable=not show):
        active = [i for i, p in enumerate(points) if p.running and p.book.epochs_done == epoch - 1]
        if not active:
            continue
        start = time.perf_counter()
        for i in active:
            points[i].loss.set_epoch(epoch - 1)
        order = epoch_permutation(data.num_train, first.seed, epoch - 1).to(device)
        train_losses = train_head_group_epoch(
            [p.head for p in points], [p.loss for p in points], [p.optimizers for p in points], x_train, y_train,
            order, batch_size, active=active, schedulers=[p.scheduler for p in points],
            first_update=(epoch - 1) * -(-data.num_train // batch_size))
        val_scores = {}
        for i in active:
            if points[i].loss.predictions_due:
                points[i].loss.update_from_predictions(torch.sigmoid(predict_linear(points[i].head, x_train)))
            val_scores[i] = predict_linear(points[i].head, x_val).cpu()
        seconds = time.perf_counter() - start  # the group's epoch: every point's
        for i in active:
            points[i].running = points[i].book.end_epoch(epoch, train_losses[i], val_scores[i], val_labels, seconds)
    return [_finish_point(p, x_test, data) for p in points]


def _finish_point(point: _Point, x_test: torch.Tensor, data: RunData) -> PhaseOutcome:
    """The best epoch restored and scored on test, as a run trained alone ends its linear phase."""
    if not point.book.finished:
        return PhaseOutcome(results=None)
    point.book.restore_best()
    results = point.book.results(predict_linear(point.head, x_test).cpu(), data.test_full,
                                 _run_facts(point.settings, data))
    if point.model is not None:
        copy_linear_head(point.head.cpu(), timm_model_of(point.model))
    return PhaseOutcome(results=results, loss=point.loss.cpu(), model=point.model, head=point.head.cpu(),
                        in_features=x_test.shape[1])


def _check_group(group: Sequence[Any]) -> None:
    """Refuse runs that differ in more than the learning rate and the run folder."""
    ignored = set(IDENTITY_IGNORED) | {GROUPED_KEY}
    reference = {k: v for k, v in group[0].to_config().items() if k not in ignored}
    for settings in group[1:]:
        config = {k: v for k, v in settings.to_config().items() if k not in ignored}
        diff = sorted(k for k in set(reference) | set(config) if reference.get(k) != config.get(k))
        if diff:
            raise ValueError(f"runs trained as one group may differ only in {GROUPED_KEY}; {settings.output_dir} "
                             f"differs from {group[0].output_dir} in {diff}")


def train_linear_group(point_args: Sequence[Any], accelerator) -> List[Optional[Dict[str, Any]]]:
    """Several ``linear_fixed_features`` runs (``recipes/train.py`` arguments, equal except ``--lr`` and
    ``--output-dir``) trained together: what ``recipes/train.py`` does for each, with one data pass.

    Each run folder is checked and locked as a run's own; a finished run's results are reused.

    Args:
        point_args: Each run's parsed arguments.
        accelerator: The ``accelerate.Accelerator`` (see :func:`can_train_as_group`).

    Returns:
        Each run's results, or None for a run stopped by ``--stop-after`` (resume it later).
    """
    if not point_args:
        return []
    check_args(point_args[0])
    first = point_args[0]
    data = load_data(first.dataset, first.data_dir, parse_dataset_options(first.dataset_option), first.observed_seed)
    group = [resolve_settings(args, data, accelerator.num_processes) for args in point_args]
    _check_group(group)
    results: List[Optional[Dict[str, Any]]] = [None] * len(group)
    todo = []
    for i, settings in enumerate(group):
        run_dir = RunDir(settings.output_dir)
        run_dir.check(settings.to_config(), flag_defaults(), settings.resume)
        if not run_dir.finished:
            todo.append(i)
        elif not settings.resume:
            raise ValueError(f"--output-dir {run_dir.path} already holds this finished run; pass --resume to reuse "
                             "its results, or choose another --output-dir to train again")
        else:
            accelerator.print(f"{run_dir.path}: finished earlier, results reused")
            results[i] = read_json(run_dir.file("results.json"))
    with contextlib.ExitStack() as locks:
        for i in todo:
            locks.enter_context(RunDir(group[i].output_dir).held(accelerator))
            if accelerator.is_main_process:
                RunDir(group[i].output_dir).write_config(group[i].to_config())
        if todo:
            accelerator.print(f"{first.dataset}: {data.num_classes} classes, {data.num_train:,} training examples; "
                              f"{len(todo)} run(s) of batch size {group[todo[0]].batch_size} trained together, lr "
                              f"{', '.join(str(group[i].lr) for i in todo)}, loss {group[todo[0]].loss}")
        outcomes = train_linear_group_phase(accelerator, [group[i] for i in todo], data)
        for i, outcome in zip(todo, outcomes):
            if outcome.finished:
                results[i] = _write_run(accelerator, group[i], data, outcome)
    return results


def _write_run(accelerator, settings, data: RunData, outcome: PhaseOutcome) -> Dict[str, Any]:
    """A finished run's results.json, val_map.png and model (and its push), as a run trained alone writes them."""
    run_dir, results = RunDir(settings.output_dir), outcome.results
    if accelerator.is_main_process:
        write_json(run_dir.file("results.json"), results)
        plot_val_map(run_dir.file("val_map.png"), {"main": read_jsonl(run_dir.file("metrics.jsonl"))},
                     title=f"{settings.dataset}: {settings.loss} (main, linear)", best={"main": results["best_epoch"]})
        export_model(run_dir.path, settings, data.class_names, outcome)
    accelerator.print(f"best epoch {results['best_epoch']}: val mAP {results['val_map']:.2f}, "
                      f"test mAP {results['test_map']:.2f} -> {run_dir.path}")
    if settings.push_to_hub and accelerator.is_main_process:
        from ..hub import push_run_to_hub

        accelerator.print(f"pushed: {push_run_to_hub(run_dir.path, settings.push_to_hub, private=settings.private)}")
    return results
