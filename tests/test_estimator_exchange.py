"""A sparse label estimator under data parallelism: batch rows exchanged outside DDP equal one process.

One fork of gloo CPU processes per process count (2 and 4), as ``tests/test_distributed_losses.py``
does. Each trains a tiny model with ``role`` / ``label_estimation`` built with ``sparse=True`` in
``TrainStep`` wrapped by DDP, through a schedule of global batches (equal shares, unequal shares with an
empty one, an example repeated in a batch, two accumulated micro-batches per step), with LazyAdam (and
SparseAdam) from the recipe's ``build_optimizer``. The parent runs the same schedule on one process.
Checked: the loss values, the model's gradients after DDP, the estimator's global gradient, the trained
parameters and estimator against one process; the estimator and its optimizer state identical bit for bit
on every process; DDP not holding the estimator; and the bytes exchanged per step the same at N and 10·N
(O(B·C): counted from every collective's size) and equal to their formula.
"""

import pytest
from forked_ranks import run_ranks
import torch
from torch import nn

import spl_losses
from spl_losses.losses import _distributed
from spl_losses.training.builders import attach_estimator_optimizer, build_optimizer, param_groups
from spl_losses.training.parallel import TrainStep

N, C, D, H, K = 24, 5, 6, 8, 1.5
#: Optimizer steps, each a list of global batches (more than one: accumulated before the step).
SCHEDULE = [[list(range(0, 8))], [list(range(8, 16))], [[3, 7, 11, 19, 23]], [[0, 1, 2, 3, 0, 5, 6, 7]],
            [list(range(16, 24)), [20, 2, 9, 14]], [list(range(4, 12))]]
CASES = {"role": ("role", "lazy_adam", {}), "label_estimation": ("label_estimation", "lazy_adam", {"base_loss": "em"}),
         "role_sparse_adam": ("role", "sparse_adam", {})}


def data(num_examples=N):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(num_examples, D, generator=gen)
    observed = torch.zeros(num_examples, C)
    observed[torch.arange(num_examples), torch.randint(0, C, (num_examples,), generator=gen)] = 1.0
    return features, observed


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(D, H), nn.Linear(H, C)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def share_of(rows, world_size, rank):
    """Contiguous shares, earlier ranks first: 5 rows give 3 + 2 and 2 + 2 + 1 + 0."""
    size = -(-len(rows) // world_size)
    return rows[rank * size:(rank + 1) * size]


def train(case, world_size=1, rank=0, num_examples=N):
    name, estimator, options = CASES[case]
    features, observed = data(num_examples)
    torch.manual_seed(0)
    loss = spl_losses.create_loss(name, num_classes=C, num_examples=num_examples, expected_num_pos=K,
                                  observed_labels=observed, seed=0, sparse=True, **options)
    model = Tiny()
    step = TrainStep(model, loss)
    groups = param_groups(0.05, backbone=list(model.parameters()), loss_state=list(loss.parameters()), state_lr_mult=4)
    optimizer = build_optimizer(groups, "adam", estimator=estimator)
    attach_estimator_optimizer(loss, optimizer)  # the estimator catches its rows up through its optimizer
    module = step if world_size == 1 else nn.parallel.DistributedDataParallel(step)
    logits = loss.estimator.logits
    out = {"values": [], "grads": [], "estimator_grads": [], "bytes": [],
           "ignored": sorted(getattr(module, "parameters_to_ignore", []))}
    for batches in SCHEDULE:
        logged = len(_distributed.exchange_log)
        for micro, rows in enumerate(batches):
            index = torch.tensor(share_of(rows, world_size, rank), dtype=torch.long)
            sync = micro == len(batches) - 1
            context = module.no_sync() if world_size > 1 and not sync else torch.enable_grad()
            with context:
                value = module(features[index], observed[index], index)
                (value / len(batches)).backward()
            out["values"].append(value.item())
        step.sync_estimator_gradients()
        exchanged = _distributed.exchange_log[logged:]
        out["bytes"].append(sum(size for label, size in exchanged if label.startswith("estimator")))
        out["grads"].append([p.grad.clone() for p in model.parameters()])
        out["estimator_grads"].append(logits.grad.to_dense())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out["estimates"] = loss.estimator.estimates()  # every row caught up
    out["params"] = [p.detach().clone() for p in model.parameters()]
    out["optimizer"] = optimizer.optimizers[1].state_dict()["state"]
    return out


def _rank_results(world_size, rank):
    _distributed.exchange_log = []
    results = {case: train(case, world_size, rank) for case in CASES}
    results["role_10n"] = train("role", world_size, rank, num_examples=10 * N)
    return results


def launch(world_size):
    return run_ranks(_rank_results, world_size)


@pytest.fixture(scope="module")
def reference():
    _distributed.exchange_log = []
    results = {case: train(case) for case in CASES}
    assert _distributed.exchange_log == []  # one process: nothing exchanged
    _distributed.exchange_log = None
    return results


def _identical(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _expected_bytes(world_size):
    """Per step: a header of P (failed, rows) float64 pairs, P padded int64 index shares per micro-batch,
    then the P padded shares of unique rows' gradients (C float32 each)."""
    per_step = []
    for batches in SCHEDULE:
        total, unique = 0, [set() for _ in range(world_size)]
        for rows in batches:
            shares = [share_of(rows, world_size, r) for r in range(world_size)]
            total += world_size * 2 * 8 + world_size * max(len(s) for s in shares) * 8
            for r, share in enumerate(shares):
                unique[r].update(share)
        per_step.append(total + world_size * max(len(u) for u in unique) * C * 4)
    return per_step


@pytest.mark.parametrize("world_size", [2, 4])
def test_row_sparse_estimator_equals_one_process(reference, world_size):
    ranks = launch(world_size)
    for case, ref in reference.items():
        for rank, result in enumerate(ranks):
            got, where = result[case], f"{case}, rank {rank} of {world_size}"
            assert got["ignored"] == ["loss.estimator.logits"], where  # DDP neither broadcasts nor all-reduces it
            assert got["values"] == pytest.approx(ref["values"], rel=1e-5, abs=1e-6), where
            for step, (g, r) in enumerate(zip(got["grads"], ref["grads"])):
                assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g, r)), f"{where}, step {step}"
            for step, (g, r) in enumerate(zip(got["estimator_grads"], ref["estimator_grads"])):
                assert torch.allclose(g, r, rtol=1e-4, atol=1e-7), f"{where}, step {step}"
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got["params"], ref["params"])), where
            assert torch.allclose(got["estimates"], ref["estimates"], rtol=1e-4, atol=1e-6), where
            # every process holds the same estimator and optimizer state, bit for bit
            first = ranks[0][case]
            assert torch.equal(got["estimates"], first["estimates"]), where
            for key, state in first["optimizer"].items():
                assert all(_identical(got["optimizer"][key][k], v) for k, v in state.items()), where
            assert got["bytes"] == _expected_bytes(world_size), where
    for result in ranks:  # what a step exchanges does not grow with N
        assert result["role_10n"]["bytes"] == result["role"]["bytes"]


def test_reference_is_not_vacuous(reference):
    role = reference["role"]
    assert all(g.abs().sum() > 0 for g in role["estimator_grads"])
    start = spl_losses.create_loss("role", num_classes=C, num_examples=N, expected_num_pos=K,
                                   observed_labels=data()[1], seed=0).estimator.estimates()
    assert (role["estimates"] - start).abs().max() > 0.05
    # LazyAdam and SparseAdam differ (rows skipped steps), so the SparseAdam case checks its own exchange
    assert not torch.allclose(reference["role_sparse_adam"]["estimates"], role["estimates"], atol=1e-4)
