"""GR loss: schedule values at the first and last epoch, hand-computed loss and gradient."""
import math

import pytest
import torch

import spl_losses.losses.gr  # noqa: F401  (registers the loss)
from spl_losses import create_loss


def logit(p):
    return math.log(p / (1.0 - p))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_schedule_first_and_last_epoch():
    loss = create_loss("gr")  # T = 10, (w0, wT, b0, bT) = (0, 2, -2, -2), (mu0, sigma0, muT, sigmaT) = (.5, 2, .8, .5)
    w, b, mu, sigma = loss.schedule()  # t = 1: (w, b) factor 0, (mu, sigma) factor 1/10
    assert (w, b) == (0.0, -2.0)
    assert mu == pytest.approx(0.53) and sigma == pytest.approx(1.85)
    loss.set_epoch(9)  # t = T = 10: (w, b) factor 9/10, (mu, sigma) factor 1
    w, b, mu, sigma = loss.schedule()
    assert w == pytest.approx(1.8) and b == pytest.approx(-2.0)
    assert mu == pytest.approx(0.8) and sigma == pytest.approx(0.5)
    loss.set_epoch(30)  # past T the factors stay at 1
    assert tuple(loss.schedule()) == pytest.approx((2.0, -2.0, 0.8, 0.5))


def unknown_term(p, w, b, mu, sigma, q2=0.01, q3=1.0):
    k = sigmoid(w * p + b)
    v = math.exp(-((p - mu) ** 2) / (2 * sigma ** 2))
    return v * (k * (1 - p ** q2) / q2 + (1 - k) * (1 - (1 - p) ** q3) / q3)


def test_loss_hand_computed_first_epoch():
    logits = torch.tensor([[logit(0.8), logit(0.3)], [logit(0.6), logit(0.1)]])
    targets = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    entries = [-math.log(0.8 + 1e-7), unknown_term(0.3, 0.0, -2.0, 0.53, 1.85),
               -math.log(0.4 + 1e-7), unknown_term(0.1, 0.0, -2.0, 0.53, 1.85)]
    assert create_loss("gr")(logits, targets).item() == pytest.approx(sum(entries) / 4, rel=1e-5)


def test_loss_hand_computed_last_epoch_custom_q():
    loss = create_loss("gr", q2=0.5, q3=2.0, num_epochs=4)
    loss.set_epoch(3)  # t = 4 = T: w = 2 * 3/4, b = -2, mu = .8, sigma = .5
    logits = torch.tensor([[logit(0.7)]])
    expected = unknown_term(0.7, 1.5, -2.0, 0.8, 0.5, q2=0.5, q3=2.0)
    assert loss(logits, torch.zeros(1, 1)).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_treats_k_and_v_as_constants():
    p = 0.3
    logits = torch.tensor([[logit(p)]], requires_grad=True)
    create_loss("gr")(logits, torch.zeros(1, 1)).backward()
    k = sigmoid(-2.0)
    v = math.exp(-((p - 0.53) ** 2) / (2 * 1.85 ** 2))
    dl1 = -(p ** (0.01 - 1.0))  # d/dp (1 - p^q2)/q2
    dl2 = 1.0  # d/dp (1 - (1-p)^1)/1
    expected = v * (k * dl1 + (1 - k) * dl2) * p * (1 - p)
    assert logits.grad.item() == pytest.approx(expected, rel=1e-4)


def test_bad_options():
    with pytest.raises(ValueError, match="sigma0"):
        create_loss("gr", sigma0=0.0)
    with pytest.raises(ValueError, match="q2"):
        create_loss("gr", q2=-1.0)
    with pytest.raises(ValueError, match="num_epochs"):
        create_loss("gr", num_epochs=0)


def test_closed_form_gradient_matches_autograd_of_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(5, 6) * 2
    targets = torch.zeros(5, 6)
    targets[torch.arange(5), torch.randint(0, 6, (5,))] = 1
    targets[1, 0] = -1 if targets[1, 0] == 0 else targets[1, 0]
    loss = create_loss("gr", q3=2.0)
    loss.set_epoch(4)
    w, b, mu, sigma = loss.schedule()
    x = logits.clone().requires_grad_(True)
    value = loss(x, targets)
    value.backward()
    ref = logits.clone().requires_grad_(True)
    p = torch.sigmoid(ref)
    pd = p.detach()
    k = torch.sigmoid(w * pd + b)
    v = torch.exp(-(pd - mu) ** 2 / (2 * sigma ** 2))
    unknown = v * (k * (1 - p ** 0.01) / 0.01 + (1 - k) * (1 - (1 - p) ** 2) / 2)
    entries = torch.where(targets == 1, -torch.log(p + 1e-7),
                          torch.where(targets == -1, -torch.log(1 - p + 1e-7), unknown))
    expected = entries.mean()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(x.grad, ref.grad, rtol=1e-4, atol=1e-7)
