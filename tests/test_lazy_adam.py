"""LazyAdam equals torch.optim.Adam on the dense gradient while a step touches only the batch's rows."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.utils._python_dispatch import TorchDispatchMode

from spl_losses.optim import LazyAdam
from spl_losses.optim import lazy_adam as lazy_adam_module
from spl_losses.optim import skipped_steps
from spl_losses.optim.shared_steps import SharedStepFactors


# ----------------------------------------------------------------------------------- helpers
def stepwise_zero_grad_adam(m, v, first_step, last_step, lr_of_step, beta1, beta2, eps):
    """Adam's steps first_step..last_step with a zero gradient, one at a time (torch's formula)."""
    update = torch.zeros_like(m)
    for j in range(first_step, last_step + 1):
        m, v = m * beta1, v * beta2
        denom = v.sqrt() / math.sqrt(1 - beta2 ** j) + eps
        update += lr_of_step(j) / (1 - beta1 ** j) * m / denom
    return update, m, v


def to_safetensors_and_back(state_dict):
    """Flatten an optimizer state dict to named tensors, store them with safetensors, rebuild it."""
    tensors = {f"{pid}.{key}": value for pid, st in state_dict["state"].items() for key, value in st.items()}
    assert all(isinstance(value, torch.Tensor) for value in tensors.values())
    loaded = load_safetensors(save_safetensors(tensors))
    state = {}
    for name, value in loaded.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": state_dict["param_groups"]}


def draw_rows(step, num_rows, generator):
    """A batch of rows: a hot pair every step and random rows (repeats included); from step 30 to
    379 only the first quarter is drawn, so the other rows owe 350 steps (more than the closed
    form's window) when next read; the last row is never drawn."""
    high = num_rows // 4 if 30 <= step < 380 else num_rows - 1
    random_rows = torch.randint(0, high, (5,), generator=generator)
    return torch.cat([torch.tensor([0, 1, 1]), random_rows, random_rows[:1]])


def train_pair(dtype, steps, lr_of_step, column_scale, round_trip_at=None, catch_up_on_save=True, num_rows=48,
               num_classes=6):
    """Train the same parameters with dense Adam and with LazyAdam: an (N, C) table read by row
    (sparse gradient under LazyAdam) and a (C,) gain with a dense gradient, in two groups. The loss
    depends on the rows read, so a stale row would change the gradient."""
    generator = torch.Generator().manual_seed(0)
    init = torch.randn(num_rows, num_classes, dtype=dtype, generator=generator)
    target = torch.randn(num_rows, num_classes, dtype=dtype, generator=generator)
    runs = {}
    for kind in ("adam", "lazy"):
        table, gain = torch.nn.Parameter(init.clone()), torch.nn.Parameter(torch.ones(num_classes, dtype=dtype))
        groups = [{"params": [table]}, {"params": [gain], "lr": 3e-3, "eps": 1e-6}]
        optimizer = torch.optim.Adam(groups, lr=1e-2) if kind == "adam" else LazyAdam(groups, lr=1e-2)
        runs[kind] = [table, gain, optimizer]
    for step in range(steps):
        rows = draw_rows(step, num_rows, generator)
        for kind, (table, gain, optimizer) in runs.items():
            optimizer.param_groups[0]["lr"] = lr_of_step(step + 1)
            optimizer.zero_grad()
            if kind == "lazy":
                optimizer.catch_up([table], rows)
            read = F.embedding(rows, table, sparse=kind == "lazy")
            loss = (column_scale * (gain * read - target[rows]) ** 2).sum()
            loss.backward()
            optimizer.step()
        if step == round_trip_at:
            table, gain, optimizer = runs["lazy"]
            fresh = LazyAdam([{"params": [table]}, {"params": [gain], "lr": 3e-3, "eps": 1e-6}], lr=1e-2)
            saved = optimizer.state_dict(catch_up=catch_up_on_save)
            if not catch_up_on_save:  # rows still owe steps: the counters differ
                assert len(set(saved["state"][0]["last_step"].tolist())) > 1
            fresh.load_state_dict(to_safetensors_and_back(saved))
            runs["lazy"][2] = fresh
    runs["lazy"][2].catch_up()
    return init, runs


# ------------------------------------------------------------------------------ closed form
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 3e-9)])
@pytest.mark.parametrize("first_step,skipped", [(1, 4), (1, 600), (12, 900), (400, 60), (3000, 5000), (50000, 30)])
def test_skipped_steps_match_stepwise_adam(first_step, skipped, dtype, rtol):
    """The closed form against Adam's zero-gradient steps one by one, at the tolerances used for
    float64 parameters and for the others."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    generator = torch.Generator().manual_seed(first_step)
    # entries from sqrt(v) << eps to sqrt(v) >> eps, and a row that was never touched (m = v = 0)
    scale = torch.logspace(-14, -1, 40, dtype=torch.float64)
    m = torch.randn(4, 40, dtype=torch.float64, generator=generator) * scale
    v = (m.abs() * (1 + 3 * torch.rand(4, 40, dtype=torch.float64, generator=generator))) ** 2
    m[0], v[0] = 0.0, 0.0
    # learning rate changes inside the skipped steps
    starts = torch.tensor([0, first_step + 3, first_step + 25])
    values = torch.tensor([1e-2, 2e-3, 5e-2], dtype=torch.float64)

    def lr_of_step(j):
        return float(values[int((starts <= j).nonzero().max())])

    # rows current at different steps, caught up together
    upto = first_step - 1 + skipped
    last = torch.tensor([first_step - 1, first_step - 1, first_step - 1 + skipped // 2, upto - 1])
    owed = skipped_steps.SkippedSteps.for_dtype(dtype, upto, starts, values, beta1, beta2, eps)
    update, m_after, v_after = skipped_steps.skipped_step_updates(m, v, last, owed)
    expected = [stepwise_zero_grad_adam(m[r], v[r], int(last[r]) + 1, upto, lr_of_step, beta1, beta2, eps)
                for r in range(4)]
    expected_update, expected_m, expected_v = (torch.stack(column) for column in zip(*expected))
    torch.testing.assert_close(update, expected_update, rtol=rtol, atol=1e-300)
    torch.testing.assert_close(m_after, expected_m, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(v_after, expected_v, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 3e-9)])
@pytest.mark.parametrize("first_step", [1, 30, 2000])
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_rows_sharing_their_last_step_read_one_table_for_every_number_of_steps(first_step, eps, dtype, rtol):
    """Rows last stepped together (after a full catch-up) take their factors from one kept table, for
    few skipped steps and for more than the window, as close to stepwise Adam as the per-row factors
    (at the tolerances of float64 parameters and of the others; the inputs stay unchanged)."""
    beta1, beta2 = 0.9, 0.999
    generator = torch.Generator().manual_seed(first_step)
    scale = torch.logspace(-14, -1, 30, dtype=torch.float64)
    m = torch.randn(3, 30, dtype=torch.float64, generator=generator) * scale
    v = (m.abs() * (1 + 3 * torch.rand(3, 30, dtype=torch.float64, generator=generator))) ** 2
    m[0], v[0] = 0.0, 0.0
    m_before, v_before = m.clone(), v.clone()
    lr = torch.tensor([1e-2], dtype=torch.float64)
    tables = SharedStepFactors()
    last = torch.full((3,), first_step, dtype=torch.int64)
    for skipped in (1, 2, 17, 240, 500):
        upto = first_step + skipped
        owed = skipped_steps.SkippedSteps.for_dtype(dtype, upto, torch.tensor([0]), lr, beta1, beta2, eps)
        update, m_after, v_after = skipped_steps.skipped_step_updates(m, v, last, owed, tables)
        for r in range(3):
            expected, expected_m, expected_v = stepwise_zero_grad_adam(m[r], v[r], first_step + 1, upto,
                                                                       lambda j: 1e-2, beta1, beta2, eps)
            if r == 0:  # never stepped: no update
                expected = torch.zeros_like(expected)
            torch.testing.assert_close(update[r], expected, rtol=rtol, atol=1e-300)
            torch.testing.assert_close(m_after[r], expected_m, rtol=1e-12, atol=1e-300)
            torch.testing.assert_close(v_after[r], expected_v, rtol=1e-12, atol=1e-300)
    assert len(tables._tables) == 1  # one table served every number of skipped steps
    assert torch.equal(m, m_before) and torch.equal(v, v_before)


def test_skipped_steps_without_eps_factor_exactly():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(3, 5, dtype=torch.float64, generator=generator) * 1e-3
    v = (m.abs() * 2) ** 2
    m[0], v[0] = 0.0, 0.0  # never stepped: no update (dense Adam would divide 0 by 0 here)
    last = torch.tensor([0, 7, 400])
    owed = skipped_steps.SkippedSteps(900, torch.tensor([0]), torch.tensor([1e-2], dtype=torch.float64),
                                      0.9, 0.999, 0.0, skipped_steps.window_length(0.9, 0.999))
    update, _, _ = skipped_steps.skipped_step_updates(m, v, last, owed)
    assert torch.equal(update[0], torch.zeros(5, dtype=torch.float64))
    for r in (1, 2):
        expected, _, _ = stepwise_zero_grad_adam(m[r], v[r], int(last[r]) + 1, 900, lambda j: 1e-2, 0.9, 0.999, 0.0)
        torch.testing.assert_close(update[r], expected, rtol=1e-11, atol=0)


def test_rows_last_touched_early_are_summed_term_by_term():
    owed = skipped_steps.SkippedSteps(10 ** 6, torch.tensor([0]), torch.tensor([1e-2], dtype=torch.float64),
                                      0.9, 0.999, 1e-8, 307)
    w, e = skipped_steps.skipped_step_weights(torch.tensor([1, 5000]), owed, 307)
    _, _, terms = skipped_steps._series_coefficients(w, e, skipped_steps.SERIES_TOL)
    assert terms.tolist() == [0, 8]  # 0: no polynomial is accurate enough, summed term by term


def test_window_bounds_the_neglected_steps():
    beta1, beta2 = 0.9, 0.999
    window = skipped_steps.window_length(beta1, beta2, tol=1e-13)
    rho = beta1 / math.sqrt(beta2)
    assert rho ** (window + 1) / (1 - rho) <= 1e-13 < rho ** window / (1 - rho)
    with pytest.raises(ValueError, match="beta1\\*\\*2 < beta2"):
        skipped_steps.window_length(0.99, 0.9)


# ------------------------------------------------------------------------ against torch Adam
@pytest.mark.parametrize("max_segments", [1024, 8])
def test_matches_dense_adam_float64_with_round_trip_and_schedule(monkeypatch, max_segments):
    monkeypatch.setattr(lazy_adam_module, "MAX_LR_SEGMENTS", max_segments)
    # gradients from ~1e-9 (eps dominates the denominator) to ~1; lr changes every 7 steps
    column_scale = torch.logspace(-9, 0, 6, dtype=torch.float64)
    init, runs = train_pair(torch.float64, 400, lambda t: 1e-2 * (1.0 + 0.5 * math.sin(t // 7)),
                            column_scale, round_trip_at=190, catch_up_on_save=False)
    (table, gain, _), (lazy_table, lazy_gain, _) = runs["adam"], runs["lazy"]
    moved = (table - init).abs().max()
    assert moved > 0.5
    assert (table - lazy_table).abs().max() <= 1e-10 * moved
    torch.testing.assert_close(lazy_gain, gain, rtol=1e-10, atol=1e-12)
    # the last row is never drawn: no gradient, no moment, no update, in both
    assert torch.equal(lazy_table[-1], init[-1]) and torch.equal(table[-1], init[-1])


def test_matches_dense_adam_float32():
    column_scale = torch.logspace(-3, 0, 6)
    init, runs = train_pair(torch.float32, 300, lambda t: 1e-2, column_scale, round_trip_at=100)
    table, lazy_table = runs["adam"][0], runs["lazy"][0]
    moved = (table - init).abs().max()
    assert (table - lazy_table).abs().max() <= 2e-5 * moved


def test_dense_gradients_count_every_row():
    torch.manual_seed(0)
    dense, lazy = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    lazy.load_state_dict(dense.state_dict())
    adam, lazy_adam = torch.optim.Adam(dense.parameters(), lr=1e-2), LazyAdam(lazy.parameters(), lr=1e-2)
    for _ in range(20):
        x = torch.randn(8, 5)
        for model, optimizer in ((dense, adam), (lazy, lazy_adam)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    torch.testing.assert_close(lazy.weight, dense.weight)
    torch.testing.assert_close(lazy.bias, dense.bias)


def test_betas_and_eps_may_change_between_steps():
    generator = torch.Generator().manual_seed(0)
    init = torch.randn(30, 4, dtype=torch.float64, generator=generator)
    dense, lazy_param = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    adam, lazy = torch.optim.Adam([dense], lr=1e-2), LazyAdam([lazy_param], lr=1e-2)
    for step in range(120):
        if step == 60:
            for optimizer in (adam, lazy):
                optimizer.param_groups[0].update(betas=(0.8, 0.99), eps=1e-6)
        rows = torch.randint(0, 30, (3,), generator=generator)
        grad = torch.randn(3, 4, dtype=torch.float64, generator=generator)
        dense.grad = torch.zeros_like(init).index_add_(0, rows, grad)
        lazy.update_rows(lazy_param, rows, grad)
        adam.step()
    lazy.catch_up()
    torch.testing.assert_close(lazy_param, dense, rtol=1e-10, atol=1e-12)


def test_update_rows_sums_repeated_rows():
    param, reference = torch.nn.Parameter(torch.zeros(10, 2)), torch.nn.Parameter(torch.zeros(10, 2))
    lazy, adam = LazyAdam([param], lr=0.1), torch.optim.Adam([reference], lr=0.1)
    for step in range(5):
        rows = torch.tensor([3, 7, 3]) if step % 2 == 0 else torch.tensor([9])
        grad = torch.arange(rows.numel() * 2, dtype=torch.float32).view(-1, 2) + 1.0
        lazy.update_rows(param, rows, grad)
        reference.grad = torch.zeros(10, 2).index_add_(0, rows, grad)
        adam.step()
    lazy.catch_up()
    torch.testing.assert_close(param, reference)


# --------------------------------------------------------------------------------- state
def test_state_is_plain_tensors_and_keeps_its_dtypes():
    param = torch.nn.Parameter(torch.zeros(6, 2))
    optimizer = LazyAdam([param], lr=0.1)
    param.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.ones(2, 2), (6, 2), check_invariants=True)
    optimizer.step()
    state = optimizer.state_dict(catch_up=False)["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "last_step", "lr_starts", "lr_values", "betas_eps"}
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    fresh = LazyAdam([param], lr=0.1)
    fresh.load_state_dict(optimizer.state_dict(catch_up=False))
    loaded = fresh.state[param]
    assert loaded["last_step"].dtype == torch.int64 and loaded["last_step"].tolist() == [0, 1, 0, 0, 1, 0]
    assert loaded["lr_values"].dtype == torch.float64 and loaded["lr_starts"].dtype == torch.int64
    # by default the state is saved with every row caught up (never-stepped rows count as current)
    assert optimizer.state_dict()["state"][0]["last_step"].tolist() == [1] * 6


def test_adam_state_loads_both_ways():
    generator = torch.Generator().manual_seed(0)
    dense, lazy_param = torch.nn.Parameter(torch.randn(12, 3, generator=generator)), None
    adam = torch.optim.Adam([dense], lr=1e-2)
    grads = [torch.randn(12, 3, generator=generator) for _ in range(9)]
    rows = torch.tensor([2, 5])
    for grad in grads[:3]:
        dense.grad = grad
        adam.step()
    lazy_param = torch.nn.Parameter(dense.detach().clone())
    lazy = LazyAdam([lazy_param], lr=1e-2)
    lazy.load_state_dict(adam.state_dict())  # Adam -> LazyAdam: every row is current
    for grad in grads[3:6]:  # gradients on two rows only
        dense.grad = torch.zeros_like(grad).index_copy_(0, rows, grad[rows])
        adam.step()
        lazy_param.grad = torch.sparse_coo_tensor(rows[None], grad[rows], (12, 3), check_invariants=True)
        lazy.step()
    lazy.catch_up()
    torch.testing.assert_close(lazy_param, dense)
    back = torch.optim.Adam([lazy_param], lr=1e-2)
    back.load_state_dict(copy.deepcopy(lazy.state_dict()))  # LazyAdam, caught up -> Adam
    for grad in grads[6:]:
        dense.grad, lazy_param.grad = grad, grad.clone()
        adam.step()
        back.step()
    torch.testing.assert_close(lazy_param, dense)


# --------------------------------------------------------------------------------- cost
class AllocationCounter(TorchDispatchMode):
    """Counts the elements of the new tensors ops return (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(ret.alias_info is not None for ret in func._schema.returns):
            for value in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(value, torch.Tensor) and value.is_sparse:  # numel() is the dense size
                    self.elements += value._values().numel() + value._indices().numel()
                elif isinstance(value, torch.Tensor):
                    self.elements += value.numel()
        return out


def step_allocations(num_rows):
    """Elements allocated per step (catching the batch's rows up, then the optimizer step) over
    steps 80 to 99 of a (num_rows, 80) table trained on batches of 16 of its first 200 rows."""
    generator = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.zeros(num_rows, 80))
    optimizer = LazyAdam([table], lr=1e-2)
    counts = []
    for step in range(100):
        rows = torch.randint(0, 200, (16,), generator=generator)
        optimizer.zero_grad()
        with AllocationCounter() as counter:
            optimizer.catch_up([table], rows)
        F.embedding(rows, table, sparse=True).sum().backward()
        with AllocationCounter() as step_counter:
            optimizer.step()
        counts.append(counter.elements + step_counter.elements)
    return counts[80:]


def test_step_cost_does_not_grow_with_the_number_of_rows():
    small, large = step_allocations(1_000), step_allocations(200_000)
    assert small == large
    assert max(large) < 200_000 * 80 / 20  # O(B·(C·terms + window)), far below one (N, C) tensor
    # a full catch-up is what touches every row
    table = torch.nn.Parameter(torch.zeros(5_000, 4))
    optimizer = LazyAdam([table], lr=1e-2)
    table.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), torch.ones(1, 4), (5_000, 4), check_invariants=True)
    optimizer.step()
    with AllocationCounter() as counter:
        optimizer.catch_up()
    assert counter.elements >= 5_000


# --------------------------------------------------------------------------------- errors
def test_rejects_what_it_cannot_match():
    param = torch.nn.Parameter(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="weight_decay"):
        LazyAdam([param], weight_decay=1e-4)
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam([param], amsgrad=True)
    with pytest.raises(ValueError, match="beta1\\*\\*2 < beta2"):
        LazyAdam([param], betas=(0.99, 0.9))
    optimizer = LazyAdam([param])
    param.grad = torch.zeros(4, 2).to_sparse(2)
    with pytest.raises(ValueError, match="sparse_dim=2"):
        optimizer.step()
    with pytest.raises(ValueError, match="grad has shape"):
        optimizer.update_rows(param, torch.tensor([0, 1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not a parameter"):
        optimizer.update_rows(torch.zeros(4, 2), torch.tensor([0]), torch.zeros(1, 2))
    optimizer.update_rows(param, torch.tensor([0]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="rows must lie in"):
        optimizer.catch_up(rows=torch.tensor([4]))


# ----------------------------------------------------------------------- ROLE's estimator
def test_role_estimator_matches_dense_adam():
    """The integration proposed for LabelEstimator: catch the batch's rows up before the forward
    reads them, and every row before ``state_dict()``; then ROLE trains as with dense Adam."""
    from spl_losses import create_loss

    num_examples, num_classes, dim = 40, 5, 8
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(num_examples, dim, generator=generator)
    observed = torch.zeros(num_examples, num_classes)
    observed[torch.arange(num_examples), torch.randint(0, num_classes, (num_examples,), generator=generator)] = 1
    runs, snapshots = {}, {}
    for kind in ("adam", "lazy"):
        torch.manual_seed(0)
        head = torch.nn.Linear(dim, num_classes)
        loss_fn = create_loss("role", num_classes=num_classes, num_examples=num_examples, expected_num_pos=1.5,
                              observed_labels=observed, sparse=kind == "lazy", seed=0)
        estimator = loss_fn.estimator
        if kind == "adam":
            optimizers = [torch.optim.Adam([{"params": head.parameters()},
                                            {"params": estimator.parameters(), "lr": 1e-2}], lr=1e-3)]
        else:
            optimizers = [torch.optim.Adam(head.parameters(), lr=1e-3), LazyAdam(estimator.parameters(), lr=1e-2)]
            estimator.use_optimizer(optimizers[1])  # it catches up the rows it reads, and every row before saving
        runs[kind] = (head, loss_fn, optimizers)
    for step in range(200):
        index = torch.randint(0, num_examples // 2 if step % 50 < 25 else num_examples, (6,), generator=generator)
        for kind, (head, loss_fn, optimizers) in runs.items():
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss_fn(head(features[index]), observed[index], index=index).backward()
            for optimizer in optimizers:
                optimizer.step()
            if step == 120:
                snapshots[kind] = loss_fn.state_dict()["estimator.logits"].clone()
    torch.testing.assert_close(snapshots["lazy"], snapshots["adam"], rtol=0, atol=1e-5)
    runs["lazy"][2][1].catch_up()
    adam_logits, lazy_logits = runs["adam"][1].estimator.logits, runs["lazy"][1].estimator.logits
    torch.testing.assert_close(lazy_logits, adam_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(runs["lazy"][0].weight, runs["adam"][0].weight, rtol=0, atol=1e-5)


def test_the_estimator_owns_its_optimizer():
    """The estimator is told its optimizer (no global registry): one that does not step its logits is refused;
    told, it catches rows up through it; without it, nothing is caught up behind its back."""
    from spl_losses.losses import LabelEstimator

    estimator = LabelEstimator(8, 3, sparse=True, seed=0)
    with pytest.raises(ValueError, match="does not step this estimator's logits"):
        estimator.use_optimizer(LazyAdam([torch.nn.Parameter(torch.zeros(8, 3))], lr=0.1))
    optimizer = LazyAdam(estimator.parameters(), lr=0.1)
    for rows in ([0, 1], [2, 3], [2, 3], [2, 3]):  # rows 0 and 1 then owe three steps of their moments' decay
        optimizer.zero_grad()
        F.embedding(torch.tensor(rows), estimator.logits, sparse=True).sum().backward()
        optimizer.step()
    stale = estimator.logits.detach().clone()
    estimator.catch_up()  # not told its optimizer: a no-op
    assert torch.equal(estimator.logits.detach(), stale)
    estimator.use_optimizer(optimizer).catch_up(torch.tensor([0, 1]))
    assert not torch.equal(estimator.logits.detach()[:2], stale[:2])  # the owed updates landed
    caught_up = estimator.logits.detach().clone()
    optimizer.catch_up()  # every row through the optimizer itself: rows 0 and 1 unchanged (already current)
    assert torch.equal(estimator.logits.detach()[:2], caught_up[:2])
