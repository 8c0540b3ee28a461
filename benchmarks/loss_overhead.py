"""Forward+backward time of every registered loss next to ``F.binary_cross_entropy_with_logits``.

Prints, for (B, C) = (16, 20), (16, 80), (64, 312), (256, 1000), the time of one forward and
backward pass of each loss in ``spl_losses.list_losses()`` divided by the time of the same pass of
``F.binary_cross_entropy_with_logits``. The two are timed alternately, on CPU as the process's own
CPU time (``time.process_time``; wall clock with synchronisation on CUDA), and each time is the
minimum over the repeats (medians are printed alongside for the largest shape), so a shared, loaded
machine still gives stable ratios. Then:

- the cost of the input checks (``check_inputs=True`` vs ``False``) at (256, 1000);
- ``role`` with a dense estimator gradient vs ``sparse=True`` at N = ``--num-examples``;
- a memory check at N = 100,000, C = 1,000: the estimator is held once in float32 (400 MB) and
  training steps do not copy it;
- the cost of the batch-split dispatch every call now makes (``loss.batch_share()``: split off, and
  split on without a process group), against the whole forward+backward;
- with ``--processes P`` (P >= 2): P forked gloo CPU processes run every loss on a batch split over them
  (``split_batches``) at (16, 80) and (256, 1000), in the last epoch of a 10-epoch run (the largest
  large-loss selections): the collectives per step, the bytes each process sends, and the step time
  split vs. the same share computed alone (wall clock: the processes wait for each other).

Targets (issue 2): at (256, 1000) stateless losses within 3x of BCE-with-logits, and ``role`` with
``sparse=True`` within 5x at N = 20,000.

Usage::

    python benchmarks/loss_overhead.py --threads 1 --repeats 30
    python benchmarks/loss_overhead.py --processes 2 --skip-memory-check --losses "ll_*"
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import spl_losses

SHAPES = [(16, 20), (16, 80), (64, 312), (256, 1000)]
EXPECTED_NUM_POS = 2.9  # COCO's k; any positive value exercises the regularizers
STATELESS_TARGET = 3.0
ROLE_SPARSE_TARGET = 5.0
MEMORY_CHECK_SHAPE = (100_000, 1_000)


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats before timing")
    parser.add_argument("--num-examples", type=int, default=20_000, help="N for losses with per-example state")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--losses", default="", help="comma-separated wildcard patterns of loss names (default: all)")
    parser.add_argument("--skip-memory-check", action="store_true", help="skip the N=100,000 estimator check")
    parser.add_argument("--processes", type=int, default=0,
                        help="also run every loss on a batch split over this many gloo CPU processes (>= 2)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- inputs
def spml_observed(num_rows: int, num_classes: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """One observed positive per row, everything else unobserved (the single-positive setting).

    Args:
        num_rows: Number of rows.
        num_classes: C.
        generator: Random generator picking the positive class of each row.
        dtype: Output dtype.
    """
    labels = torch.zeros(num_rows, num_classes, dtype=dtype)
    labels[torch.arange(num_rows), torch.randint(0, num_classes, (num_rows,), generator=generator)] = 1
    return labels


def multi_hot(num_rows: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Random full labels with about three positives per row.

    Args:
        num_rows: Number of rows.
        num_classes: C.
        generator: Random generator.
    """
    return (torch.rand(num_rows, num_classes, generator=generator) < 3.0 / num_classes).float()


def constructor_kwargs(name: str, num_classes: int, num_examples: int, observed_labels: torch.Tensor,
                       **extra) -> Tuple[Optional[dict], str]:
    """Keyword arguments for loss ``name`` (``spl_losses.loss_kwargs``), or ``(None, reason)``.

    Args:
        name: Registered loss name.
        num_classes: Passed as ``num_classes`` when the constructor takes it.
        num_examples: Passed as ``num_examples`` when the constructor takes it.
        observed_labels: (N, C) training labels, passed as ``observed_labels`` when taken.
        **extra: Further keyword arguments the constructor must take (``check_inputs``).
    """
    known = {
        "num_classes": num_classes,
        "num_examples": num_examples,
        "expected_num_pos": EXPECTED_NUM_POS,
        "observed_labels": observed_labels,
    }
    try:
        return spl_losses.loss_kwargs(name, available=known, options=extra), ""
    except ValueError as err:
        return None, str(err)


# ---------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_times(step: Callable[[], None], reference: Callable[[], None], device: torch.device,
                 repeats: int, warmup: int) -> Tuple[List[float], List[float]]:
    """Seconds of each repeat of ``step`` and of ``reference``, timed alternately.

    Args:
        step: The measured callable.
        reference: The baseline callable.
        device: Device to synchronise (CUDA) before and after each call.
        repeats: Timed repeats of each.
        warmup: Untimed repeats of each first.
    """
    for _ in range(warmup):
        step()
        reference()
    # on CPU the process's own CPU time: other processes on a shared machine do not count
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times, ref_times = [], []
    for _ in range(repeats):
        for fn, out in ((reference, ref_times), (step, times)):
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            out.append(clock() - start)
    return times, ref_times


def forward_backward(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor,
                     index: Optional[torch.Tensor], params: List[torch.Tensor]) -> Callable[[], None]:
    """A callable running one forward and backward pass of ``loss_fn``, gradients cleared first.

    Args:
        loss_fn: The loss.
        logits: (B, C) logits that require grad.
        targets: (B, C) targets.
        index: (B,) example indices, or None for losses without per-example state.
        params: The loss's own parameters (the ROLE estimator), whose gradients are cleared too.
    """

    def step():
        logits.grad = None
        for p in params:
            p.grad = None
        value = loss_fn(logits, targets) if index is None else loss_fn(logits, targets, index=index)
        value.backward()

    return step


class Bench:
    """Builds each loss for a shape and times it against BCE-with-logits on the same inputs.

    Args:
        args: The parsed command line (``--num-examples``, ``--device``, ``--repeats``, ``--warmup``).
    """

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)

    def inputs(self, batch_size: int, num_classes: int, seed: int = 0):
        """Logits, SPML targets, full targets, example indices and (N, C) int8 training labels.

        Args:
            batch_size: B.
            num_classes: C.
            seed: Seed of the random inputs.
        """
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(batch_size, num_classes, generator=gen).to(self.device).requires_grad_()
        observed = spml_observed(batch_size, num_classes, gen).to(self.device)
        full = multi_hot(batch_size, num_classes, gen).to(self.device)
        index = torch.randperm(self.args.num_examples, generator=gen)[:batch_size].to(self.device)
        train_observed = spml_observed(self.args.num_examples, num_classes, gen, dtype=torch.int8)
        return logits, observed, full, index, train_observed

    def build(self, name: str, num_classes: int, train_observed: torch.Tensor, **extra):
        """Build loss ``name`` from its signature: ``(loss, "")`` or ``(None, reason skipped)``.

        Args:
            name: Registered loss name.
            num_classes: C.
            train_observed: (N, C) training labels for constructors that take ``observed_labels``.
            **extra: Further constructor arguments (``check_inputs``).
        """
        cls = spl_losses.get_loss_class(name)
        kwargs, reason = constructor_kwargs(name, num_classes, self.args.num_examples, train_observed, **extra)
        if kwargs is None:
            return None, reason
        try:
            loss = cls(**kwargs)
        except TypeError as err:
            if "observed_labels" not in kwargs:
                return None, f"constructor failed: {err}"
            kwargs["observed_labels"] = train_observed.float()  # a loss that wants float labels
            try:
                loss = cls(**kwargs)
            except (TypeError, ValueError) as err2:
                return None, f"constructor failed: {err2}"
        except ValueError as err:
            return None, f"constructor failed: {err}"
        if isinstance(loss, torch.nn.Module):
            loss = loss.to(self.device)
        return loss, ""

    def ratio(self, loss, logits, observed, full, index) -> Tuple[float, float, float, float]:
        """(loss ms, bce-with-logits ms, ratio of minima, ratio of medians) for one forward+backward.

        Args:
            loss: The loss module.
            logits: (B, C) logits that require grad.
            observed: (B, C) SPML targets, for losses in the observed encoding.
            full: (B, C) multi-hot targets, for full-label losses and the baseline.
            index: (B,) example indices, used by losses that require them.
        """
        targets = full if getattr(loss, "target_encoding", "observed") == "multi_hot" else observed
        use_index = index if getattr(loss, "requires_index", False) else None
        params = [p for p in loss.parameters()] if isinstance(loss, torch.nn.Module) else []
        step = forward_backward(loss, logits, targets, use_index, params)
        reference = forward_backward(F.binary_cross_entropy_with_logits, logits, full, None, [])
        times, ref_times = paired_times(step, reference, self.device, self.args.repeats, self.args.warmup)
        t, t_ref = min(times), min(ref_times)
        return 1e3 * t, 1e3 * t_ref, t / t_ref, statistics.median(times) / statistics.median(ref_times)


def is_stateless(loss) -> bool:
    """Whether ``loss`` keeps no per-example state (no ``index``, no per-epoch predictions).

    Args:
        loss: A loss module.
    """
    return not getattr(loss, "requires_index", False) and not getattr(loss, "needs_predictions", False)


# ---------------------------------------------------------------------------- sections
def ratio_table(bench: Bench, names: List[str]) -> Dict[str, Dict[Tuple[int, int], float]]:
    """Print the ratio table over ``SHAPES`` and return ``{loss: {shape: ratio}}``.

    Args:
        bench: The timing harness.
        names: Registered loss names to time.
    """
    results: Dict[str, Dict[Tuple[int, int], float]] = {}
    skipped: Dict[str, str] = {}
    bce_ms: Dict[Tuple[int, int], float] = {}
    stateless: Dict[str, bool] = {}
    medians: Dict[str, float] = {}  # ratio of medians at the last (largest) shape
    for shape in SHAPES:
        logits, observed, full, index, train_observed = bench.inputs(*shape)
        for name in names:
            if name in skipped:
                continue
            loss, reason = bench.build(name, shape[1], train_observed)
            if loss is None:
                skipped[name] = reason
                continue
            stateless[name] = is_stateless(loss)
            try:
                _, ref_ms, ratio, median_ratio = bench.ratio(loss, logits, observed, full, index)
            except Exception as err:  # a loss that cannot run here is reported, not fatal
                skipped[name] = f"{type(err).__name__}: {err}"
                continue
            results.setdefault(name, {})[shape] = ratio
            medians[name] = median_ratio
            bce_ms.setdefault(shape, ref_ms)
    header = ["loss"] + [f"{b}x{c}" for b, c in SHAPES] + [f"{SHAPES[-1][0]}x{SHAPES[-1][1]} (medians)"]
    print("\nforward+backward time / F.binary_cross_entropy_with_logits (ratio of minimum times)")
    print(f"| {' | '.join(header)} | target at {SHAPES[-1][0]}x{SHAPES[-1][1]} |")
    print("|" + "---|" * (len(header) + 1))
    print("| bce_with_logits (ms) | " + " | ".join(f"{bce_ms.get(s, float('nan')):.3f}" for s in SHAPES) + " | | |")
    for name, row in results.items():
        cells = [f"{row[s]:.2f}" if s in row else "-" for s in SHAPES]
        cells.append(f"{medians[name]:.2f}" if SHAPES[-1] in row else "-")
        verdict = ""
        if stateless.get(name) and SHAPES[-1] in row:
            verdict = ("ok" if row[SHAPES[-1]] <= STATELESS_TARGET else "MISS") + f" (<= {STATELESS_TARGET:g}x)"
        elif not stateless.get(name):
            verdict = f"stateful (N={bench.args.num_examples})"
        print(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    return results


def check_cost_table(bench: Bench, names: List[str]) -> None:
    """Print each loss's ratio at the largest shape with ``check_inputs`` on and off.

    Args:
        bench: The timing harness.
        names: Registered loss names to time.
    """
    shape = SHAPES[-1]
    logits, observed, full, index, train_observed = bench.inputs(*shape)
    print(f"\ninput checks at {shape[0]}x{shape[1]}: ratio to BCE-with-logits with check_inputs=True / False")
    print("| loss | checks on | checks off |")
    print("|---|---|---|")
    for name in names:
        row = []
        for check in (True, False):
            loss, reason = bench.build(name, shape[1], train_observed, check_inputs=check)
            if loss is None:
                row.append("n/a")
                continue
            try:
                row.append(f"{bench.ratio(loss, logits, observed, full, index)[2]:.2f}")
            except Exception as err:
                row.append(f"error: {type(err).__name__}")
        print(f"| {name} | {row[0]} | {row[1]} |")


def role_dense_vs_sparse(bench: Bench) -> None:
    """Print ``role`` with a dense vs a sparse estimator gradient at N = ``--num-examples``.

    Args:
        bench: The timing harness.
    """
    shape = SHAPES[-1]
    logits, observed, full, index, train_observed = bench.inputs(*shape)
    n = bench.args.num_examples
    print(f"\nrole at {shape[0]}x{shape[1]}, N={n}: estimator gradient dense vs sparse")
    print("| role | ms | BCE-with-logits ms | ratio | ratio (medians) | target |")
    print("|---|---|---|---|---|---|")
    for sparse in (False, True):
        loss = spl_losses.create_loss("role", num_classes=shape[1], num_examples=n, expected_num_pos=EXPECTED_NUM_POS,
                                      observed_labels=train_observed, sparse=sparse, seed=0).to(bench.device)
        ms, ref_ms, ratio, median_ratio = bench.ratio(loss, logits, observed, full, index)
        target = (("ok" if ratio <= ROLE_SPARSE_TARGET else "MISS") + f" (<= {ROLE_SPARSE_TARGET:g}x)") if sparse else \
            "none (dense Adam, cost grows with N)"
        print(f"| {'sparse=True' if sparse else 'dense (default)'} | {ms:.3f} | {ref_ms:.3f} | {ratio:.2f} | {median_ratio:.2f} | {target} |")


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, in MB on Linux


def memory_check(bench: Bench, steps: int = 5) -> None:
    """Check that ROLE's estimator at N=100,000, C=1,000 is held once in float32 and not copied per step.

    Args:
        bench: The timing harness (for the device).
        steps: Training steps (forward, backward, SparseAdam step) to run.
    """
    n, c = MEMORY_CHECK_SHAPE
    batch_size = SHAPES[-1][0]
    gen = torch.Generator().manual_seed(1)
    print(f"\nmemory: role sparse=True with N={n:,}, C={c:,} (estimator float32 = {n * c * 4 / 2 ** 20:.0f} MiB)")
    rss_start = _rss_mb()
    train_observed = spml_observed(n, c, gen, dtype=torch.int8)
    loss = spl_losses.create_loss("role", num_classes=c, num_examples=n, expected_num_pos=EXPECTED_NUM_POS,
                                  observed_labels=train_observed, sparse=True, seed=0).to(bench.device)
    del train_observed
    estimator = loss.estimator.logits
    ptr, nbytes = estimator.data_ptr(), estimator.untyped_storage().nbytes()
    param_bytes = sum(p.untyped_storage().nbytes() for p in loss.parameters())
    rss_built = _rss_mb()
    logits = torch.randn(batch_size, c, generator=gen).to(bench.device).requires_grad_()
    targets = spml_observed(batch_size, c, gen).to(bench.device)
    optimizer = torch.optim.SparseAdam([estimator], lr=1e-3)
    rss_after_first = None
    for step in range(steps):
        index = torch.randint(0, n, (batch_size,), generator=gen).to(bench.device)
        optimizer.zero_grad(set_to_none=True)
        logits.grad = None
        loss(logits, targets, index=index).backward()
        optimizer.step()
        if step == 0:
            rss_after_first = _rss_mb()  # SparseAdam's two moment buffers are allocated on the first step
    rss_end = _rss_mb()
    print(f"estimator dtype {estimator.dtype}, storage {nbytes / 2 ** 20:.0f} MiB, all loss parameters "
          f"{param_bytes / 2 ** 20:.0f} MiB, same storage after {steps} steps: {estimator.data_ptr() == ptr}")
    print(f"process RSS: start {rss_start:.0f} MiB, after building {rss_built:.0f} MiB "
          f"(+{rss_built - rss_start:.0f}), after step 1 {rss_after_first:.0f} MiB "
          f"(SparseAdam moments: 2 x {nbytes / 2 ** 20:.0f} MiB), after step {steps} {rss_end:.0f} MiB "
          f"(+{rss_end - rss_after_first:.0f} over steps 2..{steps})")
    ok = estimator.data_ptr() == ptr and param_bytes == nbytes and rss_end - rss_after_first < 0.25 * nbytes / 2 ** 20
    print("estimator held once, not copied per step:", "ok" if ok else "MISS")


def dispatch_cost(bench: Bench, repeats: int = 20000) -> None:
    """Print the time of ``loss.batch_share()`` (called by every loss call) next to a forward+backward.

    Args:
        bench: The timing harness.
        repeats: Calls timed.
    """
    loss = spl_losses.create_loss("an")
    logits, observed, full, index, _ = bench.inputs(16, 20)
    step_ms = min(paired_times(forward_backward(loss, logits, observed, None, []), lambda: None, bench.device,
                               bench.args.repeats, bench.args.warmup)[0]) * 1e3
    print("\nbatch-split dispatch per call (batch_share), against one forward+backward of an at 16x20")
    print("| split | us per call | share of the step |")
    print("|---|---|---|")
    for enabled in (False, True):  # on: still no process group here, so no share
        loss.set_batch_split(enabled)
        start = time.perf_counter()
        for _ in range(repeats):
            loss.batch_share()
        us = (time.perf_counter() - start) / repeats * 1e6
        print(f"| {'on, no process group' if enabled else 'off (default)'} | {us:.3f} | {us / (step_ms * 1000):.3%} |")


def _split_child(rank: int, world_size: int, init_file: str, out_file: str, names: List[str], args) -> None:
    """One of the forked processes of :func:`split_batch_table`: rank 0 writes the measurements."""
    from spl_losses.losses import _distributed

    torch.set_num_threads(args.threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    bench, rows = Bench(args), []
    try:
        probe = torch.zeros(3, dtype=torch.float64)  # a bare all-gather of 24 bytes: the collective's latency
        gather = lambda: torch.distributed.all_gather_into_tensor(probe.new_empty(3 * world_size), probe)  # noqa: E731
        rows.append(("(all-gather of 24 bytes alone)", (0, 0), 1, 24, 0.0, min(_wall_times(gather, args)) * 1e3))
        for shape in SPLIT_SHAPES:
            logits, observed, full, index, train_observed = bench.inputs(*shape)  # the same on every process
            share = slice(rank * shape[0] // world_size, (rank + 1) * shape[0] // world_size)
            local = logits.detach()[share].clone().requires_grad_()
            for name in names:
                loss, _ = bench.build(name, shape[1], train_observed)
                if loss is None:
                    continue
                loss.set_epoch(SPLIT_EPOCH)
                targets = (full if loss.target_encoding == "multi_hot" else observed)[share]
                use_index = index[share] if loss.requires_index else None
                params = list(loss.parameters())
                step = forward_backward(loss, local, targets, use_index, params)
                alone = min(_wall_times(step, args))
                _distributed.exchange_log = []
                with spl_losses.losses.split_batches(loss):
                    step()
                    log, _distributed.exchange_log = _distributed.exchange_log, None
                    split = min(_wall_times(step, args))
                sent = sum(size for _, size in log) // world_size
                rows.append((name, shape, len(log), sent, alone * 1e3, split * 1e3))
        if rank == 0:
            torch.save(rows, out_file)
    finally:
        torch.distributed.destroy_process_group()


def _wall_times(step: Callable[[], None], args) -> List[float]:
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


SPLIT_SHAPES = [(16, 80), (256, 1000)]
SPLIT_EPOCH = 9  # the last of 10 epochs: the largest large-loss selections


def split_batch_table(args, names: List[str]) -> None:
    """Fork ``--processes`` gloo processes and print what each loss exchanges on a split batch, and its cost.

    Args:
        args: The parsed command line.
        names: Registered loss names.
    """
    import tempfile

    from torch.multiprocessing import start_processes

    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "rows.pt")
        start_processes(_split_child, args=(args.processes, os.path.join(tmp, "init"), out_file, names, args),
                        nprocs=args.processes, start_method="fork")
        rows = torch.load(out_file)
    print(f"\nbatch split over {args.processes} gloo CPU processes, epoch {SPLIT_EPOCH + 1} of 10: per step and "
          "process, the collectives, the bytes sent (each receives P times that) and the forward+backward wall "
          "time of the share, computed alone vs. split (minimum over repeats)")
    print("| loss | B x C | collectives | bytes sent | alone ms | split ms |")
    print("|---|---|---|---|---|---|")
    for name, (b, c), count, sent, alone, split in rows:
        print(f"| {name} | {f'{b}x{c}' if b else '-'} | {count} | {sent:,} | {alone:.3f} | {split:.3f} |")


def main(argv=None) -> int:
    """Run the benchmark.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = spl_losses.list_losses(args.losses.split(",")) if args.losses else spl_losses.list_losses()
    print(f"torch {torch.__version__}, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}, N {args.num_examples}")
    bench = Bench(args)
    if "role" in names and not args.skip_memory_check:
        memory_check(bench)  # first, so that the RSS readings start from a clean process
    ratio_table(bench, names)
    check_cost_table(bench, names)
    if "role" in names:
        role_dense_vs_sparse(bench)
    dispatch_cost(bench)
    if args.processes >= 2:
        split_batch_table(args, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
