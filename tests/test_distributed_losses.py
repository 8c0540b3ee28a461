"""Every loss on a batch split over 2 and 4 processes equals one process on the global batch.

Each process count is one fork of gloo CPU processes (``torch.multiprocessing``, like the recipe's
two-process test) that trains a tiny model without BatchNorm, wrapped with its loss in ``TrainStep`` and
``DistributedDataParallel``, through a fixed schedule of global batches, for every registered loss (and
the contrastive term, label estimation around stateful bases, other reductions). The parent process runs
the same schedule on one process (no process group) and compares, step by step: the loss value every
process returns, the gradients after DDP's averaging, then the loss state (LL-Cp's corrections, APL's
matrices, the label estimator), the parameters and the final mAP.

The schedule has epochs (so large-loss rates, SPLC's correction, APL's pseudo-labels and GR's schedule
move), a global batch of 5 rows (shares 3 + 2, and 2 + 2 + 1 + 0: an empty share, which accelerate's
sharding never produces but a custom loop can) and an example repeated in a batch. Loss-level checks in
the same processes cover exact ties in the large-loss selection, a failure on one process (raised on
all, no hang) and infinite logits on one process only.
"""

import pytest
from forked_ranks import run_ranks
import torch
from torch import nn

import spl_losses
from spl_losses.losses import _distributed
from spl_losses.losses.contrastive import ContrastiveAuxiliary
from spl_losses.metrics import mean_average_precision
from spl_losses.training.parallel import TrainStep

N, C, D, H = 24, 5, 6, 8
K = 1.5  # expected positives per image
#: (epoch, global batch rows) of every step.
SCHEDULE = [(0, list(range(0, 8))), (0, list(range(8, 16))),
            (1, list(range(16, 24))), (1, [3, 7, 11, 19, 23]),
            (2, [0, 1, 2, 3, 0, 5, 6, 7])]
STATE = dict(num_classes=C, num_examples=N)
PSEUDO = torch.tensor([[1.0, -1.0, 0.0, 0.5, -0.5]] * N).roll(1, dims=1)
#: name -> (loss name, constructor arguments, contrastive term: None / "unsupervised" / "supervised")
CASES = {
    "bce": ("bce", {}, None), "bce_ls": ("bce_ls", {}, None), "an": ("an", {}, "unsupervised"),
    "an_ls": ("an_ls", {}, None), "wan": ("wan", {"num_classes": C}, None), "iu": ("iu", {}, None),
    "epr": ("epr", {"expected_num_pos": K}, None),
    "epr_stable": ("epr", {"expected_num_pos": K, "stable": True}, None),
    "role": ("role", {**STATE, "expected_num_pos": K, "seed": 0, "with_labels": True}, "supervised"),
    "em": ("em", {}, None),
    "em_apl": ("em_apl", {**STATE, "warmup_epochs": 1, "num_epochs": 3}, None),
    "gr": ("gr", {"num_epochs": 3}, None),
    "hill": ("hill", {}, None), "hill_batchmean": ("hill", {"reduction": "batchmean"}, None),
    "splc": ("splc", {"tau": 0.55}, None), "asl": ("asl", {}, None), "asl_mean": ("asl", {"reduction": "mean"}, None),
    "ll_r": ("ll_r", {"delta_rel": 0.1}, None), "ll_ct": ("ll_ct", {"delta_rel": 0.1}, None),
    "ll_cp": ("ll_cp", {**STATE, "delta_rel": 0.1}, None),
    "label_estimation": ("label_estimation", {**STATE, "expected_num_pos": K, "seed": 0}, None),
    "label_estimation_ll_cp": ("label_estimation", {**STATE, "expected_num_pos": K, "seed": 0, "base_loss": "ll_cp",
                                                    "base_kwargs": {"delta_rel": 0.1}}, None),
    "label_estimation_epr": ("label_estimation", {**STATE, "expected_num_pos": K, "seed": 0, "base_loss": "epr"},
                             None),
    # pseudo-labels (positive, negative and soft ones), and GPR's EPR regulariser (a batch statistic)
    "vlpl": ("vlpl", {**STATE, "beta_neg": 0.5, "pseudo_labels": PSEUDO}, None),
    "gpr": ("gpr", {**STATE, "num_epochs": 3, "expected_num_pos": K, "reg": 0.5, "pseudo_labels": PSEUDO}, None),
}


def data():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(N, D, generator=gen)
    full = (torch.rand(N, C, generator=gen) < 0.4).float()
    full[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1.0
    observed = torch.zeros(N, C)
    observed[torch.arange(N), full.argmax(dim=1)] = 1.0  # one observed positive per row
    observed[0, 4] = observed[0, 4] if full[0, 4] else -1.0  # an observed negative where there is one
    views = (features + 0.1 * torch.randn(N, D, generator=gen), features - 0.1 * torch.randn(N, D, generator=gen))
    return features, full, observed, views


class Tiny(nn.Module):
    """A timm-like model (forward_features / forward_head) without BatchNorm."""

    def __init__(self):
        super().__init__()
        self.body, self.head, self.num_features = nn.Linear(D, H), nn.Linear(H, C), H

    def forward_features(self, x):
        return torch.tanh(self.body(x))

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def share_of(rows, world_size, rank):
    """Contiguous shares, earlier ranks first: 5 rows give 3 + 2 and 2 + 2 + 1 + 0."""
    size = -(-len(rows) // world_size)
    return rows[rank * size:(rank + 1) * size]


def build(case, observed):
    name, kwargs, contrastive = CASES[case]
    kwargs = dict(kwargs)
    if kwargs.pop("with_labels", False):
        kwargs["observed_labels"] = observed
    torch.manual_seed(0)
    loss = spl_losses.create_loss(name, **kwargs)
    model = Tiny()
    aux = None if contrastive is None else ContrastiveAuxiliary(H, hidden_dim=8, projection_dim=4, temperature=0.5,
                                                                supervised=contrastive == "supervised")
    step = TrainStep(model, loss, aux)
    groups = [{"params": list(model.parameters()) + (list(aux.parameters()) if aux else [])}]
    if list(loss.parameters()):
        groups.append({"params": list(loss.parameters()), "lr": 0.5})
    return step, torch.optim.Adam(groups, lr=0.05)


def train(case, world_size=1, rank=0):
    """Run the schedule; return what every process must agree on with one process."""
    features, full, observed, views = data()
    step, optimizer = build(case, observed)
    targets = full if CASES[case][0] in ("bce", "bce_ls") else observed
    module = step if world_size == 1 else nn.parallel.DistributedDataParallel(step)
    broadcast = sorted(getattr(module, "named_module_buffers", {}))  # DDP's per-forward broadcast
    values, grads, epoch = [], [], 0
    for step_epoch, rows in SCHEDULE:
        if step_epoch != epoch:
            if step.loss.predictions_due:
                with torch.no_grad():
                    step.loss.update_from_predictions(torch.sigmoid(step.model(features)))
            epoch = step_epoch
        step.loss.set_epoch(epoch)
        index = torch.tensor(share_of(rows, world_size, rank), dtype=torch.long)
        value = module(features[index], targets[index], index, views[0][index], views[1][index])
        value.backward()
        values.append(value.item())
        grads.append([p.grad.clone() if p.grad is not None else None for p in step.parameters()])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        scores = step.model(features)
    return {"broadcast": broadcast, "values": values, "grads": grads,
            "params": [p.detach().clone() for p in step.parameters()],
            "state": {k: v.clone() for k, v in step.loss.state_dict().items() if isinstance(v, torch.Tensor)},
            "map": mean_average_precision(scores.numpy(), full.numpy())}


# ------------------------------------------------------------------------------ loss-level checks (in the forks)
TIE_RATE = 0.6


def tie_checks(world_size=1, rank=0):
    """Large-loss selections with exact ties at the threshold; what LL-Cp corrects, and the logits' gradients."""
    out = {}
    rows = list(range(7))
    logits = torch.zeros(7, C)
    logits[:, 2] = 1.0  # equal losses everywhere in column 2, and in the rest: ties at every threshold
    targets = torch.zeros(7, C)
    targets[:, 0] = 1.0
    local = share_of(rows, world_size, rank)
    for name in ("ll_r", "ll_ct", "ll_cp"):
        loss = spl_losses.create_loss(name, delta_rel=TIE_RATE, **(STATE if name == "ll_cp" else {}))
        loss.set_epoch(1)  # k = 21 of the 28 candidates: the 7 at logit 1, then 14 of the 21 ties at 0
        x = logits[local].clone().requires_grad_(True)
        with _distributed.split_batches(loss):
            value = loss(x, targets[local], index=torch.tensor(local, dtype=torch.long))
        value.backward()
        out[name] = {"value": value.item(), "grad": x.grad / world_size,
                     "corrected": loss.corrected.clone() if name == "ll_cp" else None}
    return out


def failure_checks(world_size, rank):
    """A bad input on the last process only: every process raises, none waits in a collective."""
    outcomes = {}
    for name in ("an", "epr", "ll_r"):
        loss = spl_losses.create_loss(name, **({"expected_num_pos": K} if name == "epr" else {}))
        targets = torch.zeros(2, C)
        targets[:, 0] = 1.0
        if rank == world_size - 1:
            targets[0, 1] = 3.0  # outside {-1, 0, 1}
        try:
            with _distributed.split_batches(loss):
                loss(torch.zeros(2, C), targets)
            outcomes[name] = "returned"
        except Exception as err:  # noqa: BLE001 - the type is what is checked
            outcomes[name] = type(err).__name__
    return outcomes


def infinity_checks(world_size=1, rank=0):
    """Infinite logits on one process: ll_r rejects them (finite limit), an unbounded ll_ct is refused."""
    logits = torch.zeros(4, C)
    logits[1, 3] = float("inf")  # an unknown entry at +inf (row 1: process 0 of 2, process 1 of 4)
    targets = torch.zeros(4, C)
    targets[:, 0] = 1.0
    local = share_of(list(range(4)), world_size, rank)
    out = {}
    for name, epoch in (("ll_r", 1), ("ll_ct", 0), ("epr", 0)):
        loss = spl_losses.create_loss(name, **({"expected_num_pos": K} if name == "epr" else {"delta_rel": 0.06}))
        loss.set_epoch(epoch)  # ll_r: k = ceil(20·0.06) = 2 rejects the +inf entry; ll_ct: k = 0 keeps it
        x = logits[local].clone().requires_grad_(True)
        try:
            with _distributed.split_batches(loss):
                value = loss(x, targets[local])
            value.backward()
            out[name] = (value.item(), x.grad / world_size)
        except ValueError:
            out[name] = "ValueError"
    return out


def _rank_results(world_size, rank):
    _distributed.exchange_log = []
    results = {"train": {case: train(case, world_size, rank) for case in CASES},
               "ties": tie_checks(world_size, rank), "failures": failure_checks(world_size, rank),
               "infinity": infinity_checks(world_size, rank)}
    loss = spl_losses.create_loss("epr", expected_num_pos=K)  # not split: no collective
    before = len(_distributed.exchange_log)
    loss(torch.zeros(2, C), torch.eye(2, C))
    results["unsplit_exchanges"] = len(_distributed.exchange_log) - before
    return results


def launch(world_size):
    return run_ranks(_rank_results, world_size)


@pytest.fixture(scope="module")
def reference():
    _distributed.exchange_log = []
    results = {"train": {case: train(case) for case in CASES}, "ties": tie_checks(), "infinity": infinity_checks()}
    assert _distributed.exchange_log == []  # one process: no collective at all
    _distributed.exchange_log = None
    return results


def test_every_registered_loss_is_covered():
    assert {name for name, _, _ in CASES.values()} == set(spl_losses.list_losses())


def _close(a, b, **tol):
    return a is None and b is None or torch.allclose(a, b, **tol)


@pytest.mark.parametrize("world_size", [2, 4])
def test_split_batches_equal_one_process(reference, world_size):
    ranks = launch(world_size)
    for rank, result in enumerate(ranks):
        assert result["unsplit_exchanges"] == 0
        for case, ref in reference["train"].items():
            got = result["train"][case]
            where = f"{case}, rank {rank} of {world_size}"
            assert got["broadcast"] == [], where  # the loss keeps its buffers identical itself
            assert got["values"] == pytest.approx(ref["values"], rel=1e-5, abs=1e-6), where
            for step, (g, r) in enumerate(zip(got["grads"], ref["grads"])):
                assert all(_close(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g, r)), f"{where}, step {step}"
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got["params"], ref["params"])), where
            assert got["state"].keys() == ref["state"].keys(), where
            for key, value in ref["state"].items():
                if value.dtype == torch.bool or not value.is_floating_point():
                    assert torch.equal(got["state"][key], value), f"{where}: {key}"
                else:
                    assert torch.allclose(got["state"][key], value, rtol=1e-4, atol=1e-5), f"{where}: {key}"
            assert got["map"] == pytest.approx(ref["map"], abs=1e-9), where
        # exact ties: the same selection as one process (values, gradients of the local rows, corrections)
        local = share_of(list(range(7)), world_size, rank)
        for name, ref in reference["ties"].items():
            got = result["ties"][name]
            assert got["value"] == pytest.approx(ref["value"], rel=1e-6), name
            assert torch.allclose(got["grad"], ref["grad"][local], atol=1e-7), name
            if ref["corrected"] is not None:
                assert torch.equal(got["corrected"], ref["corrected"]), name
        expected = {"an", "epr", "ll_r"}
        failed_type = "ValueError" if rank == world_size - 1 else "RuntimeError"
        assert result["failures"] == {name: failed_type for name in expected}
        local = share_of(list(range(4)), world_size, rank)
        for name, ref in reference["infinity"].items():
            got = result["infinity"][name]
            if ref == "ValueError":
                assert got == "ValueError", name
            else:
                assert got[0] == pytest.approx(ref[0], rel=1e-6), name
                assert torch.allclose(got[1], ref[1][local], atol=1e-7), name


def test_reference_checks_are_not_vacuous(reference):
    # the schedule moves the state of every stateful loss, and the tie check takes entries at tied values
    train = reference["train"]
    assert train["ll_cp"]["state"]["corrected"].any()
    assert train["label_estimation_ll_cp"]["state"]["base_loss.corrected"].any()
    assert train["em_apl"]["state"]["pseudo_mask"].any() and train["em_apl"]["state"]["observed_mask"].any()
    # ll_cp corrects column 2 (the largest losses) and the first 14 tied candidates in row-major order
    expected = torch.zeros(N, C, dtype=torch.bool)
    expected[:7, 2] = True
    tied = [(row, col) for row in range(7) for col in (1, 3, 4)][:14]
    expected[[r for r, _ in tied], [c for _, c in tied]] = True
    assert torch.equal(reference["ties"]["ll_cp"]["corrected"], expected)
    assert reference["infinity"]["ll_ct"] == "ValueError" and reference["infinity"]["ll_r"] != "ValueError"


def test_split_batches_is_scoped_and_free_without_a_process_group():
    loss = spl_losses.create_loss("an")
    with _distributed.split_batches(loss):
        assert loss._split_group is not None and loss.batch_share() is None  # on, but no process group: nothing
    assert loss._split_group is None  # the split ends with the block
    step = TrainStep(Tiny(), loss)  # the step tells its loss once: every call it makes gets a share
    assert loss._split_group is not None
    features, _, observed, _ = data()
    step(features[:4], observed[:4], torch.arange(4))
    assert loss.batch_share() is None  # no process group: nothing
    assert loss.set_batch_split() is loss and loss.batch_share() is None
    assert step._ddp_params_and_buffers_to_ignore == []
    assert TrainStep(Tiny(), spl_losses.create_loss("ll_cp", **STATE))._ddp_params_and_buffers_to_ignore == \
        ["loss.corrected"]
