"""The label estimator's optimizers in the recipe (spl_losses.training.builders): LazyAdam is dense Adam.

ROLE trains a linear head and its (N, C) estimator for a few hundred random batches three ways: dense
``torch.optim.Adam`` over both (the reference's optimizer, written out here), and the recipe's optimizer
with ``lazy_adam`` (sparse estimator gradients, LazyAdam, rows caught up by the estimator's reads) once
straight through and once saved mid-way and restored into new objects the way the recipe's checkpoint
does (the module's tensors through safetensors, the optimizer's state through ``torch.save`` and
``torch.load(weights_only=True)``, which refuses anything but plain tensors and numbers).
"""
import io

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

import spl_losses
from spl_losses.optim import CombinedOptimizer, LazyAdam
from spl_losses.training.builders import (LAZY_ADAM_MIN_ENTRIES, LAZY_ADAM_MIN_ENTRIES_ACCELERATOR,
                                         attach_estimator_optimizer, build_optimizer, estimator_optimizer,
                                         param_groups)

N, C, D, K = 60, 4, 5, 1.2
LR, STEPS, SAVE_AT = 1e-2, 300, 140


def data():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(N, D, generator=gen)
    observed = torch.zeros(N, C)
    observed[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1.0
    observed[::7, (torch.arange(N)[::7] + 1) % C] = -1.0  # a few observed negatives
    # random batches of 1 to 9 rows (a row may repeat within one), skipping rows for up to ~100 steps
    batches = [torch.randint(0, N, (int(torch.randint(1, 10, (1,), generator=gen)),), generator=gen)
               for _ in range(STEPS)]
    return features, observed, batches


def build(observed, estimator):
    torch.manual_seed(0)
    head = nn.Linear(D, C)
    loss = spl_losses.create_loss("role", num_classes=C, num_examples=N, expected_num_pos=K, observed_labels=observed,
                                  seed=0, sparse=estimator in ("lazy_adam", "sparse_adam"))
    module = nn.ModuleDict({"head": head, "loss": loss})
    if estimator == "torch_adam":  # the reference, built by hand: one Adam, the estimator's group at 10x
        optimizer = torch.optim.Adam([{"params": head.parameters()}, {"params": loss.parameters(), "lr": 10 * LR}],
                                     lr=LR)
    else:
        groups = param_groups(LR, head=list(head.parameters()), loss_state=list(loss.parameters()))
        optimizer = build_optimizer(groups, "adam", estimator=estimator)
        attach_estimator_optimizer(loss, optimizer)  # the estimator catches its rows up through its optimizer
    return module, optimizer


def checkpoint_round_trip(module, optimizer, observed, estimator):
    """Save as the recipe's checkpoint does, and load into newly built objects."""
    weights = save({k: v.detach().contiguous() for k, v in module.state_dict().items()})
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    module, optimizer = build(observed, estimator)
    module.load_state_dict(load(weights))
    optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    return module, optimizer


def train(estimator, resume=False):
    features, observed, batches = data()
    module, optimizer = build(observed, estimator)
    for step, index in enumerate(batches):
        if step == SAVE_AT:
            saved = module.state_dict()  # a checkpoint reads every row (caught up first)
            if resume:
                module, optimizer = checkpoint_round_trip(module, optimizer, observed, estimator)
                assert all(torch.equal(v, module.state_dict()[k]) for k, v in saved.items())
        optimizer.zero_grad(set_to_none=True)
        logits = module["head"](features[index])
        module["loss"](logits, observed[index], index=index).backward()
        optimizer.step()
    estimates = module["loss"].estimator.estimates()
    return module, optimizer, estimates


@pytest.fixture(scope="module")
def runs():
    return {"torch_adam": train("torch_adam"), "lazy_adam": train("lazy_adam"),
            "lazy_adam_resumed": train("lazy_adam", resume=True)}


def test_lazy_adam_trains_the_estimator_as_dense_adam(runs):
    reference, _, reference_estimates = runs["torch_adam"]
    module, optimizer, estimates = runs["lazy_adam"]
    assert isinstance(optimizer, CombinedOptimizer) and isinstance(optimizer.optimizers[1], LazyAdam)
    torch.testing.assert_close(estimates, reference_estimates, rtol=0, atol=1e-5)
    torch.testing.assert_close(module["loss"].estimator.logits, reference["loss"].estimator.logits, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(module["head"].weight, reference["head"].weight, rtol=1e-5, atol=1e-5)
    # not vacuous: every entry moved, some far; rows went unread for up to ~100 steps (owed in closed form)
    features, observed, batches = data()
    start, _ = build(observed, "torch_adam")
    moved = (reference["loss"].estimator.logits - start["loss"].estimator.logits).abs()
    assert moved.max() > 1.0 and moved.min() > 0.01
    read_at = [[step for step, index in enumerate(batches) if row in index.tolist()] for row in range(N)]
    assert max(b - a for steps in read_at for a, b in zip(steps, steps[1:])) > 80


def test_checkpoint_mid_way_resumes_exactly(runs):
    straight, straight_optimizer, estimates = runs["lazy_adam"]
    resumed, resumed_optimizer, resumed_estimates = runs["lazy_adam_resumed"]
    assert torch.equal(resumed_estimates, estimates)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    state, resumed_state = straight_optimizer.state_dict(), resumed_optimizer.state_dict()
    for lazy, lazy_resumed in zip(state["optimizers"][1]["state"].values(),
                                  resumed_state["optimizers"][1]["state"].values()):
        assert lazy.keys() == lazy_resumed.keys() >= {"exp_avg", "exp_avg_sq", "last_step", "step"}
        assert all(torch.equal(lazy[k], lazy_resumed[k]) for k in lazy)


def test_estimator_reads_are_caught_up_and_free_without_lazy_adam():
    features, observed, batches = data()
    module, optimizer = build(observed, "lazy_adam")
    lazy = optimizer.optimizers[1]
    estimator = module["loss"].estimator
    for index in batches[:20]:
        optimizer.zero_grad(set_to_none=True)
        module["loss"](module["head"](features[index]), observed[index], index=index).backward()
        optimizer.step()
    last_step = lazy.state[estimator.logits]["last_step"]
    stale = (last_step < 20).nonzero().squeeze(1)
    assert stale.numel() > N // 2
    estimator(stale[:3])  # a forward pass catches up the rows it reads, only those
    assert bool((last_step[stale[:3]] == 20).all()) and bool((last_step[stale[3:]] < 20).all())
    estimator.state_dict()  # so do saving, estimates(), init_from_* and load_state_dict: every row
    assert bool((last_step == 20).all())
    plain = spl_losses.create_loss("role", num_classes=C, num_examples=N, expected_num_pos=K, seed=0).estimator
    before = plain.logits.detach().clone()
    plain(torch.arange(5)), plain.state_dict(), plain.estimates()  # no LazyAdam: nothing changes
    assert torch.equal(plain.logits, before)


def test_estimator_optimizer_choice():
    assert estimator_optimizer("auto", LAZY_ADAM_MIN_ENTRIES) == "lazy_adam"
    assert estimator_optimizer("auto", LAZY_ADAM_MIN_ENTRIES - 1) == "adam"
    assert estimator_optimizer("auto", 10 ** 9, "sgd") == "adam"  # the estimator follows --opt
    assert estimator_optimizer("auto", 10 ** 9, "adam", weight_decay=1e-4) == "adam"
    assert estimator_optimizer("auto", 10 ** 9, "adamw") == "lazy_adam"
    assert estimator_optimizer("auto", 5 * 10 ** 6, device_type="cuda") == "adam"  # dense Adam is cheap on a GPU
    assert estimator_optimizer("auto", LAZY_ADAM_MIN_ENTRIES_ACCELERATOR, device_type="cuda") == "lazy_adam"
    assert estimator_optimizer("sparse_adam", 10) == "sparse_adam"
    for opt, decay in (("sgd", 0.0), ("adam", 1e-4)):
        with pytest.raises(ValueError, match="--estimator-optimizer lazy_adam is Adam without weight decay"):
            estimator_optimizer("lazy_adam", 10, opt, decay)
    with pytest.raises(ValueError, match="must be one of auto, lazy_adam, adam, sparse_adam"):
        estimator_optimizer("lazy", 10)


def test_build_optimizer_gives_one_optimizer_with_the_estimator_group_at_lr_mult():
    head, estimator = nn.Linear(3, 2), nn.Parameter(torch.zeros(6, 2))
    groups = param_groups(1e-3, head=list(head.parameters()), loss_state=[estimator], state_lr_mult=10.0)
    dense = build_optimizer(groups, "momentum", estimator="adam")
    assert isinstance(dense, torch.optim.SGD) and [g["lr"] for g in dense.param_groups] == [1e-3, 1e-2]
    groups = param_groups(1e-3, head=list(head.parameters()), loss_state=[estimator], state_lr_mult=10.0)
    combined = build_optimizer(groups, "adam", estimator="sparse_adam")
    assert [type(o).__name__ for o in combined.optimizers] == ["Adam", "SparseAdam"]
    assert [g["lr"] for g in combined.param_groups] == [1e-3, 1e-2]
    for group in combined.param_groups:  # a scheduler sets the rate of the optimizer owning the group
        group["lr"] *= 0.5
    assert combined.optimizers[1].param_groups[0]["lr"] == 5e-3
    with pytest.raises(ValueError, match="with --opt sgd"):
        build_optimizer(param_groups(1e-3, head=list(head.parameters()), loss_state=[estimator]), "sgd",
                        estimator="lazy_adam")
