"""Self-training rounds through the recipe: how much of the assume-negative -> full-label gap a teacher closes.

Everything trains through ``recipes/train.py`` as a user runs it (one subprocess per run, each reading its
``results.json``), on a features dataset this script writes once:

- data: 2x2 mosaics of scikit-learn's bundled handwritten digits (``spl_losses.data.digits_mosaic.make_mosaics``),
  labels = the digits shown (k = 10 (1 - 0.9^4) = 3.439 per image). The 1,797 source digits are split into
  disjoint pools: 10% to pretrain the backbone, 50% / 20% / 20% for the train / validation / test mosaics;
- backbone: a small CNN trained to classify the single digits of its pool (a backbone "pretrained" on another
  task), then frozen; features = its global-average-pooled last conv map on the 32-px mosaics (256-d),
  standardised by the train split's mean and standard deviation before they are saved (a user's data
  preparation; ``--raw-features`` saves them as extracted, where 25 epochs leave the heads short of converged);
- the dataset: ``{split}_features.npy`` / ``{split}_labels.npy`` / ``class_names.txt`` built by the
  ``multilabel_features`` builder (single positives drawn by the builder, seed 1200) into a ``save_to_disk``
  folder, as ``python -m spl_losses.data build multilabel_features`` writes it: the ``--dataset`` of every run.

Runs (``--train-mode linear_fixed_features``, Adam, batch 16, ``--epochs``, ``--expected-num-pos 3.439``; the
best of ``--lrs`` by validation mAP, the recipe's own best epoch):

- ``an`` (assume negative) and ``bce`` (full labels): the two ends of the gap;
- round 0: ``--loss em_apl`` (no teacher);
- round r >= 1: ``--loss vlpl --teacher model:<round r-1's run> --pseudo-label-rule prevalence``;
- oracle: ``--loss vlpl --teacher scores:<the true train labels .npy> --pseudo-label-rule prevalence``, the
  upper reference: a perfect teacher under the rounds' rule.

Printed per run, from its folder: test mAP (``results.json``), ``gap = (mAP - an) / (bce - an)``, the best
epoch, and for a teacher the pseudo-labels' counts and precision (``results.json``) with the rule's k and the
loss weights (``config.yaml``). Subprocesses run with ``OMP_NUM_THREADS=1`` (printed), ``SPL_LOSSES_CACHE``
and the datasets cache inside the work folder.

    python benchmarks/teacher_gap.py                 # 3 rounds, 4,000 training mosaics, 25 epochs, 2 lrs
    python benchmarks/teacher_gap.py --quick         # 1 round, 1,000 mosaics, 6 epochs, 1 lr
    python benchmarks/teacher_gap.py --work-dir runs/teacher_gap   # keep the dataset and run folders there

Measured on 2 cores shared with other work: ``--quick`` 29 s at load average 1, 52 s at 3; the default 224 s (with
``--jobs 2``). Each run costs about 6 CPU-seconds of start-up (the recipe's imports) besides its training.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "train.py")
EXPECTED_NUM_POS = 3.439  # 10 * (1 - 0.9 ** 4)
NUM_CLASSES = 10
THREADS = 1


# ---------------------------------------------------------------------------------------------- data, backbone
def source_pools(num_digits: int, seed: int) -> Dict[str, np.ndarray]:
    """Disjoint pools of source digits: pretrain 10%, train 50%, validation 20%, test 20%."""
    order = np.random.RandomState(seed).permutation(num_digits)
    cuts = np.cumsum([round(f * num_digits) for f in (0.1, 0.5, 0.2)])
    return dict(zip(("pretrain", "train", "validation", "test"), (np.sort(p) for p in np.split(order, cuts))))


class DigitCNN(nn.Module):
    """Three conv blocks, global average pooling, a linear digit classifier."""

    def __init__(self, width: int = 16, out: int = 256):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU())
        self.fc = nn.Linear(out, NUM_CLASSES)

    def features(self, x):
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def pretrain_backbone(digits: torch.Tensor, targets: torch.Tensor, seed: int, epochs: int = 10) -> DigitCNN:
    """Train the CNN on single 16-px digits (random shifts of up to 2 px), then freeze it."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(targets), generator=generator).split(32):
            dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
            loss = F.cross_entropy(model(torch.roll(digits[idx], (dy, dx), (2, 3))), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def write_feature_arrays(root: str, sizes: Dict[str, int], data_seed: int, standardize: bool = True) -> None:
    """``{split}_features.npy``, ``{split}_labels.npy`` (multi-hot) and ``class_names.txt`` under ``root``.

    Args:
        root: The folder (created).
        sizes: Mosaics per split.
        data_seed: Seed of the pools, the mosaics and the backbone.
        standardize: Standardise every split's features by the train split's mean and standard deviation.
    """
    from sklearn.datasets import load_digits

    from spl_losses.data.digits_mosaic import make_mosaics

    bunch = load_digits()
    images, targets = bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    pools = source_pools(len(targets), data_seed)
    digits = torch.tensor(images[pools["pretrain"]], dtype=torch.float32).div(16.0)
    digits = digits.repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(1)  # 16 px, as in the mosaics
    backbone = pretrain_backbone(digits, torch.from_numpy(targets[pools["pretrain"]]), data_seed)
    os.makedirs(root, exist_ok=True)
    features, labels = {}, {}
    for salt, name in enumerate(("train", "validation", "test"), start=11):
        pixels, _, labels[name] = make_mosaics(images, targets, pools[name], sizes[name], data_seed, salt,
                                               image_size=32)
        with torch.no_grad():
            features[name] = torch.cat([backbone.features(chunk) for chunk in
                                        torch.from_numpy(pixels).float().div(255.0).unsqueeze(1).split(500)])
    mean, std = features["train"].mean(0), features["train"].std(0) + 1e-6
    for name, rows in labels.items():
        multi_hot = np.zeros((len(rows), NUM_CLASSES), np.int64)
        for row, digits_shown in enumerate(rows):
            multi_hot[row, digits_shown] = 1
        values = (features[name] - mean) / std if standardize else features[name]
        np.save(os.path.join(root, f"{name}_features.npy"), values.numpy().astype(np.float32))
        np.save(os.path.join(root, f"{name}_labels.npy"), multi_hot)
    with open(os.path.join(root, "class_names.txt"), "w") as f:
        f.write("".join(f"{d}\n" for d in range(NUM_CLASSES)))


def child_env(work: str) -> Dict[str, str]:
    """The subprocesses' environment: one thread, caches inside ``work``, this checkout's ``spl_losses``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS),
               SPL_LOSSES_CACHE=os.path.join(work, "cache"), HF_DATASETS_CACHE=os.path.join(work, "hf_datasets"),
               HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU=os.environ.get("ACCELERATE_USE_CPU", "1"))
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def build_dataset_folder(work: str, sizes: Dict[str, int], data_seed: int, standardize: bool = True) -> str:
    """The features dataset built by ``multilabel_features`` and saved as ``python -m spl_losses.data build
    multilabel_features --data-dir RAW --output FOLDER`` saves it (in this process: one start-up less)."""
    from spl_losses.data import build_dataset

    raw, folder = os.path.join(work, "raw"), os.path.join(work, "dataset")
    write_feature_arrays(raw, sizes, data_seed, standardize)
    build_dataset("multilabel_features", root=raw, cache_dir=os.path.join(work, "hf_datasets")).save_to_disk(folder)
    return folder


def oracle_scores(dataset: str, path: str) -> str:
    """The true labels of the train split as an (N, C) .npy, row i = the example with ``index`` i."""
    train = datasets.load_from_disk(dataset)["train"]
    labels = np.zeros((len(train), NUM_CLASSES), np.float32)
    for index, row in zip(train["index"], train["labels"]):
        labels[index, row] = 1.0
    np.save(path, labels)
    return path


# ---------------------------------------------------------------------------------------------- runs
class Runner:
    """Runs of the recipe into ``work/runs/NAME[_lrX]``, the best learning rate by validation mAP."""

    def __init__(self, work: str, dataset: str, epochs: int, lrs: Sequence[float], seed: int, verbose: bool):
        self.work, self.dataset, self.epochs, self.lrs, self.seed = work, dataset, epochs, lrs, seed
        self.verbose = verbose
        self.env = child_env(work)

    def command(self, out: str, loss: str, lr: float, extra: Sequence[str]) -> List[str]:
        return [sys.executable, RECIPE, "--dataset", self.dataset, "--train-mode", "linear_fixed_features",
                "--loss", loss, "--epochs", str(self.epochs), "--batch-size", "16", "--lr", str(lr),
                "--expected-num-pos", str(EXPECTED_NUM_POS), "--seed", str(self.seed), "--no-progress",
                "--output-dir", out, *extra]

    def one(self, name: str, folder: str, loss: str, lr: float, extra: Sequence[str]) -> dict:
        out = os.path.join(self.work, "runs", folder if len(self.lrs) == 1 else f"{folder}_lr{lr:g}")
        command = self.command(out, loss, lr, extra)
        start = time.perf_counter()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - start
        if self.verbose:
            print(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}", flush=True)
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
            return {"name": name, "dir": out, "lr": lr, "seconds": seconds, "error": last[0],
                    "command": " ".join(command)}
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(out, "config.yaml")) as f:
            config = yaml.safe_load(f)
        return {"name": name, "dir": out, "lr": lr, "seconds": seconds, "results": results,
                "pseudo": pseudo_label_text(results, config)}

    def best(self, name: str, folder: str, loss: str, extra: Sequence[str] = ()) -> dict:
        """The run over ``lrs`` with the best validation mAP (the first failure if every lr failed)."""
        runs = [self.one(name, folder, loss, lr, extra) for lr in self.lrs]
        good = [r for r in runs if "results" in r]
        if not good:
            return runs[0]
        pick = max(good, key=lambda r: r["results"]["val_map"])
        pick["seconds"] = sum(r["seconds"] for r in runs)
        return pick

    def rounds(self, count: int) -> List[dict]:
        """Round 0 (``em_apl``), then ``count`` rounds of ``vlpl`` taught by the round before (prevalence rule)."""
        rows = [self.best("round 0: em_apl", "round0_em_apl", "em_apl")]
        for r in range(1, count + 1):
            if "results" not in rows[-1]:
                break
            rows.append(self.best(f"round {r}: vlpl, teacher round {r - 1}", f"round{r}_vlpl", "vlpl",
                                  ["--teacher", f"model:{rows[-1]['dir']}", "--pseudo-label-rule", "prevalence"]))
        return rows


def pseudo_label_text(results: dict, config: dict) -> str:
    """The run's pseudo-labels as its ``results.json`` counts them, and the k and loss weights its
    ``config.yaml`` records ("" without a teacher)."""
    counts = results.get("pseudo_labels")
    if not counts:
        return ""
    text = f"+{counts['positive']} / -{counts['negative']} of {counts['entries']}"
    if "positive_precision" in counts:
        text += f" (precision {100 * counts['positive_precision']:.0f}% / {100 * counts['negative_precision']:.0f}%)"
    k = (config.get("pseudo_label_options") or {}).get("expected_num_pos")
    weights = config.get("pseudo_label_loss_weights") or {}
    return text + f"; rule k {k}, " + ", ".join(f"{key} {value:g}" for key, value in weights.items())


def test_map(run: dict) -> Optional[float]:
    return run["results"]["test_map"] if "results" in run else None


def report(rows: List[dict], an: Optional[float], full: Optional[float]) -> None:
    print("\n| run | test mAP | gap closed | best epoch | lr | seconds | pseudo-labels (results.json; config.yaml) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        value = test_map(row)
        if value is None:
            print(f"| {row['name']} | failed | | | | {row['seconds']:.0f} | {row['error'][:150]} |")
            continue
        gap = f"{100 * (value - an) / (full - an):.0f}%" if an is not None and full is not None and full != an else ""
        epoch = row["results"].get("best_epoch", "")
        print(f"| {row['name']} | {value:.2f} | {gap} | {epoch} | {row['lr']:g} | {row['seconds']:.0f} "
              f"| {row['pseudo']} |")


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, 1,000 training mosaics, 6 epochs, lr 1e-2")
    parser.add_argument("--rounds", type=int, default=None,
                        help="self-training rounds after round 0 (default 3; 1 quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default 25; 6 quick)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="learning rates tried per run, the best by validation mAP (default 1e-3 1e-2; 1e-2 quick)")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's --seed")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the pools, mosaics and backbone")
    parser.add_argument("--raw-features", action="store_true",
                        help="save the features as extracted (default: standardised by the train split's statistics)")
    parser.add_argument("--jobs", type=int, default=3,
                        help="recipe runs at a time: the rounds one after another, an / bce / oracle beside them (3)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the scores: oracle run")
    parser.add_argument("--work-dir", default=None,
                        help="folder of the dataset and run folders (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--verbose", action="store_true", help="print each run's output")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    epochs = args.epochs or (6 if args.quick else 25)
    lrs = args.lrs or ([1e-2] if args.quick else [1e-3, 1e-2])
    sizes = {"train": 1000, "validation": 300, "test": 300} if args.quick else \
        {"train": 4000, "validation": 1000, "test": 1000}
    torch.set_num_threads(THREADS)
    datasets.disable_progress_bars()
    print(f"threads: OMP_NUM_THREADS={THREADS} in every recipe run; torch threads here {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(prefix="teacher_gap_")
    start = time.perf_counter()
    try:
        dataset = build_dataset_folder(work, sizes, args.data_seed, not args.raw_features)
        print(f"dataset {dataset}: train / validation / test {sizes['train']} / {sizes['validation']} / "
              f"{sizes['test']} mosaics, 256-d {'raw' if args.raw_features else 'standardised'} features "
              f"({time.perf_counter() - start:.0f} s); {epochs} epochs, "
              f"lr {' / '.join(f'{lr:g}' for lr in lrs)}, {rounds} round(s)", flush=True)
        runner = Runner(work, dataset, epochs, lrs, args.seed, args.verbose)
        others = [("an", "an", "an", []), ("bce", "bce", "bce", [])]
        if not args.no_oracle:
            oracle = oracle_scores(dataset, os.path.join(work, "oracle_scores.npy"))
            others.append(("oracle: vlpl, scores: true labels", "oracle_vlpl", "vlpl",
                           ["--teacher", f"scores:{oracle}", "--pseudo-label-rule", "prevalence"]))
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # the rounds' chain first, the others beside it
            chain = pool.submit(runner.rounds, rounds)
            baselines = list(pool.map(lambda plan: runner.best(*plan), others))
            rows = {row["name"]: row for row in baselines[:2] + chain.result() + baselines[2:]}
        an, full = test_map(rows["an"]), test_map(rows["bce"])
        report(list(rows.values()), an, full)
        print(f"\ngap = (mAP - an) / (bce - an); total {time.perf_counter() - start:.0f} s, "
              f"load average {os.getloadavg()[0]:.2f}; run folders under {os.path.join(work, 'runs')}"
              if args.work_dir or args.keep else
              f"\ngap = (mAP - an) / (bce - an); total {time.perf_counter() - start:.0f} s, "
              f"load average {os.getloadavg()[0]:.2f}")
        return list(rows.values())
    finally:
        if not (args.work_dir or args.keep):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
