"""Reading whole columns of a saved split: spl_losses.data.columns against the per-row paths.

A COCO-sized synthetic training split (65,665 rows, 2,048 float32 features, 80 classes, 1-3 labels
and one observed positive per row) is saved with ``save_to_disk`` and loaded back (memory-mapped),
once in one file and once in the default shards, then read:

- features: ``feature_matrix(split)`` against ``np.asarray(split.with_format("numpy")["features"])``
  (on datasets 5 a lazy ``Column`` that numpy iterates row by row; ``--old-rows`` times the old path on
  the first rows only and scales it linearly, since it is per row, unless ``--old-rows 0``: all rows);
- labels: ``label_matrix(split, "labels", 80)`` against ``indices_to_dense(split["labels"], 80)``
  (the recipe's previous ``dense_labels``), and ``has_full_labels`` against the per-row comparison
  on a split whose labels are its single positives (the per-row loop then reads every row).

    python benchmarks/column_reads.py [--rows 65665] [--dim 2048] [--old-rows 8192] [--repeats 3]

Prints the datasets / pyarrow / numpy / torch versions and the torch thread count (1), the best time
of ``--repeats`` runs of each path and the ratios old / new.
"""
import argparse
import os
import tempfile
import time

import datasets
import numpy as np
import pyarrow as pa
import torch

from spl_losses.data.columns import feature_matrix, label_matrix
from spl_losses.labels import indices_to_dense
from spl_losses.training.label_matrices import has_full_labels

NUM_CLASSES = 80


def synthetic_split(rows: int, dim: int, seed: int = 0) -> datasets.Dataset:
    """A features split of the SPML contract, built directly as an Arrow table."""
    rng = np.random.default_rng(seed)
    values = np.maximum(rng.standard_normal((rows, dim), dtype=np.float32), 0)
    counts = rng.integers(1, 4, size=rows)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    labels = rng.integers(0, NUM_CLASSES, size=int(offsets[-1]))
    observed = labels[offsets[:-1]]
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    label_type = datasets.List(datasets.ClassLabel(names=names))
    features = datasets.Features({"features": datasets.List(datasets.Value("float32"), length=dim),
                                  "labels": label_type, "observed_labels": label_type,
                                  "index": datasets.Value("int64")})
    table = pa.table({
        "features": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim),
        "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
        "observed_labels": pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32)), pa.array(observed)),
        "index": pa.array(np.arange(rows, dtype=np.int64)),
    })
    return datasets.Dataset(table.cast(features.arrow_schema))


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def old_has_full_labels(split) -> bool:
    full, observed = split["labels"], split["observed_labels"]
    return any(sorted(a) != sorted(b) for a, b in zip(full, observed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=65665)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--old-rows", type=int, default=8192, help="rows the old feature path reads (0: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"datasets {datasets.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}, "
          f"torch {torch.__version__}; torch threads {torch.get_num_threads()}; "
          f"load average {open('/proc/loadavg').read().split()[0] if os.path.exists('/proc/loadavg') else '?'}")
    split = synthetic_split(args.rows, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        for name, shard in (("one file", "100GB"), ("default shards", None)):
            path = os.path.join(tmp, name.replace(" ", "_"))
            split.save_to_disk(path, **({"max_shard_size": shard} if shard else {}))
            saved = datasets.load_from_disk(path)
            chunks = saved.data.table.column("features").num_chunks
            new = best_time(lambda: feature_matrix(saved), args.repeats)
            old_rows = args.old_rows or args.rows
            part = saved.select(range(min(old_rows, args.rows))) if old_rows < args.rows else saved
            old = best_time(lambda: np.asarray(part.with_format("numpy")["features"]), 1) * args.rows / len(part)
            scaled = "" if len(part) == args.rows else f" (timed on {len(part):,} rows, scaled)"
            print(f"features {args.rows:,} x {args.dim} saved in {name} ({chunks} chunk(s)): feature_matrix "
                  f"{new:.3f} s, np.asarray(with_format('numpy')) {old:.2f} s{scaled}: {old / new:.0f}x")
        shuffled = saved.shuffle(seed=0)
        print(f"features of a shuffled view (indices mapping): feature_matrix "
              f"{best_time(lambda: feature_matrix(shuffled), args.repeats):.3f} s")
        new = best_time(lambda: label_matrix(saved, "labels", NUM_CLASSES), args.repeats)
        old = best_time(lambda: indices_to_dense(saved["labels"], NUM_CLASSES), args.repeats)
        assert torch.equal(label_matrix(saved, "labels", NUM_CLASSES), indices_to_dense(saved["labels"], NUM_CLASSES))
        print(f"labels (N, {NUM_CLASSES}): label_matrix {new:.3f} s, indices_to_dense(split['labels']) "
              f"{old:.3f} s: {old / new:.0f}x")
        table = saved.data.table  # single positives only (labels == observed_labels): every row compared
        same = datasets.Dataset(table.set_column(table.schema.get_field_index("labels"), "labels",
                                                 table.column("observed_labels")))
        assert not has_full_labels(same) and not old_has_full_labels(same)
        new = best_time(lambda: has_full_labels(same), args.repeats)
        old = best_time(lambda: old_has_full_labels(same), args.repeats)
        print(f"has_full_labels (labels equal to observed_labels): vectorised {new:.3f} s, per row {old:.3f} s: "
              f"{old / new:.0f}x")


if __name__ == "__main__":
    main()
