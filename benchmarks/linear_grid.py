"""Speed of the protocol's 8-point grid (batch size {8, 16} x lr {1e-2, 1e-3, 1e-4, 1e-5}) in linear mode.

On generated COCO-sized features (65,665 x 2,048, 80 classes, one observed positive per row; 16,416
validation rows scored every epoch), for each loss:

- batched: the four learning rates of a batch size trained together
  (spl_losses.training.linear.train_head_group_epoch), one data pass per epoch, two passes;
- sequential: the eight points one after another (spl_losses.training.linear.train_linear_epoch);
- one run: a single batch-16 point, the unit of the targets.

Each point has what the recipe gives it: Adam (fused) on its head; for ``role`` its own label estimator
with the sparse estimator's optimizer (``--estimator lazy``: LazyAdam, exact dense Adam at O(B*C) per
step; ``sparse``: SparseAdam; ``dense``: Adam over all N x C entries every step, slow). Checkpoints and
mAP scoring are left out (the same per point either way).

    OMP_NUM_THREADS=1 python benchmarks/linear_grid.py [--epochs 25] [--losses an role] [--threads 1]
        [--estimator lazy|sparse|dense] [--skip-sequential]

Shorter runs (``--epochs 2``) are extrapolated to 25 epochs in the last column. The machine may be shared:
the load average is printed before and after each measurement.
"""
import argparse
import os
import time
from types import SimpleNamespace

import torch
from torch import nn

import spl_losses
from spl_losses.training.linear import train_head_group_epoch
from spl_losses.training.linear import build_linear_optimizers, predict_linear, train_linear_epoch
from spl_losses.training.parallel import epoch_permutation

from linear_probe import coco_sized_features, load_average

GRID_LRS = (1e-2, 1e-3, 1e-4, 1e-5)
GRID_BATCH_SIZES = (8, 16)


def make_point(loss_name, features, targets, lr, estimator):
    """A point's head, loss and optimizers, as the recipe builds them (seed 0)."""
    n, d = features.shape
    c = targets.shape[1]
    torch.manual_seed(0)
    head = nn.Linear(d, c)
    choice = {"lazy": "lazy_adam", "sparse": "sparse_adam", "dense": "adam"}[estimator]
    kwargs = dict(num_classes=c, num_examples=n, expected_num_pos=2.9, observed_labels=targets, seed=0,
                  sparse=choice != "adam") if loss_name == "role" else {}
    loss = spl_losses.create_loss(loss_name, **kwargs)
    settings = SimpleNamespace(opt="adam", momentum=0.9, weight_decay=0.0, lr_mult=10.0)
    return head, loss, build_linear_optimizers(settings, lr, head, loss, choice if loss_name == "role" else "adam")


def run_sequential(loss_name, features, targets, val_features, epochs, points, estimator):
    """The points one after another: each its own passes over the data."""
    for batch_size, lr in points:
        head, loss, optimizers = make_point(loss_name, features, targets, lr, estimator)
        for epoch in range(epochs):
            loss.set_epoch(epoch)
            train_linear_epoch(head, loss, optimizers, features, targets,
                               epoch_permutation(features.shape[0], 0, epoch), batch_size)
            predict_linear(head, val_features)


def run_batched(loss_name, features, targets, val_features, epochs, estimator):
    """The grid's batch sizes one after another, each with its learning rates trained together."""
    for batch_size in GRID_BATCH_SIZES:
        made = [make_point(loss_name, features, targets, lr, estimator) for lr in GRID_LRS]
        for epoch in range(epochs):
            for _, loss, _ in made:
                loss.set_epoch(epoch)
            train_head_group_epoch([m[0] for m in made], [m[1] for m in made], [m[2] for m in made], features, targets,
                                   epoch_permutation(features.shape[0], 0, epoch), batch_size)
            for head, _, _ in made:
                predict_linear(head, val_features)


def timed(label, epochs, fn, *args):
    load = load_average()
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"  {label:<34} {wall:8.1f} s wall {cpu:8.1f} s CPU in {epochs} epoch(s); 25 epochs ~ {25 * wall / epochs:6.0f} "
          f"s wall  (load average {load} -> {load_average()})", flush=True)
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--losses", nargs="+", default=["an", "role"])
    p.add_argument("--estimator", choices=["lazy", "sparse", "dense"], default="lazy",
                   help="role's estimator optimizer: LazyAdam (exact Adam, O(B*C)), SparseAdam, or dense Adam")
    p.add_argument("--skip-sequential", action="store_true", help="time only the batched grid and one run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    features, val_features, targets = coco_sized_features()
    (n, d), c = features.shape, targets.shape[1]
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; features {n} x {d}, {c} classes, {args.epochs} epoch(s); grid batch size "
          f"{list(GRID_BATCH_SIZES)} x lr {list(GRID_LRS)}; role estimator: {args.estimator}")
    grid = [(bs, lr) for bs in GRID_BATCH_SIZES for lr in GRID_LRS]
    for name in args.losses:
        print(f"{name}:")
        one = timed("one run (batch 16)", args.epochs, run_sequential, name, features, targets, val_features,
                    args.epochs, [(16, 1e-4)], args.estimator)
        batched = timed("grid, batched (2 passes)", args.epochs, run_batched, name, features, targets,
                        val_features, args.epochs, args.estimator)
        line = f"  grid batched / one run = {batched / one:.2f}"
        if not args.skip_sequential:
            sequential = timed("grid, sequential (8 runs)", args.epochs, run_sequential, name, features, targets,
                               val_features, args.epochs, grid, args.estimator)
            line += f"; sequential / one run = {sequential / one:.2f}; sequential / batched = {sequential / batched:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
