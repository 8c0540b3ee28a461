"""Time per step of the (N, C) label estimator's optimizer: dense Adam, SparseAdam and LazyAdam.

For each N, the three optimizers train the same estimator (float32, initialised as ROLE's
unobserved entries) from the same row sequence (B random rows per step, as a shuffled epoch reads
them) on a ROLE-like loss (the mean binary cross-entropy of the rows' logits towards fixed soft
targets, so gradients are about 1e-4 per entry as ROLE's estimator gets). Each step is: zero the
gradient, (LazyAdam only) catch up the batch's rows, read them with ``F.embedding`` (dense gradient
for Adam, sparse for the other two), backward, optimizer step. Printed per optimizer: the median
time of the optimizer step alone and of the whole step, the time of LazyAdam's full catch-up at the
end (what an epoch end or a checkpoint costs), and the max deviation from dense Adam after all the
steps (absolute, and relative to dense Adam's largest change). LazyAdam is timed again after
``--steady-steps`` more steps, when the rows it catches up were last touched later in training
(their skipped steps need fewer terms than in the first ~1,000 steps), and in the recipe's regime
(``lazy_adam epochs``): shuffled epochs, every row caught up at the end of the first (as a checkpoint
does), then ``--steps`` steps of the second timed, whose rows share their last step (one table of
factors for all of them). At the smallest N, float64 runs of
dense Adam (its deviation from the float32 run is float32's own noise: a gradient near zero can
change sign under rounding, and Adam's step does not shrink with the gradient) and of LazyAdam
(its deviation is from the float64 dense Adam: the closed form's own error) are added.

Usage::

    python benchmarks/estimator_optimizer.py --threads 1 [--num-examples 10000 65000 200000] [--steps 1000]
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from spl_losses.optim import LazyAdam

OPTIMIZERS = ("adam", "sparse_adam", "lazy_adam")


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--num-examples", type=int, nargs="+", default=[10_000, 65_000, 200_000], help="N values")
    parser.add_argument("--num-classes", type=int, default=80, help="C (default 80, COCO)")
    parser.add_argument("--batch-size", type=int, default=16, help="B (default 16)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument("--steady-steps", type=int, default=5000,
                        help="LazyAdam is also timed after this many more steps (rows last touched later, "
                             "fewer terms per row); 0 skips it")
    parser.add_argument("--lr", type=float, default=1e-2, help="estimator learning rate (10x ROLE's linear 1e-3)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _clock(device: torch.device) -> float:
    """CPU time of the process on CPU (steadier on a shared machine); wall clock after a sync on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def train(kind, init, soft_targets, order, args, dtype=torch.float32, untimed=(), catch_up_after_untimed=False):
    """Train a copy of ``init`` with optimizer ``kind`` on the batches ``untimed`` then ``order`` (timed).

    Args:
        kind: ``"adam"`` (fused, dense gradient), ``"sparse_adam"`` or ``"lazy_adam"``.
        init: (N, C) initial logits.
        soft_targets: (N, C) targets of the binary cross-entropy.
        order: Timed batches of row indices.
        args: Parsed command line (``lr``).
        dtype: Dtype of the trained logits.
        untimed: Batches run first, untimed.
        catch_up_after_untimed: LazyAdam: catch every row up after the untimed batches.

    Returns:
        The trained logits, the step times, the whole-step times and LazyAdam's final catch-up time.
    """
    device = init.device
    logits = torch.nn.Parameter(init.to(dtype).clone())
    sparse = kind != "adam"
    if kind == "adam":
        optimizer = torch.optim.Adam([logits], lr=args.lr, fused=True)  # as the recipe builds it
    elif kind == "sparse_adam":
        optimizer = torch.optim.SparseAdam([logits], lr=args.lr)
    else:
        optimizer = LazyAdam([logits], lr=args.lr)
    step_times, whole_times = [], []
    for position, rows in enumerate(list(untimed) + list(order)):
        if position == len(untimed) and catch_up_after_untimed:
            optimizer.catch_up()
        start = _clock(device)
        optimizer.zero_grad(set_to_none=True)
        if kind == "lazy_adam":
            optimizer.catch_up([logits], rows)
        read = F.embedding(rows, logits, sparse=sparse)
        F.binary_cross_entropy_with_logits(read, soft_targets[rows].to(dtype)).backward()
        before_step = _clock(device)
        optimizer.step()
        end = _clock(device)
        step_times.append(end - before_step)
        whole_times.append(end - start)
    step_times, whole_times = step_times[len(untimed):], whole_times[len(untimed):]
    catch_up_time = math.nan
    if kind == "lazy_adam":
        start = _clock(device)
        optimizer.catch_up()
        catch_up_time = _clock(device) - start
    return logits.detach(), step_times, whole_times, catch_up_time


def main(argv=None):
    """Run the benchmark and print its table.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}; C = {args.num_classes}, "
          f"B = {args.batch_size}, {args.steps} steps, lr {args.lr}")
    print(f"{'N':>8} {'optimizer':>17} {'step ms':>9} {'whole ms':>9} {'catch-up ms':>12} "
          f"{'max |dev|':>10} {'rel dev':>9}")
    for n in args.num_examples:
        generator = torch.Generator().manual_seed(args.seed)
        q = math.log(0.6 / 0.4)
        init = (torch.rand(n, args.num_classes, generator=generator) * 2 - 1).mul_(q).to(device)
        soft_targets = torch.rand(n, args.num_classes, generator=generator).to(device)
        order = [torch.randint(0, n, (args.batch_size,), generator=generator).to(device) for _ in range(args.steps)]
        results = {kind: train(kind, init, soft_targets, order, args) for kind in OPTIMIZERS}
        dense = results["adam"][0]
        moved = (dense - init).abs().max().item()
        rows = [(kind, *results[kind]) for kind in OPTIMIZERS]
        if n == min(args.num_examples):  # float64 runs: LazyAdam's own error, without float32 rounding
            rows += [(f"{kind} float64", *train(kind, init, soft_targets, order, args, torch.float64))
                     for kind in ("adam", "lazy_adam")]
        if args.steady_steps:
            later = [torch.randint(0, n, (args.batch_size,), generator=generator).to(device)
                     for _ in range(args.steady_steps)]
            rows.append((f"lazy_adam +{args.steady_steps}", *train(
                "lazy_adam", init, soft_targets, later[-args.steps:], args, untimed=order + later[:-args.steps])))
        first, second = (list(torch.randperm(n, generator=generator).to(device).split(args.batch_size))
                         for _ in range(2))
        rows.append(("lazy_adam epochs", *train("lazy_adam", init, soft_targets, second[:args.steps], args,
                                                 untimed=first, catch_up_after_untimed=True)))
        references = {"lazy_adam float64": next((r[1] for r in rows if r[0] == "adam float64"), None)}
        for kind, logits, step_times, whole_times, catch_up_time in rows:
            reference = references.get(kind, dense)
            deviation = math.nan if kind.startswith(("lazy_adam +", "lazy_adam epochs")) else \
                (logits.double() - reference.double()).abs().max().item()
            warm = slice(min(10, len(step_times) - 1), None)
            print(f"{n:>8} {kind:>17} {1e3 * statistics.median(step_times[warm]):>9.3f} "
                  f"{1e3 * statistics.median(whole_times[warm]):>9.3f} {1e3 * catch_up_time:>12.1f} "
                  f"{deviation:>10.2e} {deviation / moved:>9.2e}")


if __name__ == "__main__":
    main()
