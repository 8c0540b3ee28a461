"""ROLE's label estimator around any loss: hand-computed values and gradients, ROLE as a special case."""
import math

import pytest
import torch

import spl_losses.losses.label_estimation  # noqa: F401  (registers the wrapper)
import spl_losses.losses.entropy  # noqa: F401
from spl_losses import create_loss
from spl_losses.losses.label_estimation import with_label_estimator


def sp(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def make(**kwargs):
    defaults = dict(num_classes=2, num_examples=3, expected_num_pos=1.0, stable=True)
    defaults.update(kwargs)
    loss = create_loss("label_estimation", **defaults)
    with torch.no_grad():
        loss.estimator.logits.copy_(torch.tensor([[0.0, 0.0], [2.0, -1.0], [0.0, 0.0]]))
    return loss


def test_hand_computed_value_around_an():
    loss = make(base_loss="an", expected_num_pos=1.0)
    x0, x1 = 0.5, -0.3  # model logits of example 1, target [1, 0]
    z0, z1 = 2.0, -1.0  # its estimator logits
    p0, p1, q0, q1 = sigmoid(x0), sigmoid(x1), sigmoid(z0), sigmoid(z1)
    base = (sp(-x0) + sp(x1)) / 2
    follow = (q0 * sp(-x0) + (1 - q0) * sp(x0) + q1 * sp(-x1) + (1 - q1) * sp(x1)) / 2
    est = (sp(-z0) + p0 * sp(-z0) + (1 - p0) * sp(z0) + p1 * sp(-z1) + (1 - p1) * sp(z1)) / 2
    est += (q0 + q1 - 1.0) ** 2 / 4
    expected = 0.5 * base + 0.5 * follow + 0.5 * est
    value = loss(torch.tensor([[x0, x1]]), torch.tensor([[1.0, 0.0]]), index=torch.tensor([1]))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_hand_computed_gradients_are_separated():
    w, k = 0.25, 1.0
    loss = make(base_loss="an", estimate_weight=w, expected_num_pos=k)
    logits = torch.tensor([[0.5, -0.3], [1.0, 0.2]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    index = torch.tensor([1, 2])
    loss(logits, targets, index=index).backward()
    p = torch.sigmoid(logits.detach())
    q = torch.sigmoid(loss.estimator.logits.detach()[index])
    y = (targets == 1).float()
    n = 4  # B·C
    # classifier: (1-w)·AN + w·BCE towards the estimates, nothing from the estimator's own terms
    assert torch.allclose(logits.grad, ((1 - w) * (p - y) + w * (p - q)) / n, atol=1e-6)
    # estimator: 0.5·[pos/neg terms + BCE towards sg(p)] + 0.5·EPR(q); nothing from the classifier's terms
    neg = (targets == -1).float()
    reg = 2 * (q.sum(dim=1).mean() - k) / 2 ** 2 / 2 * q * (1 - q)  # d/dz (mean_b sum_c q - k)^2 / C^2
    expected = 0.5 * (y * (q - 1) + neg * q + (q - p)) / n + 0.5 * reg
    grad = loss.estimator.logits.grad
    assert torch.allclose(grad[index], expected, atol=1e-6)
    assert (grad[0] == 0).all()


def test_epr_base_with_equal_weights_is_role():
    torch.manual_seed(0)
    observed = torch.zeros(6, 4)
    observed[torch.arange(6), torch.tensor([0, 1, 2, 3, 0, 1])] = 1
    observed[5, 3] = -1
    role = create_loss("role", num_classes=4, num_examples=6, expected_num_pos=1.5, observed_labels=observed, seed=3)
    wrapped = create_loss("label_estimation", base_loss="epr", num_classes=4, num_examples=6, expected_num_pos=1.5,
                          observed_labels=observed, seed=3)
    assert torch.equal(role.estimator.logits, wrapped.estimator.logits)
    logits = torch.randn(3, 4)
    index = torch.tensor([5, 0, 2])
    values, grads = [], []
    for loss in (role, wrapped):
        x = logits.clone().requires_grad_(True)
        value = loss(x, observed[index], index=index)
        value.backward()
        values.append(value.item())
        grads.append((x.grad, loss.estimator.logits.grad))
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-7)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-7)


def test_protocol_is_forwarded_to_a_stateful_base():
    loss = create_loss("label_estimation", base_loss="em_apl", num_classes=2, num_examples=4, expected_num_pos=1.0,
                       base_kwargs=dict(warmup_epochs=1, num_epochs=3, beta=0.5))
    assert loss.base_loss.num_examples == 4 and loss.base_loss.warmup_epochs == 1
    assert loss.needs_predictions and loss.requires_index
    loss.set_epoch(0)
    observed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    loss(torch.zeros(4, 2), observed, index=torch.arange(4))
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.9], [0.9, 0.4], [0.6, 0.9]])
    added = loss.update_from_predictions(probs)  # U = (2, 2): floor(0.9 * 2 / 2) = 0 per class
    assert added.tolist() == [0, 0]
    loss.set_epoch(2)
    assert loss.epoch == 2 and loss.base_loss.epoch == 2
    state = loss.state_dict()
    assert {"estimator.logits", "base_loss.pseudo_mask", "base_loss.soft_targets"} <= set(state)
    assert not create_loss("label_estimation", num_classes=2, num_examples=4, expected_num_pos=1.0).needs_predictions


def test_with_label_estimator_wraps_an_instance():
    em = create_loss("em", alpha=0.3, num_classes=3)
    loss = with_label_estimator(em, num_examples=5, expected_num_pos=1.0, seed=0)
    assert loss.base_loss is em and loss.num_classes == 3
    value = loss(torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), index=torch.tensor([0, 4]))
    assert torch.isfinite(value)
    with pytest.raises(ValueError, match="num_classes"):
        with_label_estimator(create_loss("em"), num_examples=5, expected_num_pos=1.0)


@pytest.mark.parametrize("base,message", [("bce", "multi-hot"), ("role", "already has"), ("emm", "Unknown loss")])
def test_bad_base_losses(base, message):
    with pytest.raises(ValueError, match=message):
        create_loss("label_estimation", base_loss=base, num_classes=2, num_examples=4, expected_num_pos=1.0)


def test_needs_index():
    loss = make()
    with pytest.raises(ValueError, match="index"):
        loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))


def test_shared_arguments_reach_the_base_only_where_it_takes_them():
    common = dict(num_classes=2, num_examples=4, expected_num_pos=1.0, num_epochs=4)
    assert create_loss("label_estimation", base_loss="gr", **common).base_loss.num_epochs == 4
    epr = create_loss("label_estimation", base_loss="epr", stable=True, **common).base_loss
    assert epr.expected_num_pos == 1.0 and epr.stable and epr.num_classes == 2
    hill = create_loss("label_estimation", base_loss="hill", base_kwargs=dict(lamb=2.0), **common).base_loss
    assert hill.lamb == 2.0  # hill takes neither num_epochs nor eps/stable: they are not passed
    with pytest.raises(ValueError, match="base_kwargs"):
        with_label_estimator(create_loss("em", num_classes=2), num_examples=4, expected_num_pos=1.0,
                             base_kwargs=dict(alpha=0.3))


def test_create_loss_with_label_estimation_flag_routes_arguments():
    loss = create_loss("em", label_estimation=True, num_classes=3, num_examples=5, expected_num_pos=1.0,
                       alpha=0.3, estimate_weight=0.25, sparse=True, seed=1)
    assert loss.loss_name == "label_estimation"
    assert loss.base_loss.loss_name == "em"
    assert loss.base_loss.alpha == 0.3
    assert loss.estimate_weight == 0.25
    assert loss.estimator.sparse and tuple(loss.estimator.logits.shape) == (5, 3)
    # equals building the wrapper by hand with the same arguments
    by_hand = create_loss("label_estimation", base_loss="em", base_kwargs={"alpha": 0.3}, num_classes=3,
                          num_examples=5, expected_num_pos=1.0, estimate_weight=0.25, sparse=True, seed=1)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]])
    index = torch.tensor([4, 0])
    assert loss(logits, targets, index=index).item() == pytest.approx(by_hand(logits, targets, index=index).item())


def test_predictions_due_follows_the_base_loss_warmup():
    loss = create_loss("em", label_estimation=True, num_classes=2, num_examples=4, expected_num_pos=1.0)
    assert not loss.needs_predictions and not loss.predictions_due
    loss = create_loss("em_apl", label_estimation=True, num_classes=2, num_examples=4, expected_num_pos=1.0,
                       warmup_epochs=3, num_epochs=5)
    due = []
    for epoch in range(5):
        loss.set_epoch(epoch)
        due.append(loss.predictions_due)
    assert due == [False, False, True, True, True]  # rounds after 1-based epochs 3, 4, 5
