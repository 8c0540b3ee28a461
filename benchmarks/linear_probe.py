"""Speed of the linear_fixed_features train mode and of feature extraction.

1. A 25-epoch linear run (the protocol's linear mode) on generated COCO-sized features
   (65,665 x 2,048, 80 classes, one observed positive per row) for `an` and `role`, through the
   recipe's own loop (spl_losses.training.linear.train_linear_epoch) and optimizer
   (spl_losses.training.builders.build_optimizer), with validation scoring of 16,416 rows per epoch and,
   as the recipe's per-epoch checkpoint does, the loss's state dict read after every epoch (which
   brings a LazyAdam estimator's rows up to date). `role` runs with each `--estimator-optimizer`
   given: `auto` (the recipe's default: LazyAdam at this size, 5.3M estimator entries), `lazy_adam`,
   `adam` (dense Adam over all N x C entries every step, ~10x slower), `sparse_adam`.
   Target: < 60 s per run on 2 CPU cores; `role` (auto) within 2x of `an`.
2. Feature-extraction throughput (images/s) of the demo backbone (the recipe's DEMO_FLAGS model)
   on 32 px images.

    python benchmarks/linear_probe.py [--epochs 25] [--batch-size 16 8] [--threads 2]
        [--losses an role] [--estimator-optimizer auto adam ...] [--dense-epochs 1] [--no-extraction]

The runs advance one epoch each in turn (interleaved), so that load from other processes on a shared
machine falls on all of them alike; each run's total and fastest epoch, wall and CPU, are printed with
the thread count and the load average, and every run's fastest epoch relative to `an`'s. Shorter runs
(``--epochs 2``) are extrapolated to 25 epochs; ``--dense-epochs`` shortens only the ROLE runs with the
dense estimator (``adam``).
"""
import argparse
import os
import time

import torch
from torch import nn

import spl_losses
from spl_losses.training.linear import predict_linear, train_linear_epoch
from spl_losses.training.builders import build_optimizer, estimator_optimizer, param_groups
from spl_losses.training.parallel import epoch_permutation


def load_average():
    """The 1-minute load average (other processes competing for the cores), or '?'."""
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def coco_sized_features(seed=0):
    """Random COCO-sized features: (65,665 x 2,048) training and (16,416 x 2,048) validation rows (non-negative,
    as pooled ReLU features are) and 80 classes with one observed positive per training row.

    Args:
        seed: Seed of the draws.
    """
    g = torch.Generator().manual_seed(seed)
    n, d, c, n_val = 65665, 2048, 80, 16416
    features = torch.randn(n, d, generator=g).relu_()
    val_features = torch.randn(n_val, d, generator=g).relu_()
    targets = torch.zeros(n, c)
    targets[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    return features, val_features, targets


class LinearRun:
    """One linear run (loss, estimator optimizer, batch size), trained an epoch at a time."""

    def __init__(self, loss_name, features, targets, batch_size, estimator, epochs):
        n, d = features.shape
        c = targets.shape[1]
        self.name, self.batch_size, self.epochs = loss_name, batch_size, epochs
        self.head = nn.Linear(d, c)
        kwargs = dict(num_classes=c, num_examples=n, expected_num_pos=2.9, observed_labels=targets, seed=0,
                      sparse=estimator != "adam") if loss_name == "role" else {}
        self.loss = spl_losses.create_loss(loss_name, **kwargs)
        state = [p for p in self.loss.parameters() if p.requires_grad]
        groups = param_groups(1e-4, head=list(self.head.parameters()), loss_state=state)
        self.optimizers = [build_optimizer(groups, "adam", estimator=estimator)]
        self.wall, self.cpu = [], []

    def epoch(self, features, targets, val_features):
        """Train one epoch, score validation, read the state dict (the recipe's checkpoint); record its times."""
        epoch = len(self.wall)
        start, cpu_start = time.perf_counter(), time.process_time()
        self.loss.set_epoch(epoch)
        train_linear_epoch(self.head, self.loss, self.optimizers, features, targets,
                           epoch_permutation(features.shape[0], 0, epoch), self.batch_size)
        predict_linear(self.head, val_features)
        self.loss.state_dict()  # the recipe's checkpoint after every epoch (a LazyAdam estimator caught up)
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(time.process_time() - cpu_start)


def extraction_throughput(num_images=512, batch_size=64):
    import timm

    from spl_losses.training.features import pooled_features

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10, channels=(32, 64, 128, 256),
                              stem_width=16).eval()
    images = torch.randn(batch_size, 3, 32, 32)
    with torch.no_grad():
        pooled_features(model, images)
        start = time.perf_counter()
        for _ in range(num_images // batch_size):
            pooled_features(model, images)
    return num_images / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, nargs="+", default=[16, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--losses", nargs="+", default=["an", "role"])
    p.add_argument("--estimator-optimizer", nargs="+", default=["auto"],
                   choices=["auto", "lazy_adam", "adam", "sparse_adam"], help="ROLE runs: the estimator's optimizers")
    p.add_argument("--dense-epochs", type=int, default=None, help="epochs of ROLE runs with the dense estimator "
                   "(adam; default --epochs)")
    p.add_argument("--no-extraction", action="store_true", help="skip the feature-extraction throughput")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    features, val_features, targets = coco_sized_features()
    (n, d), c = features.shape, targets.shape[1]
    load = load_average()
    print(f"torch threads: {torch.get_num_threads()}; load average {load}; features {n} x {d}, {c} classes, "
          f"{args.epochs} epochs")
    for bs in args.batch_size:
        runs = []
        for name in args.losses:
            for choice in (args.estimator_optimizer if name == "role" else ["adam"]):
                estimator = estimator_optimizer(choice, n * c)
                dense = name == "role" and estimator == "adam"
                epochs = args.dense_epochs if dense and args.dense_epochs is not None else args.epochs
                tag = f"{name} (estimator: {choice}{' = ' + estimator if choice == 'auto' else ''})" \
                    if name == "role" else name
                runs.append((tag, LinearRun(name, features, targets, bs, estimator, epochs)))
        for epoch in range(max(run.epochs for _, run in runs)):
            for _, run in runs:
                if epoch < run.epochs:
                    run.epoch(features, targets, val_features)
        fastest_an = min((min(run.cpu) for tag, run in runs if tag == "an"), default=None)
        for tag, run in runs:
            wall, cpu, epochs = sum(run.wall), sum(run.cpu), run.epochs
            versus = f"; fastest epoch {min(run.cpu) / fastest_an:.2f}x an's (CPU)" if fastest_an else ""
            print(f"linear {tag:<36} batch {bs:>3}: {wall:7.1f} s wall, {cpu:7.1f} s CPU in {epochs} epochs "
                  f"(25 epochs ~ {25 * wall / epochs:.0f} s wall, {25 * cpu / epochs:.0f} s CPU; fastest epoch "
                  f"{min(run.wall):.2f} s wall, {min(run.cpu):.2f} s CPU{versus})", flush=True)
        print(f"load average now {load_average()}")
    if args.no_extraction:
        return
    print(f"feature extraction, demo backbone (narrow resnet10t, 32 px): {extraction_throughput():.0f} images/s")


if __name__ == "__main__":
    main()
