"""Learning-rate grid points trained together in one data pass give what training each alone gives.

- The epoch loop (``train_head_group_epoch``) against a plain loop written here (``nn.Linear``, autograd,
  ``torch.optim.Adam``, one head at a time) for a loss with a batch statistic (epr), a selection (ll_r) and a
  per-example estimator (role): each head's own statistics, selection and estimator.
- Whole runs (the recipe's ``run`` of several points) against ``recipes/train.py`` training each point alone: the same
  per-epoch validation mAP, best epoch, test mAP, exported head and loss state, and the same run folder.
- Checkpoints: a group stopped with --stop-after continues alone, or in another group with a fresh point
  (points at different epochs), and ends where uninterrupted runs end.
"""
import json
import os

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_recipe import recipe
from torch import nn

import spl_losses
from spl_losses.training.linear import train_head_group_epoch
from spl_losses.training.parallel import epoch_permutation

LRS = ["0.3", "0.03", "0.003"]


@pytest.fixture(scope="module")
def features_data(tmp_path_factory):
    """A features dataset: 5 classes, 6-d features that carry the labels, single positives observed."""
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d", "e"]
    label_feature = datasets.List(datasets.ClassLabel(names=names))

    def split(n):
        labels = [sorted(rng.choice(5, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(n)]
        feats = np.asarray([[float(c in row) for c in range(5)] + [1.0] for row in labels]) + rng.normal(0, 0.7, (n, 6))
        return datasets.Dataset.from_dict(
            {"features": feats.astype(np.float32).tolist(), "labels": labels,
             "observed_labels": [[int(rng.choice(r))] for r in labels], "index": list(range(n))},
            features=datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": label_feature,
                                        "observed_labels": label_feature, "index": datasets.Value("int64")}))

    path = tmp_path_factory.mktemp("grid_data") / "feats"
    datasets.DatasetDict({"train": split(70), "validation": split(40), "test": split(40)}).save_to_disk(str(path))
    return str(path)


# ------------------------------------------------------------------------------------------------ the epoch loop
def _loss(name, n, c, targets):
    if name == "role":
        return spl_losses.create_loss("role", num_classes=c, num_examples=n, expected_num_pos=1.5,
                                      observed_labels=targets, seed=3)
    return spl_losses.create_loss(name, **({"expected_num_pos": 1.5} if name == "epr" else {}))


@pytest.mark.parametrize("name", ["an", "epr", "ll_r", "role"])
def test_epoch_loop_trains_each_head_as_a_plain_loop_trains_it_alone(name):
    g = torch.Generator().manual_seed(0)
    n, d, c, batch, epochs, lrs = 45, 7, 5, 8, 3, [0.2, 0.02, 0.002]
    x = torch.randn(n, d, generator=g)
    y = torch.zeros(n, c)
    y[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    starts = [nn.Linear(d, c) for _ in lrs]

    expected = []  # each head alone: autograd through F.linear, one Adam over head and estimator
    for start, lr in zip(starts, lrs):
        head, loss = nn.Linear(d, c), _loss(name, n, c, y)
        head.load_state_dict(start.state_dict())
        opt = torch.optim.Adam([{"params": list(head.parameters()), "lr": lr},
                                {"params": list(loss.parameters()), "lr": 10 * lr}], foreach=False)
        for epoch in range(epochs):
            loss.set_epoch(epoch)
            for idx in torch.split(epoch_permutation(n, 5, epoch), batch):
                opt.zero_grad()
                value = loss(F.linear(x[idx], head.weight, head.bias), y[idx], index=idx) if name == "role" \
                    else loss(F.linear(x[idx], head.weight, head.bias), y[idx])
                value.backward()
                opt.step()
        expected.append((head, loss))

    heads = [nn.Linear(d, c) for _ in lrs]
    for head, start in zip(heads, starts):
        head.load_state_dict(start.state_dict())
    losses = [_loss(name, n, c, y) for _ in lrs]
    optimizers = [[torch.optim.Adam([{"params": list(head.parameters()), "lr": lr},
                                     {"params": list(loss.parameters()), "lr": 10 * lr}], foreach=False)]
                  for head, loss, lr in zip(heads, losses, lrs)]
    for epoch in range(epochs):
        for loss in losses:
            loss.set_epoch(epoch)
        train_head_group_epoch(heads, losses, optimizers, x, y, epoch_permutation(n, 5, epoch), batch, block_steps=2)
    for (want_head, want_loss), head, loss in zip(expected, heads, losses):
        torch.testing.assert_close(head.weight, want_head.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.bias, want_head.bias, rtol=1e-5, atol=1e-6)
        for key, value in want_loss.state_dict().items():
            torch.testing.assert_close(loss.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(heads[0].weight, heads[2].weight)  # the learning rates differ, and so do the heads


def test_idle_heads_are_left_untouched_and_their_losses_uncalled():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g), torch.zeros(20, 3)
    y[:, 0] = 1
    heads = [nn.Linear(4, 3) for _ in range(3)]
    before = [h.weight.detach().clone() for h in heads]
    calls = []

    class Counting(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.h = h

        def forward(self, logits, targets):
            calls.append(self.h)
            return F.binary_cross_entropy_with_logits(logits, targets)

    optimizers = [[torch.optim.SGD(h.parameters(), lr=0.5)] for h in heads]
    out = train_head_group_epoch(heads, [Counting(h) for h in range(3)], optimizers, x, y, torch.arange(20), 8,
                                 active=[0, 2])
    assert out[1] is None and out[0] > 0 and out[2] > 0
    assert sorted(set(calls)) == [0, 2] and len(calls) == 6  # 3 batches (8, 8, 4) for each active head
    assert torch.equal(heads[1].weight, before[1])
    assert not torch.equal(heads[0].weight, before[0]) and not torch.equal(heads[2].weight, before[2])


def test_block_size_does_not_change_the_result_and_schedules_count_every_update():
    g = torch.Generator().manual_seed(2)
    n, d, c = 37, 5, 4
    x, y = torch.randn(n, d, generator=g), torch.zeros(n, c)
    y[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    start = nn.Linear(d, c)

    class Schedule:  # records the update counts it is told, as timm's step_update is called
        def __init__(self):
            self.seen = []

        def step_update(self, num_updates):
            self.seen.append(num_updates)

    outcomes = []
    for block_steps in (1, 2, 3, 100):
        heads = [nn.Linear(d, c) for _ in range(2)]
        for head in heads:
            head.load_state_dict(start.state_dict())
        losses = [_loss("role", n, c, y) for _ in heads]
        optimizers = [[torch.optim.Adam(list(h.parameters()) + list(l.parameters()), lr=lr)]
                      for h, l, lr in zip(heads, losses, (0.1, 0.01))]
        schedules = [Schedule(), Schedule()]
        means = train_head_group_epoch(heads, losses, optimizers, x, y, epoch_permutation(n, 1, 0), 8,
                                       schedulers=schedules, first_update=10, block_steps=block_steps)
        assert [s.seen for s in schedules] == [[11, 12, 13, 14, 15]] * 2  # 5 batches (8, 8, 8, 8, 5), after 10
        outcomes.append((means, [h.weight.detach().clone() for h in heads], [l.estimator.logits.detach().clone()
                                                                             for l in losses]))
    first = outcomes[0]
    for means, weights, estimators in outcomes[1:]:
        assert means == first[0]
        assert all(torch.equal(a, b) for a, b in zip(weights, first[1]))
        assert all(torch.equal(a, b) for a, b in zip(estimators, first[2]))
    with pytest.raises(ValueError, match="block_steps"):
        train_head_group_epoch(heads, losses, optimizers, x, y, torch.arange(n), 8, block_steps=0)
    with pytest.raises(ValueError, match="2 heads need 2 losses"):
        train_head_group_epoch(heads, losses[:1], optimizers, x, y, torch.arange(n), 8)


def test_heads_shared_among_threads_train_as_in_one_thread_and_as_alone():
    """workers: each head in one thread, the same bits as one thread and as each head trained alone."""
    g = torch.Generator().manual_seed(3)
    n, d, c = 41, 6, 4
    x, y = torch.randn(n, d, generator=g), torch.zeros(n, c)
    y[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    start = nn.Linear(d, c)
    lrs = (0.1, 0.03, 0.01)

    def train(groups, workers):
        heads = [nn.Linear(d, c) for _ in lrs]
        for head in heads:
            head.load_state_dict(start.state_dict())
        losses = [_loss("role", n, c, y) for _ in heads]
        optimizers = [[torch.optim.Adam([{"params": list(h.parameters()), "lr": lr},
                                         {"params": list(l.parameters()), "lr": 10 * lr}], fused=True)]
                      for h, l, lr in zip(heads, losses, lrs)]
        for epoch in range(2):
            for group in groups:
                train_head_group_epoch([heads[i] for i in group], [losses[i] for i in group],
                                       [optimizers[i] for i in group], x, y, epoch_permutation(n, 1, epoch), 8,
                                       workers=workers)
        return [torch.cat([h.weight.detach().flatten(), h.bias.detach(), l.estimator.logits.detach().flatten()])
                for h, l in zip(heads, losses)]

    together = train([[0, 1, 2]], 1)
    for groups, workers in (([[0, 1, 2]], 2), ([[0, 1, 2]], 3), ([[0], [1], [2]], 1)):
        assert all(torch.equal(a, b) for a, b in zip(train(groups, workers), together))


# ------------------------------------------------------------------------------------------------ whole runs
def _args(features_data, out, loss, lr, *extra, batch_size=8, epochs=3):
    args, _ = recipe.parse_args(["--dataset", features_data, "--train-mode", "linear_fixed_features", "--loss", loss,
                                 "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", lr, "--no-progress",
                                 "--output-dir", str(out), *extra])
    return args


def _metrics(folder):
    return [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]


def _assert_same_run(got, want):
    """Two run folders of the same point: the same validation curve, best epoch, test mAP, head and loss state."""
    a, b = json.load(open(os.path.join(got, "results.json"))), json.load(open(os.path.join(want, "results.json")))
    assert a["best_epoch"] == b["best_epoch"]
    assert a["val_map"] == pytest.approx(b["val_map"], abs=1e-4)
    assert a["test_map"] == pytest.approx(b["test_map"], abs=1e-4)
    got_log, want_log = _metrics(got), _metrics(want)
    assert [m["epoch"] for m in got_log] == [m["epoch"] for m in want_log]
    assert [m["val_map"] for m in got_log] == pytest.approx([m["val_map"] for m in want_log], abs=1e-4)
    assert [m["train_loss"] for m in got_log] == pytest.approx([m["train_loss"] for m in want_log], rel=1e-5)
    for name in ("model.safetensors", "loss_state.safetensors"):
        path = os.path.join(want, "model", name)
        if os.path.exists(path):
            mine, theirs = load_file(os.path.join(got, "model", name)), load_file(path)
            assert sorted(mine) == sorted(theirs)
            for key in theirs:
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,extra", [("an", []), ("epr", []), ("ll_r", []), ("role", []),
                                        ("role", ["--estimator-optimizer", "lazy_adam"])])
def test_grid_points_trained_together_equal_runs_trained_alone(tmp_path, features_data, loss, extra):
    from accelerate import Accelerator

    together = recipe.run([_args(features_data, tmp_path / "group" / lr, loss, lr, *extra) for lr in LRS],
                                  Accelerator())
    assert all(r is not None for r in together)
    for lr, results in zip(LRS, together):
        alone = recipe.train(_args(features_data, tmp_path / "alone" / lr, loss, lr, *extra))
        assert results["val_map"] == pytest.approx(alone["val_map"], abs=1e-4)
        folder = tmp_path / "group" / lr
        assert {"config.yaml", "metrics.jsonl", "results.json", "val_map.png", "model", "checkpoints"} <= \
            set(os.listdir(folder))
        assert open(folder / "config.yaml").read() == open(tmp_path / "alone" / lr / "config.yaml").read().replace(
            str(tmp_path / "alone"), str(tmp_path / "group"))
        _assert_same_run(folder, tmp_path / "alone" / lr)
    assert len({r["val_map"] for r in together}) > 1


def test_a_stopped_group_continues_alone_or_in_another_group(tmp_path, features_data):
    from accelerate import Accelerator

    def args(root, lr, *extra):
        return _args(features_data, tmp_path / root / lr, "role", lr, "--estimator-optimizer", "lazy_adam", *extra)

    stopped = recipe.run([args("run", lr, "--stop-after", "1") for lr in LRS[:2]], Accelerator())
    assert stopped == [None, None]
    assert [m["epoch"] for m in _metrics(tmp_path / "run" / LRS[0])] == [1]
    recipe.train(args("run", LRS[0], "--resume"))  # its checkpoint continues in a run of its own
    # the other continues from epoch 2 in a group with a fresh point (it trains epoch 1 alone, then both)
    recipe.run([args("run", lr, "--resume") for lr in LRS[1:]], Accelerator())
    for lr in LRS:
        recipe.train(args("straight", lr))
        assert [m["epoch"] for m in _metrics(tmp_path / "run" / lr)] == [1, 2, 3]
        _assert_same_run(tmp_path / "run" / lr, tmp_path / "straight" / lr)


def test_finished_points_are_reused_and_unlike_points_refused(tmp_path, features_data):
    from accelerate import Accelerator

    first = recipe.run([_args(features_data, tmp_path / "a", "an", "0.1", epochs=2)], Accelerator())
    stamp = os.path.getmtime(tmp_path / "a" / "results.json")
    again = recipe.run([_args(features_data, tmp_path / "a", "an", "0.1", "--resume", epochs=2)],
                               Accelerator())
    assert again == first and os.path.getmtime(tmp_path / "a" / "results.json") == stamp
    with pytest.raises(ValueError, match=r"differ only in lr.*batch_size"):
        recipe.run([_args(features_data, tmp_path / "b", "an", "0.1"),
                            _args(features_data, tmp_path / "c", "an", "0.1", batch_size=16)], Accelerator())
