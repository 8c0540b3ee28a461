"""How much of the gap between assume-negative and full labels each method closes, on real features, offline.

Data: 2x2 mosaics of scikit-learn's bundled handwritten digits (``spl_losses.data.digits_mosaic.make_mosaics``),
labels = the digits shown (k = 3.439 per image). The 1,797 source digits are split into disjoint pools:
10% to pretrain the backbone, 50% / 20% / 20% for the train / validation / test mosaics (4,000 / 1,000 /
1,000). Backbone: a small CNN trained to classify the single digits of its pool (a backbone "pretrained" on
another task: single-label digits), then frozen; features = its global-average-pooled last conv map on the
32-px mosaics (256-d), standardised. Every method trains a linear head on those fixed features (Adam,
batch 16, 25 epochs, learning rate in {1e-3, 1e-2}); the epoch and learning rate with the best validation
mAP (full labels) are kept and their test mAP reported, with ``gap = (mAP - AN) / (full - AN)``.

Teachers (``spl_losses.teachers``):

- ``zero-shot``: the backbone's own digit classifier (softmax over the 10 digits), the offline stand-in for
  a CLIP teacher: it knows the classes from its pretraining. ``global`` scores the whole mosaic (VLPL's
  view); ``crops`` fuses it with the 2x2 grid of crops (AEVLP's multi-crop view, ``fusion="max"``);
- ``knn``: label propagation of the observed positives over the features' 10-NN graph;
- ``self``: an earlier run's linear head (EM's best head; ``self r2`` / ``r3``: the previous round's head).

Rules: ``thr t`` (ThresholdRule), ``top3`` (TopKRule), ``soft`` (SoftRule), ``prev`` (PrevalenceRule with
k = 3.439, margins 0.3 / 0.35). Losses: ``vlpl`` (beta 0.7, no negative term, as published; with ``prev``
beta = beta_neg = 1), ``gpr``.

    OMP_NUM_THREADS=1 python benchmarks/teacher_gap.py [--threads 1] [--seeds 0 1 2] [--no-baselines]

One seed takes about 3 minutes with ``--no-baselines`` and 8 with every baseline (one thread on a shared
2-core machine); the table reports the mean (± standard deviation) over ``--seeds``.
"""
import argparse
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spl_losses.data import sample_single_positive
from spl_losses.data.digits_mosaic import make_mosaics
from spl_losses.labels import indices_to_dense
from spl_losses.metrics import compute_metrics
from spl_losses.teachers import (KNNTeacher, ModelTeacher, PrevalenceRule, SoftRule, ThresholdRule, TopKRule,
                                 teacher_scores)
from spl_losses.training.linear import predict_linear, train_linear_epoch
from spl_losses.training.builders import build_loss
from spl_losses.training.parallel import epoch_permutation

BASELINES = ["an", "an_ls", "wan", "epr", "role", "em", "em_apl", "ll_r", "ll_ct", "ll_cp", "gr", "hill", "splc", "asl"]
EXPECTED_NUM_POS = 3.439  # 10 * (1 - 0.9 ** 4)
NUM_CLASSES = 10
SIZES = {"train": 4000, "validation": 1000, "test": 1000}


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


def gray_16px(image) -> torch.Tensor:
    """The CNN's view preprocessing: grey, 16 x 16 (a mosaic cell), values in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("L").resize((16, 16), resample=2), np.float32) / 255.0)[None]


def build(data_seed: int):
    """The mosaic splits (``datasets`` with PIL images and full labels) and the frozen backbone."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, targets = bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    pools = source_pools(len(targets), data_seed)
    splits = {}
    for salt, name in enumerate(SIZES, start=11):
        pixels, _, labels = make_mosaics(images, targets, pools[name], SIZES[name], data_seed, salt, image_size=32)
        splits[name] = (pixels, labels)
    digits = torch.tensor(images[pools["pretrain"]], dtype=torch.float32).div(16.0)
    digits = digits.repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(1)  # 16 px, as in the mosaics
    backbone = pretrain_backbone(digits, torch.from_numpy(targets[pools["pretrain"]]), data_seed)
    return splits, backbone


def as_dataset(pixels: np.ndarray, labels: List[List[int]], observed: List[List[int]]) -> datasets.Dataset:
    from PIL import Image

    names = [str(d) for d in range(NUM_CLASSES)]
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.List(datasets.ClassLabel(names=names)),
                                  "observed_labels": datasets.List(datasets.ClassLabel(names=names)),
                                  "index": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(p).convert("RGB") for p in pixels], "labels": labels,
                                       "observed_labels": observed, "index": list(range(len(labels)))},
                                      features=features)


# ---------------------------------------------------------------------------------------------- training
class Bench:
    """Features, labels and the training loop of one seed."""

    def __init__(self, splits, backbone: DigitCNN, seed: int, epochs: int, lrs: List[float]):
        self.seed, self.epochs, self.lrs = seed, epochs, lrs
        self.labels, self.observed, raw = {}, None, {}
        for salt, (name, (pixels, labels)) in enumerate(splits.items()):
            self.labels[name] = indices_to_dense(labels, NUM_CLASSES)
            with torch.no_grad():
                raw[name] = backbone.features(torch.from_numpy(pixels).float().div(255.0).unsqueeze(1))
        observed = sample_single_positive(splits["train"][1], seed=seed, salt=1).positives
        self.train_split = as_dataset(*splits["train"], observed)
        self.observed = indices_to_dense(observed, NUM_CLASSES)
        mean, std = raw["train"].mean(0), raw["train"].std(0) + 1e-6
        self.features = {name: (x - mean) / std for name, x in raw.items()}
        self.n = len(self.observed)

    def train(self, make_loss: Callable[[], nn.Module], targets: Optional[torch.Tensor] = None):
        """Best (validation mAP, test mAP, head) over the learning rates and epochs."""
        targets = self.observed if targets is None else targets
        best = (-1.0, 0.0, None)
        for lr in self.lrs:
            torch.manual_seed(self.seed)
            head, loss = nn.Linear(self.features["train"].shape[1], NUM_CLASSES), make_loss()
            params = list(head.parameters()) + [p for p in loss.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=lr)
            for epoch in range(self.epochs):
                loss.set_epoch(epoch)
                train_linear_epoch(head, loss, [optimizer], self.features["train"], targets,
                                   epoch_permutation(self.n, self.seed, epoch), 16)
                val = compute_metrics(predict_linear(head, self.features["validation"]), self.labels["validation"])["map"]
                if val > best[0]:
                    test = compute_metrics(predict_linear(head, self.features["test"]), self.labels["test"])["map"]
                    best = (val, test, nn.Linear(head.in_features, NUM_CLASSES).requires_grad_(False))
                    best[2].load_state_dict(head.state_dict())
                if loss.needs_predictions and loss.predictions_due:
                    loss.update_from_predictions(torch.sigmoid(predict_linear(head, self.features["train"])))
        return best

    def baseline(self, name: str):
        return self.train(lambda: build_loss(name, NUM_CLASSES, self.n, observed_labels=self.observed,
                                             expected_num_pos=EXPECTED_NUM_POS, num_epochs=self.epochs, seed=self.seed),
                          targets=self.labels["train"] if name == "bce" else None)

    def with_pseudo_labels(self, loss_name: str, pseudo: torch.Tensor, **options):
        extra = {"expected_num_pos": EXPECTED_NUM_POS, "num_epochs": self.epochs} if loss_name == "gpr" else {}
        return self.train(lambda: build_loss(loss_name, NUM_CLASSES, self.n, options=dict(pseudo_labels=pseudo,
                                                                                             **extra, **options)))

    def pseudo_label_quality(self, pseudo: torch.Tensor) -> str:
        """Precision of the positive / negative pseudo-labels on unknown entries, and the recall of positives."""
        truth, unknown = self.labels["train"] == 1, self.observed == 0
        pos, neg = (pseudo > 0) & unknown, (pseudo < 0) & unknown
        hidden = int((truth & unknown).sum())
        text = f"+{int(pos.sum())} (prec {float((pos & truth).sum()) / max(int(pos.sum()), 1):.2f}, " \
               f"rec {float((pos & truth).sum()) / hidden:.2f})"
        if neg.any():
            text += f" -{int(neg.sum())} (prec {float((neg & ~truth).sum()) / int(neg.sum()):.2f})"
        return text


def teacher_rows(bench: Bench, backbone: DigitCNN, em_head: nn.Linear, cache_dir: str, timings: Dict[str, float]):
    """(name, result, pseudo-label quality) of every teacher-based method."""
    observed, split = bench.observed, bench.train_split
    prevalence = PrevalenceRule(EXPECTED_NUM_POS, positive_margin=0.3, negative_margin=0.35)
    scores = {}
    for name, grid in (("zero-shot global", 0), ("zero-shot crops", 2)):
        teacher = ModelTeacher(backbone, transform=gray_16px, activation="softmax", grid=grid, fusion="max", device="cpu")
        start = time.perf_counter()
        scores[name] = teacher_scores(teacher, split, cache_dir=cache_dir)
        timings[name] = 1000 * (time.perf_counter() - start) / len(split)
    start = time.perf_counter()
    scores["knn"] = teacher_scores(KNNTeacher(features=bench.features["train"]), split, cache_dir=cache_dir)
    timings["knn"] = 1000 * (time.perf_counter() - start) / len(split)
    scores["self"] = teacher_scores(ModelTeacher(em_head, features=bench.features["train"], device="cpu"), split,
                                    cache_dir=cache_dir)
    plans: List[Tuple[str, str, torch.Tensor, dict]] = [
        ("vlpl", "zero-shot global, thr 0.3", ThresholdRule(0.3)(scores["zero-shot global"], observed), {}),
        ("vlpl", "zero-shot crops, thr 0.3", ThresholdRule(0.3)(scores["zero-shot crops"], observed), {}),
        ("gpr", "zero-shot crops, top3 >= 0.5", TopKRule(3, 0.5)(scores["zero-shot crops"], observed), {}),
        ("vlpl", "zero-shot crops, prev", prevalence(scores["zero-shot crops"], observed), dict(beta=1.0, beta_neg=1.0)),
        ("vlpl", "knn, thr 0.9", ThresholdRule(0.9)(scores["knn"], observed), {}),
        ("vlpl", "knn, prev", prevalence(scores["knn"], observed), dict(beta=1.0, beta_neg=1.0)),
        ("vlpl", "self, thr 0.9", ThresholdRule(0.9)(scores["self"], observed), {}),
        ("vlpl", "self, soft", SoftRule()(scores["self"], observed), {}),
        ("gpr", "self, prev", prevalence(scores["self"], observed), {}),
        ("vlpl", "self, prev", prevalence(scores["self"], observed), dict(beta=1.0, beta_neg=1.0)),
    ]
    rows = []
    for loss_name, tag, pseudo, options in plans:
        result = bench.with_pseudo_labels(loss_name, pseudo, **options)
        rows.append((f"{loss_name} [{tag}]", result, bench.pseudo_label_quality(pseudo)))
    head = rows[-1][1][2]
    for round_index in (2, 3):  # self-training rounds: the previous round's head is the next teacher
        teacher = ModelTeacher(head, features=bench.features["train"], device="cpu")
        pseudo = prevalence(teacher_scores(teacher, split, cache_dir=cache_dir), observed)
        result = bench.with_pseudo_labels("vlpl", pseudo, beta=1.0, beta_neg=1.0)
        rows.append((f"vlpl [self r{round_index}, prev]", result, bench.pseudo_label_quality(pseudo)))
        head = result[2]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the single positives and heads")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the pools, mosaics and backbone")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--no-baselines", action="store_true", help="only bce, an, em and the teacher methods")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    splits, backbone = build(args.data_seed)
    print(f"data and backbone: {time.perf_counter() - start:.1f} s", flush=True)
    results: Dict[str, List[Tuple[float, float]]] = {}
    quality: Dict[str, str] = {}
    timings: Dict[str, float] = {}
    for seed in args.seeds:
        bench = Bench(splits, backbone, seed, args.epochs, args.lrs)
        names = ["bce", "an", "em"] if args.no_baselines else ["bce"] + BASELINES
        for name in names:
            outcome = bench.baseline(name)
            results.setdefault(name, []).append(outcome[:2])
            print(f"seed {seed} {name:<40} test {outcome[1]:.2f}", flush=True)
            if name == "em":
                em_head = outcome[2]
        with tempfile.TemporaryDirectory() as cache_dir:
            for name, outcome, text in teacher_rows(bench, backbone, em_head, cache_dir, timings):
                results.setdefault(name, []).append(outcome[:2])
                quality[name] = text
                print(f"seed {seed} {name:<40} test {outcome[1]:.2f}  pseudo-labels {text}", flush=True)
    full, an = statistics.mean(r[1] for r in results["bce"]), statistics.mean(r[1] for r in results["an"])
    print(f"\n{len(args.seeds)} seed(s); gap = (mAP - AN) / (full - AN), AN {an:.2f}, full labels {full:.2f}\n")
    print("| method | test mAP | gap closed | pseudo-labels on unknown entries (seed %d) |" % args.seeds[-1])
    print("|---|---|---|---|")
    for name, values in results.items():
        tests = [v[1] for v in values]
        spread = f" ± {statistics.stdev(tests):.2f}" if len(tests) > 1 else ""
        gaps = [100 * (t - an) / (full - an) for t in tests]
        print(f"| {name} | {statistics.mean(tests):.2f}{spread} | {statistics.mean(gaps):.0f}% | {quality.get(name, '')} |")
    print("\nteacher pass (first call: fingerprint, compute, cache write), seconds per 1,000 training images:")
    for name, seconds in timings.items():
        print(f"  {name}: {seconds:.2f}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
