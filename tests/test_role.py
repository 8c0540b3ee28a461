"""ROLE and its LabelEstimator (Cole et al., 2021): value, gradient routing, initialisation, state, optimizers."""
import math

import pytest
import torch

from spl_losses import LabelEstimator, create_loss

EPS = 1e-5
LOGIT_06 = math.log(0.6 / 0.4)
LOGIT_0995 = math.log(0.995 / 0.005)

# a batch of two examples (dataset rows 2 and 0) with three classes
LOGITS = [[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]]
OBSERVED = [[1, 0, -1], [0, 1, 0]]
INDEX = [2, 0]
# the estimator's probabilities for the 4 training examples
ESTIMATES = [[0.3, 0.6, 0.5], [0.2, 0.2, 0.2], [0.9, 0.4, 0.1], [0.5, 0.5, 0.5]]
K = 1.5


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def nlog(v):
    return -math.log(v + EPS)


def make_role(**kwargs):
    kwargs.setdefault("seed", 0)
    loss = create_loss("role", num_classes=3, num_examples=4, expected_num_pos=K, **kwargs)
    loss.estimator.init_from_estimates(torch.tensor(ESTIMATES), clamp=0.0)
    return loss


def batch():
    return torch.tensor(LOGITS, requires_grad=True), torch.tensor(OBSERVED, dtype=torch.float32), torch.tensor(INDEX)


def test_role_hand_value():
    total = 0.0
    for b in range(2):
        for c in range(3):
            p, y, t = sig(LOGITS[b][c]), ESTIMATES[INDEX[b]][c], OBSERVED[b][c]
            observed = (nlog(p) + nlog(y)) if t == 1 else (nlog(1 - p) + nlog(1 - y)) if t == -1 else 0.0
            cross = (y * nlog(p) + (1 - y) * nlog(1 - p)) + (p * nlog(y) + (1 - p) * nlog(1 - y))
            total += 0.5 * observed + 0.5 * cross
    p_rows = [sum(sig(z) for z in row) for row in LOGITS]
    y_rows = [sum(ESTIMATES[i]) for i in INDEX]
    reg = 0.5 * ((sum(p_rows) / 2 - K) ** 2 / 9 + (sum(y_rows) / 2 - K) ** 2 / 9)
    logits, targets, index = batch()
    got = make_role()(logits, targets, index=index)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(total / 6 + reg, rel=1e-5)


def test_gradient_routing_stable_form_matches_hand_derivation():
    # stable form: d/dx [a·softplus(-x) + b·softplus(x)] = (a + b)·p - a. The model's terms are
    # a = pos + sg(y), b = neg + 1 - sg(y); the estimator's a = pos + sg(p), b = neg + 1 - sg(p).
    # The regulariser adds 0.5 · 2(mean_b sum_c v - k)/C² · v(1-v)/B to each side's own v.
    loss = make_role(stable=True)
    logits, targets, index = batch()
    loss(logits, targets, index=index).backward()
    est_grad = loss.estimator.logits.grad
    p_mean = sum(sig(z) for row in LOGITS for z in row) / 2
    y_mean = sum(sum(ESTIMATES[i]) for i in INDEX) / 2
    for b in range(2):
        for c in range(3):
            p, y, t = sig(LOGITS[b][c]), ESTIMATES[INDEX[b]][c], OBSERVED[b][c]
            pos, neg = float(t == 1), float(t == -1)
            g_model = 0.5 * ((pos + neg + 1) * p - pos - y) / 6 + 0.5 * 2 * (p_mean - K) / 9 * p * (1 - p) / 2
            g_est = 0.5 * ((pos + neg + 1) * y - pos - p) / 6 + 0.5 * 2 * (y_mean - K) / 9 * y * (1 - y) / 2
            assert logits.grad[b, c].item() == pytest.approx(g_model, rel=1e-4, abs=1e-7)
            assert est_grad[INDEX[b], c].item() == pytest.approx(g_est, rel=1e-4, abs=1e-7)
    # rows of the estimator that are not in the batch get no gradient
    assert torch.count_nonzero(est_grad[[1, 3]]) == 0


def _side(v, other, pos, neg, k):
    """One side's terms of ROLE (reference form) with the other side held constant."""
    nl_v, nl_1mv = -torch.log(v + EPS), -torch.log(1 - v + EPS)
    per_entry = pos * nl_v + neg * nl_1mv + other * nl_v + (1 - other) * nl_1mv
    reg = (v.sum(1).mean() - k) ** 2 / v.shape[1] ** 2
    return 0.5 * per_entry.mean() + 0.5 * reg


def test_gradient_routing_reference_form_each_side_only_from_its_own_terms():
    loss = make_role()
    logits, targets, index = batch()
    loss(logits, targets, index=index).backward()

    pos, neg = (targets == 1).float(), (targets == -1).float()
    est = torch.tensor(ESTIMATES)[index]
    # model side alone, estimator held constant
    x = torch.tensor(LOGITS, requires_grad=True)
    _side(torch.sigmoid(x), est, pos, neg, K).backward()
    torch.testing.assert_close(logits.grad, x.grad, rtol=1e-4, atol=1e-7)
    # estimator side alone, model held constant
    e = torch.logit(est).requires_grad_()
    _side(torch.sigmoid(e), torch.sigmoid(torch.tensor(LOGITS)), pos, neg, K).backward()
    torch.testing.assert_close(loss.estimator.logits.grad[index], e.grad, rtol=1e-4, atol=1e-7)


def test_index_is_required_and_checked():
    loss = make_role()
    logits, targets, _ = batch()
    with pytest.raises(ValueError, match="index"):
        loss(logits, targets)
    with pytest.raises(ValueError, match="out of range"):
        loss(logits, targets, index=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="out of range"):
        loss(logits, targets, index=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="shape"):
        loss(logits, targets, index=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        loss(logits, targets, index=torch.tensor([0.0, 1.0]))
    assert loss.requires_index


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="num_examples"):
        create_loss("role", num_classes=3, num_examples=0, expected_num_pos=1.0)
    with pytest.raises(ValueError, match="expected_num_pos"):
        create_loss("role", num_classes=3, num_examples=4, expected_num_pos=-1.0)
    with pytest.raises(ValueError, match="observed_labels"):
        create_loss("role", num_classes=3, num_examples=4, expected_num_pos=1.0, observed_labels=torch.zeros(4, 2))


# ------------------------------------------------------------------ initialisation
def test_init_from_observed_labels_per_spec():
    torch.manual_seed(0)
    observed = torch.zeros(50, 4)
    observed[torch.arange(50), torch.randint(0, 4, (50,))] = 1
    observed[0, (observed[0] == 0).nonzero()[0]] = -1
    est = LabelEstimator(50, 4, observed_labels=observed, seed=3)
    y = est.estimates()
    assert est.logits.shape == (50, 4) and est.logits.dtype == torch.float32
    torch.testing.assert_close(y[observed == 1], torch.full_like(y[observed == 1], 0.995))
    torch.testing.assert_close(y[observed == -1], torch.full_like(y[observed == -1], 0.005))
    unobserved = est.logits.detach()[observed == 0]
    assert unobserved.abs().max() < LOGIT_06
    assert unobserved.std() > 0.1  # drawn, not constant
    assert ((y[observed == 0] > 0.4) & (y[observed == 0] < 0.6)).all()


def test_init_without_labels_is_all_unobserved_and_seeded():
    a = LabelEstimator(6, 3, seed=7).logits.detach()
    b = LabelEstimator(6, 3, seed=7).logits.detach()
    c = LabelEstimator(6, 3, seed=8).logits.detach()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() < LOGIT_06


def test_init_from_estimates_round_trips_and_validates():
    est = LabelEstimator(4, 3, seed=0)
    target = torch.tensor(ESTIMATES)
    est.init_from_estimates(target)
    torch.testing.assert_close(est.estimates(), target, rtol=0, atol=1e-6)
    # hand-off from one estimator to another (linear training -> fine-tuning)
    other = LabelEstimator(4, 3, seed=1)
    other.init_from_estimates(est.estimates())
    torch.testing.assert_close(other.estimates(), target, rtol=0, atol=1e-6)
    # 0 and 1 are clamped to finite logits
    est.init_from_estimates(torch.tensor([[0.0, 1.0, 0.5]] * 4))
    assert torch.isfinite(est.logits).all()
    with pytest.raises(ValueError, match="shape"):
        est.init_from_estimates(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="probabilities"):
        est.init_from_estimates(torch.full((4, 3), 1.5))


def test_estimates_are_a_detached_copy():
    est = LabelEstimator(4, 3, seed=0)
    y = est.estimates()
    assert not y.requires_grad
    y.fill_(0.0)
    assert est.estimates().min() > 0.3


def test_state_dict_round_trip():
    loss = make_role()
    loss.set_epoch(2)
    restored = create_loss("role", num_classes=3, num_examples=4, expected_num_pos=K, seed=99)
    assert not torch.equal(restored.estimator.logits, loss.estimator.logits)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.estimator.logits, loss.estimator.logits)
    assert restored.epoch == 2
    assert "estimator.logits" in loss.state_dict()
    logits, targets, index = batch()
    assert restored(logits, targets, index=index).item() == loss(logits, targets, index=index).item()


# ------------------------------------------------------------------ optimizers
def test_dense_adam_with_ten_times_learning_rate_group():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loss_fn = create_loss("role", num_classes=3, num_examples=4, expected_num_pos=K, seed=0)
    lr = 1e-3
    optimizer = torch.optim.Adam([
        {"params": model.parameters(), "lr": lr},
        {"params": loss_fn.estimator.parameters(), "lr": 10 * lr},
    ])
    model_before = model.weight.detach().clone()
    est_before = loss_fn.estimator.logits.detach().clone()
    loss_fn(model(torch.randn(2, 5)), torch.tensor(OBSERVED), index=torch.tensor(INDEX)).backward()
    assert loss_fn.estimator.logits.grad.layout == torch.strided
    optimizer.step()
    # Adam's first step moves each parameter by about lr·sign(grad)
    model_step = (model.weight.detach() - model_before).abs()
    est_step = (loss_fn.estimator.logits.detach() - est_before).abs()
    torch.testing.assert_close(model_step, torch.full_like(model_step, lr), rtol=1e-2, atol=0)
    torch.testing.assert_close(est_step[INDEX], torch.full((2, 3), 10 * lr), rtol=1e-2, atol=0)
    assert torch.count_nonzero(est_step[[1, 3]]) == 0


def test_sparse_gradients_work_with_sparse_adam():
    loss_fn = make_role(sparse=True)
    logits, targets, index = batch()
    loss_fn(logits, targets, index=index).backward()
    grad = loss_fn.estimator.logits.grad
    assert grad.is_sparse
    dense_fn = make_role()
    dense_logits = logits.detach().clone().requires_grad_()
    dense_fn(dense_logits, targets, index=index).backward()
    torch.testing.assert_close(grad.to_dense(), dense_fn.estimator.logits.grad)

    before = loss_fn.estimator.logits.detach().clone()
    optimizer = torch.optim.SparseAdam(loss_fn.estimator.parameters(), lr=1e-2)
    optimizer.step()
    moved = (loss_fn.estimator.logits.detach() - before).abs()
    torch.testing.assert_close(moved[INDEX], torch.full((2, 3), 1e-2), rtol=1e-2, atol=0)
    assert torch.count_nonzero(moved[[1, 3]]) == 0


def test_estimator_is_held_once_and_not_copied_by_a_step():
    loss_fn = make_role(sparse=True)
    ptr = loss_fn.estimator.logits.data_ptr()
    logits, targets, index = batch()
    for _ in range(2):
        loss_fn(logits, targets, index=index).backward()
    assert loss_fn.estimator.logits.data_ptr() == ptr
    assert [n for n, _ in loss_fn.named_parameters()] == ["estimator.logits"]
