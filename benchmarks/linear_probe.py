"""The linear probe as a user runs it: whole processes on a saved COCO-sized features dataset, against a
plain torch loop.

In one run, each as a whole process with one thread (``OMP_NUM_THREADS=1``), on the same saved
``datasets`` folder (65,665 x 2,048 train rows, 16,416 validation, 40,137 test, 80 classes, one observed
positive per training row; ``--quick``: a tenth of the rows):

- ``plain``: the yardstick, a dozen lines of plain torch (the Arrow columns read as numpy, ``nn.Linear``,
  ``BCEWithLogitsLoss`` on the observed positives, ``torch.optim.Adam``, shuffled batches of 16, lr 1e-3,
  validation mAP every epoch);
- ``recipe an`` and ``recipe role``: ``python recipes/train.py --dataset DIR --train-mode
  linear_fixed_features --loss an|role --epochs E --batch-size 16 --lr 1e-3 --no-progress``;
- ``grid an``: the 8-point ``--search`` (batch size {8, 16} x lr {1e-2, 1e-3, 1e-4, 1e-5}) for ``an``.

Each time is printed with its ratio to the plain loop, with the thread count, the versions and the load
average before and after (the machine may be shared: compare the ratios of one run)::

    python benchmarks/linear_probe.py [--epochs 25] [--quick] [--only plain an role grid] [--repeat 1]
        [--data DIR] [--baseline CHECKOUT]

``--baseline`` runs each recipe run of another checkout (e.g. ``git worktree add /tmp/base main``) beside
this one's. Wall seconds and CPU seconds (user + system of the process) are both printed: on a loaded
machine the CPU seconds are the steadier figure (the grid's CPU seconds add up its threads).

Measured on a shared 2-core AMD EPYC (torch 2.14.1, timm 1.0.31, datasets 5.2.0, accelerate 1.16.0, numpy
2.4.6, Python 3.11.7; one thread per process), full size. 25 epochs (load 1.2-3.3): plain 115.8 s wall /
112.8 s CPU; recipe an 94.0 s / 90.1 s (0.81x / 0.80x); recipe role (LazyAdam estimator) 190.4 s / 188.2 s
(2.03x recipe an). 5 epochs with ``--baseline`` (the version before the direct optimizer steps; load
2.2-6.9): plain 28.6 s / 28.1 s; an 33.7 / 25.7 (baseline 43.7 / 32.8); role 48.8 / 44.0 (baseline
86.6 / 53.5); grid 278.6 / 220.1 (baseline 307.3 / 276.1), every run with the baseline's results to the
last digit.
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The yardstick: what a careful user writes in a dozen lines of plain torch.
PLAIN_LOOP = r'''
import sys, warnings, numpy as np, torch, datasets; warnings.simplefilter("ignore")
from sklearn.metrics import average_precision_score
ds, epochs = datasets.load_from_disk(sys.argv[1]), int(sys.argv[2])
def column(split, name):
    col = ds[split].data.column(name).combine_chunks()
    return col.values.to_numpy().reshape(len(col), -1)
def dense(split, name, c=80):
    col = ds[split].data.column(name).combine_chunks(); m = np.zeros((len(col), c), np.float32)
    m[np.repeat(np.arange(len(col)), np.diff(col.offsets.to_numpy())), col.values.to_numpy()] = 1; return m
x, y = torch.from_numpy(column("train", "features")), torch.from_numpy(dense("train", "observed_labels"))
xv, yv = torch.from_numpy(column("validation", "features")), dense("validation", "labels")
torch.manual_seed(0)
head, loss_fn = torch.nn.Linear(x.shape[1], y.shape[1]), torch.nn.BCEWithLogitsLoss()
opt = torch.optim.Adam(head.parameters(), lr=1e-3)
for epoch in range(epochs):
    for idx in torch.randperm(len(x)).split(16):
        opt.zero_grad(); loss_fn(head(x[idx]), y[idx]).backward(); opt.step()
    with torch.no_grad():
        scores = head(xv).numpy()
    print(f"epoch {epoch + 1}: val mAP {100 * average_precision_score(yv, scores, average='macro'):.2f}", flush=True)
'''


def load_average():
    """The 1-minute load average (other processes competing for the cores), or '?'."""
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def coco_sized_features(seed=0):
    """Random COCO-sized tensors (for the in-process benchmarks, e.g. linear_grid.py): (65,665 x 2,048) training
    and (16,416 x 2,048) validation features (non-negative) and 80 classes, one observed positive per row.

    Args:
        seed: Seed of the draws.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    n, d, c, n_val = 65665, 2048, 80, 16416
    features = torch.randn(n, d, generator=g).relu_()
    val_features = torch.randn(n_val, d, generator=g).relu_()
    targets = torch.zeros(n, c)
    targets[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    return features, val_features, targets


def write_features_dataset(path, quick=False, seed=0):
    """Save random COCO-sized features as a ``datasets`` folder (fixed-length float32 ``features``, ``labels``,
    ``observed_labels`` with one positive per row, ``index``); features carry the labels a little.

    Args:
        path: The folder.
        quick: A tenth of the rows.
        seed: Seed of the draws.
    """
    import datasets
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    d, c = 2048, 80
    sizes = {"train": 65665, "validation": 16416, "test": 40137}
    if quick:
        sizes = {k: v // 10 for k, v in sizes.items()}
    names = [f"class_{i}" for i in range(c)]
    label = datasets.List(datasets.ClassLabel(names=names))
    features = datasets.Features({"features": datasets.List(datasets.Value("float32"), length=d), "labels": label,
                                  "observed_labels": label, "index": datasets.Value("int64")})
    prototypes = rng.standard_normal((c, d)).astype(np.float32)
    splits = {}
    for split, n in sizes.items():
        counts = rng.integers(1, 5, n)
        rows = np.repeat(np.arange(n), counts)
        values = rng.integers(0, c, len(rows))
        keep = np.ones(len(rows), bool)  # drop repeats of a class within a row
        order = np.lexsort((values, rows))
        rows, values = rows[order], values[order]
        keep[1:] = (rows[1:] != rows[:-1]) | (values[1:] != values[:-1])
        rows, values = rows[keep], values[keep]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
        x = rng.standard_normal((n, d), dtype=np.float32)
        np.add.at(x, rows, 0.08 * prototypes[values])
        np.maximum(x, 0, out=x)
        observed = values[offsets[:-1] + rng.integers(0, np.diff(offsets))]
        table = pa.table({
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
            "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int64))),
            "observed_labels": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                        pa.array(observed.astype(np.int64))),
            "index": pa.array(np.arange(n, dtype=np.int64))})
        splits[split] = datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))
    datasets.DatasetDict(splits).save_to_disk(path)


def timed(command, env, cwd=ROOT):
    """Run a whole process; its wall seconds, its CPU seconds (user + system) and the last line it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return seconds, cpu, (lines[-1] if lines else "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="a tenth of the rows (a short check)")
    p.add_argument("--only", nargs="+", default=["plain", "an", "role", "grid"],
                   choices=["plain", "an", "role", "grid"])
    p.add_argument("--repeat", type=int, default=1, help="rounds of all runs (interleaved)")
    p.add_argument("--data", default=None, help="a features folder to write once and reuse (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--baseline", default=None, help="a checkout of another version: its recipe runs too, each "
                   "beside this one's (same data, interleaved)")
    args = p.parse_args()
    import accelerate
    import datasets
    import numpy
    import timm
    import torch

    work = tempfile.mkdtemp(prefix="linear_probe_")
    data = args.data or os.path.join(work, "features")
    if not os.path.isdir(data):
        start = time.perf_counter()
        write_features_dataset(data, args.quick)
        print(f"wrote {data} in {time.perf_counter() - start:.0f} s", flush=True)
    e = str(args.epochs)
    roots = {"": ROOT} if args.baseline is None else {"": ROOT, "@base": os.path.abspath(args.baseline)}

    def env_of(root):
        return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
                    PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def recipe(root, *flags):
        return [sys.executable, os.path.join(root, "recipes", "train.py"), "--dataset", data, "--train-mode",
                "linear_fixed_features", "--epochs", e, "--no-progress", *flags]

    commands = {}  # name -> (command, root)
    for name in args.only:
        if name == "plain":
            commands["plain"] = ([sys.executable, "-c", PLAIN_LOOP, data, e], ROOT)
            continue
        flags = {"an": ["--loss", "an", "--batch-size", "16", "--lr", "1e-3"],
                 "role": ["--loss", "role", "--batch-size", "16", "--lr", "1e-3"],
                 "grid": ["--loss", "an", "--search"]}[name]
        for tag, root in roots.items():
            commands[name + tag] = (recipe(root, *flags), root)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, timm {timm.__version__}, datasets "
          f"{datasets.__version__}, accelerate {accelerate.__version__}, numpy {numpy.__version__}; one thread per "
          f"process (OMP_NUM_THREADS=1), {os.cpu_count()} cores; {args.epochs} epochs; data {data}"
          f"{' (quick)' if args.quick else ''}; load average {load_average()}", flush=True)
    times = {name: [] for name in commands}
    for round_ in range(args.repeat):
        for name, (command, root) in commands.items():
            out = os.path.join(work, f"{name}_{round_}")
            seconds, cpu, last = timed(command + ([] if name == "plain" else ["--output-dir", out]), env_of(root), root)
            times[name].append((seconds, cpu))
            print(f"  {name:<11} {seconds:8.1f} s wall {cpu:8.1f} s CPU  (load {load_average()})  {last[:100]}",
                  flush=True)
    base = min(times["plain"]) if "plain" in times else None
    print(f"\n{'run':<40} {'wall s':>8} {'x plain':>8} {'CPU s':>8} {'x plain':>8}")
    labels = {"plain": "plain torch loop", "an": "recipe an", "role": "recipe role",
              "grid": "8-point --search grid (an)"}
    for name, values in times.items():
        wall, cpu = min(values)
        label = labels[name.split("@")[0]] + (" [baseline]" if "@" in name else "")
        ratios = (f"{wall / base[0]:8.2f} {cpu:8.1f} {cpu / base[1]:8.2f}" if base else f"{'-':>8} {cpu:8.1f} {'-':>8}")
        print(f"{label:<40} {wall:8.1f} {ratios}")
    for tag in roots:
        if "an" + tag in times and "role" + tag in times:
            print(f"{'recipe role / recipe an' + tag:<40} {min(times['role' + tag])[0] / min(times['an' + tag])[0]:8.2f}")
    print(f"load average now {load_average()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
