#!/usr/bin/env python
"""Train a timm model with a single-positive multi-label loss, following Cole et al.'s protocol (CVPR 2021).

    accelerate launch recipes/train.py                                   # the demo: recipes/configs/demo.yaml
    accelerate launch recipes/train.py -c recipes/configs/demo.yaml --epochs 1
    accelerate launch recipes/train.py -c recipes/configs/voc2012_role_end_to_end.yaml --data-dir /data/voc
    accelerate launch recipes/train.py --dataset my_images --loss em --model resnet50 --output-dir runs/em

One run reads top to bottom: parse the flags (and the YAML config) -> load and check the data -> resolve
the settings once (every check before any training) -> train each phase (build its loss once, start its
state once, train with validation every epoch, keep the best epoch, score test) -> write the results
once -> export the model -> push it to the Hub.

Train modes: ``linear_fixed_features`` (a linear head on cached features), ``end_to_end`` (the whole
network) and ``linear_init`` (the linear mode with its own ``--linear-*`` settings, then fine-tuning from
its best head with the loss state handed over). ``--search`` runs a hyperparameter grid (in linear mode the
learning rates of a batch size train together, one data pass per epoch, each point in its own run folder);
a config's ``losses`` list runs one run per loss and compares them (the demo does).

The run folder (``--output-dir``) holds config.yaml, metrics.jsonl, results.json, val_map.png,
``model/`` (a stock timm model, or a LinearProbe for features, plus loss_state.safetensors) and
``checkpoints/``. ``--batch-size`` is the global batch, split over processes. Epochs count from 1.
"""
import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List, Optional

from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list

from spl_losses.data.options import parse_dataset_options
from spl_losses.training.arguments import flag_defaults, parse_args
from spl_losses.training.data import load_data
from spl_losses.training.export import export_model
from spl_losses.training.linear_group import can_train_as_group, group_key, train_linear_group
from spl_losses.training.phases import train_end_to_end_phase, train_linear_phase
from spl_losses.training.pseudo_labels import teacher_pseudo_labels
from spl_losses.training.run_dir import RunDir
from spl_losses.training.run_files import plot_val_map, read_json, read_jsonl, write_json
from spl_losses.training.search import REFERENCE_GRID, select_winner
from spl_losses.training.settings import check_args, resolve_settings
from spl_losses.training.study import SearchStudy

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.yaml")


def make_accelerator(args) -> Accelerator:
    """The run's ``Accelerator``: precision, trackers, gradient accumulation; batches split over processes and
    copied to the device asynchronously (from page-locked memory on CUDA)."""
    return Accelerator(mixed_precision=args.mixed_precision, log_with=args.log_with,
                       project_dir=args.output_dir if args.log_with else None,
                       gradient_accumulation_steps=args.grad_accum_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True))


def describe(accelerator: Accelerator, settings, data) -> None:
    """What runs where, printed once on the main process."""
    sizes = ", ".join(f"{s} {data.split_size(s):,}" for s in ("train", "validation", "test"))
    accelerator.print(f"{settings.dataset}: {data.num_classes} classes, {sizes} ({data.kind})")
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision "
                      f"{accelerator.mixed_precision}; global batch {settings.batch_size}, loss {settings.loss}, "
                      f"{settings.train_mode} -> {settings.output_dir}")
    if settings.expected_num_pos is not None:
        accelerator.print(f"k (expected positives per image) = {settings.expected_num_pos:.3f} "
                          f"({settings.expected_num_pos_source})")
    if settings.init_loss_state_note:
        accelerator.print(settings.init_loss_state_note)


def train_phases(accelerator: Accelerator, settings, data):
    """Train the run's phases in order; returns the last phase's outcome (None: stopped, resume later)."""
    outcome = None
    for phase in settings.phases:
        phase_dir = RunDir(phase.output_dir)
        if phase.name == "main":
            outcome = (train_linear_phase(accelerator, settings, data, phase) if phase.mode == "linear" else
                       train_end_to_end_phase(accelerator, settings, data, phase, handoff=outcome))
        else:  # linear_init's linear phase: a run folder of its own, reused when finished (a search shares it)
            phase_dir.check(phase.config, flag_defaults(), resume=True)
            with phase_dir.held(accelerator, wait=True):
                if accelerator.is_main_process:
                    phase_dir.write_config(phase.config)
                outcome = train_linear_phase(accelerator, settings, data, phase)
        if not outcome.finished:
            return None
        if accelerator.is_main_process:
            write_json(phase_dir.file("results.json"), outcome.results)
            plot_val_map(phase_dir.file("val_map.png"), {phase.name: read_jsonl(phase_dir.file("metrics.jsonl"))},
                         title=f"{settings.dataset}: {settings.loss} ({phase.name}, {phase.mode})",
                         best={phase.name: outcome.results["best_epoch"]})
    return outcome


def train(args, accelerator: Optional[Accelerator] = None) -> Optional[Dict[str, Any]]:
    """One run into ``args.output_dir``; returns its results (None when stopped early with ``--stop-after``)."""
    check_args(args)  # cheap checks first: building a dataset can take long
    accelerator = accelerator or make_accelerator(args)
    run_dir = RunDir(args.output_dir)
    run_dir.check_writable()
    data = load_data(args.dataset, args.data_dir, parse_dataset_options(args.dataset_option), args.observed_seed)
    settings = resolve_settings(args, data, accelerator.num_processes)
    config = settings.to_config()
    run_dir.check(config, flag_defaults(), settings.resume)
    if run_dir.finished:
        if not settings.resume:
            raise ValueError(f"--output-dir {run_dir.path} already holds this finished run; pass --resume to reuse "
                             "its results, or choose another --output-dir to train again")
        accelerator.print(f"{run_dir.path}: finished earlier, results reused")
        return read_json(run_dir.file("results.json"))
    with run_dir.held(accelerator):
        if accelerator.is_main_process:
            run_dir.write_config(config)
        if settings.log_with:
            accelerator.init_trackers("logs", config={k: v for k, v in config.items()
                                                      if isinstance(v, (int, float, str, bool))})
        describe(accelerator, settings, data)
        data = dataclasses.replace(data, train_pseudo=teacher_pseudo_labels(accelerator, settings, data))
        outcome = train_phases(accelerator, settings, data)
        if outcome is None:
            accelerator.print(f"stopped after --stop-after {settings.stop_after} epoch(s); continue with --resume")
            return None
        results = outcome.results
        if accelerator.is_main_process:
            write_json(run_dir.file("results.json"), results)
            export_model(run_dir.path, settings, data.class_names, outcome)
        accelerator.wait_for_everyone()
        if settings.log_with:
            accelerator.log({"test/map": results["test_map"], "test/map_skip_empty": results["test_map_skip_empty"]})
            accelerator.end_training()
    accelerator.print(f"best epoch {results['best_epoch']}: val mAP {results['val_map']:.2f}, "
                      f"test mAP {results['test_map']:.2f} -> {run_dir.path}")
    if settings.push_to_hub and accelerator.is_main_process:
        from spl_losses.hub import push_run_to_hub

        accelerator.print(f"pushed: {push_run_to_hub(run_dir.path, settings.push_to_hub, private=settings.private)}")
    return results


# --------------------------------------------------------------------------------------------- several runs
def search_point_args(args, params: Dict[str, Any], name: str):
    """The arguments of one search point: its values, its run folder ``OUTPUT_DIR/name``, resumable."""
    point_args = type(args)(**{**vars(args), **params, "output_dir": os.path.join(args.output_dir, name),
                               "search": False, "resume": True})
    if args.train_mode == "linear_init" and not args.linear_phase_dir \
            and not any(k.startswith("linear_") for k in params):
        point_args.linear_phase_dir = os.path.join(args.output_dir, "linear_phase")  # trained once, shared
    return point_args


def train_point_groups(args, accelerator, study, taken) -> bool:
    """Train taken search points, those of one group (:func:`group_key`) together; False when --stop-after
    stopped them. Every taken point's run folder is locked before any trains (a RUNNING trial whose folder is
    free counts as abandoned); a failed group's points are told failed, the others are left to be retried."""
    with contextlib.ExitStack() as locks:
        for trial, (_, name) in taken:
            accelerator.print(f"[search] {name}")
            locks.enter_context(RunDir(os.path.join(args.output_dir, name)).held(accelerator))
            study.mark_locked(trial)
        groups: Dict[Any, list] = {}
        for trial, (params, name) in taken:
            groups.setdefault(group_key(params), []).append((trial, search_point_args(args, params, name)))
        for group in groups.values():
            try:
                results = train_linear_group([point_args for _, point_args in group], accelerator)
            except BaseException:
                for trial, _ in group:
                    study.finish(trial, None)
                raise
            for (trial, _), result in zip(group, results):  # told while the locks are held
                study.finish(trial, result)
            if any(result is None for result in results):
                return False
    return True


def run_search(args, grid: Optional[Dict[str, List[Any]]] = None, space: Optional[Dict[str, Any]] = None):
    """A hyperparameter search in a shared Optuna study: this worker trains waiting points until none is left
    (start the same command elsewhere to add workers); the winner by validation mAP. In linear mode on one
    process, the waiting points that differ only in the learning rate are taken and trained together."""
    accelerator = make_accelerator(args)
    study = SearchStudy(args.output_dir, args.search_storage, args.search_study, grid=grid or REFERENCE_GRID,
                        space=space, sampler=args.search_sampler, num_trials=args.search_trials, seed=args.seed,
                        allowed=list(flag_defaults())) if accelerator.is_main_process else None
    grouped = (study is not None and study.sampler == "grid" and args.search_group_size != 1
               and can_train_as_group(args, accelerator))
    while grouped:  # linear mode: the waiting points of a batch size trained together, one data pass per epoch
        taken = study.next_trials(group_key, limit=args.search_group_size)
        if not taken:
            break
        if not train_point_groups(args, accelerator, study, taken):
            return {}  # --stop-after
    while not grouped:
        trial, point = study.next_trial() if study else (None, None)
        point = broadcast_object_list([point])[0] if accelerator.num_processes > 1 else point
        if point is None:
            break
        params, name = point
        point_args = search_point_args(args, params, name)
        accelerator.print(f"[search] {name}")
        with RunDir(point_args.output_dir).held(accelerator):  # a dead worker's point: its lock is free
            if study:
                study.mark_locked(trial)
            try:
                results = train(point_args, accelerator)
            except BaseException:
                if study:
                    study.finish(trial, None)
                raise
            if study:  # told while the lock is held: a free lock on a RUNNING trial means a dead worker
                study.finish(trial, results)
        if results is None:  # --stop-after
            return {}
    if not accelerator.is_main_process:
        return {}
    runs = study.summaries()
    if not study.done:
        accelerator.print(f"[search] {len(runs)} point(s) finished; the others are being trained by other workers")
        return {"runs": runs}
    winner = select_winner(runs)
    summary = {"grid": grid or REFERENCE_GRID, "space": space, "runs": runs, "winner": winner}
    write_json(os.path.join(args.output_dir, "search.json"), summary)
    plot_val_map(os.path.join(args.output_dir, "val_map.png"),
                 {r["name"]: read_jsonl(os.path.join(args.output_dir, r["name"], "metrics.jsonl")) for r in runs},
                 title=f"{args.dataset}: {args.loss} search", best={r["name"]: r["best_epoch"] for r in runs})
    accelerator.print(f"[search] winner {winner['name']}: val mAP {winner['val_map']:.2f}, "
                      f"test mAP {winner['test_map']:.2f}")
    return summary


def compare_losses(args, losses: List[str]) -> List[Dict[str, Any]]:
    """One run per loss into ``OUTPUT_DIR/LOSS`` (finished runs reused), a table and one comparison plot."""
    accelerator = make_accelerator(args)
    rows = []
    for loss in losses:
        loss_args = type(args)(**{**vars(args), "loss": loss, "output_dir": os.path.join(args.output_dir, loss)})
        loss_args.resume = loss_args.resume or os.path.isfile(os.path.join(loss_args.output_dir, "results.json"))
        start = time.perf_counter()
        results = train(loss_args, accelerator)
        if results is None:
            return rows
        rows.append({"loss": loss, "val_map": results["val_map"], "test_map": results["test_map"],
                     "best_epoch": results["best_epoch"], "seconds": time.perf_counter() - start,
                     "full_labels": loss.startswith("bce")})
    if accelerator.is_main_process:
        print_comparison(args, rows)
    return rows


def print_comparison(args, rows: List[Dict[str, Any]]) -> None:
    """The comparison table, its plot, and what to do next."""
    plot_val_map(os.path.join(args.output_dir, "val_map.png"),
                 {r["loss"]: read_jsonl(os.path.join(args.output_dir, r["loss"], "metrics.jsonl")) for r in rows},
                 title=f"{args.dataset}: validation mAP per loss", best={r["loss"]: r["best_epoch"] for r in rows})
    print(f"\n{args.dataset} ({args.model}, {args.train_mode}, {args.epochs} epochs): test mAP of the best "
          "validation epoch")
    print(f"{'loss':<10} {'labels':<16} {'val mAP':>8} {'test mAP':>9} {'best ep':>8} {'seconds':>8}")
    for row in rows:
        kind = "full (bound)" if row["full_labels"] else "single positive"
        print(f"{row['loss']:<10} {kind:<16} {row['val_map']:8.2f} {row['test_map']:9.2f} {row['best_epoch']:8d} "
              f"{row['seconds']:8.1f}")
    best = max((r for r in rows if not r["full_labels"]), key=lambda r: r["val_map"], default=rows[0])
    print(f"\nNext: the models are in {args.output_dir}/LOSS/model (timm.create_model('local-dir:"
          f"{args.output_dir}/{best['loss']}/model', pretrained=True)); the plot is {args.output_dir}/val_map.png.")
    print("Your own images: list them in a CSV (file,labels with labels separated by '|'), then\n"
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
    main()
