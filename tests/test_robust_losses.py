"""Hill, SPLC and ASL against hand-computed values."""
import math

import pytest
import torch
from timm.loss import AsymmetricLossMultiLabel

import spl_losses.losses.robust  # noqa: F401  (registers the losses)
from spl_losses import create_loss


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def hill_pos(x, margin=1.0, gamma=2.0):
    pm = sigmoid(x - margin)
    return (1.0 - pm) ** gamma * -math.log(pm)


def hill_neg(x, lamb=1.5):
    p = sigmoid(x)
    return (lamb - p) * p * p


LOGITS = torch.tensor([[0.0, 2.0, -1.0], [1.5, -0.5, 0.5]])
TARGETS = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def test_hill_hand_computed_sum_mean_batchmean():
    entries = [hill_pos(0.0), hill_neg(2.0), hill_neg(-1.0), hill_neg(1.5), hill_pos(-0.5), hill_neg(0.5)]
    total = sum(entries)
    for reduction, expected in (("sum", total), ("mean", total / 6), ("batchmean", total / 2)):
        loss = create_loss("hill", reduction=reduction)
        assert loss(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-5)


def test_hill_default_is_sum_and_options_named_after_paper():
    loss = create_loss("hill", lamb=2.0, margin=0.0, gamma=0.0)
    assert loss.reduction == "sum"
    x = torch.tensor([[0.3, -0.2]])
    p1 = sigmoid(-0.2)
    expected = -math.log(sigmoid(0.3)) + (2.0 - p1) * p1 * p1  # gamma 0, margin 0: plain log for the positive
    assert loss(x, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(expected, rel=1e-6)


def splc_entry(x, t, margin=1.0, gamma=2.0):
    """t: 1 observed positive (margin-shifted), "c" corrected unknown (unshifted), 0 negative."""
    if t in (1, "c"):
        p = sigmoid(x - (margin if t == 1 else 0.0))
        return -((1.0 - p) ** gamma) * math.log(p)
    p = sigmoid(x)
    return -(p ** gamma) * math.log(1.0 - p)


def test_splc_no_correction_before_change_epoch():
    loss = create_loss("splc")  # change_epoch 1: epoch 0 has no correction
    logits = torch.tensor([[0.0, 2.0, 0.2], [1.5, -0.5, -3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    expected = (splc_entry(0.0, 1) + splc_entry(2.0, 0) + splc_entry(0.2, 0)
                + splc_entry(1.5, 0) + splc_entry(-0.5, 1) + splc_entry(-3.0, 0))
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_splc_corrects_confident_unknowns_from_change_epoch():
    loss = create_loss("splc", tau=0.6)
    loss.set_epoch(1)
    # sigmoid(2.0)=0.88 > 0.6 and sigmoid(1.5)=0.82 > 0.6 become positives; sigmoid(0.2)=0.55 stays;
    # the observed negative with a confident logit 3.0 is never corrected.
    logits = torch.tensor([[0.0, 2.0, 0.2], [1.5, -0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    expected = (splc_entry(0.0, 1) + splc_entry(2.0, "c") + splc_entry(0.2, 0)
                + splc_entry(1.5, "c") + splc_entry(-0.5, 1) + splc_entry(3.0, 0))
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    assert loss.corrected_targets(logits, targets).tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    # nothing is stored: a batch at a lower probability is not corrected
    assert loss.corrected_targets(logits - 5.0, targets).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def asl_entry(x, t, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    p = sigmoid(x)
    if t == 1:
        return -((1.0 - p) ** gamma_pos) * math.log(max(p, eps))
    q = min(1.0 - p + clip, 1.0)  # probability of "negative" after asymmetric clipping
    return -((1.0 - q) ** gamma_neg) * math.log(max(q, eps))


def test_asl_treats_unknown_as_negative_and_wraps_timm():
    loss = create_loss("asl")
    assert isinstance(loss.asl, AsymmetricLossMultiLabel)
    assert loss.reduction == "sum"
    expected = sum(asl_entry(x, int(t == 1)) for x, t in zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist()))
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-5)
    assert create_loss("asl", reduction="mean")(LOGITS, TARGETS).item() == pytest.approx(expected / 6, rel=1e-5)
    assert create_loss("asl", reduction="batchmean")(LOGITS, TARGETS).item() == pytest.approx(expected / 2, rel=1e-5)


def test_asl_clipping_zeroes_easy_negatives():
    loss = create_loss("asl")
    # p = sigmoid(-4) = 0.018 < clip 0.05: the clipped negative probability is 1, loss exactly 0
    assert loss(torch.tensor([[-4.0]]), torch.tensor([[0.0]])).item() == 0.0


@pytest.mark.parametrize("name,kwargs,message", [
    ("hill", dict(reduction="avg"), "reduction"),
    ("hill", dict(gamma=-1.0), "gamma"),
    ("splc", dict(tau=1.5), "tau"),
    ("splc", dict(change_epoch=-1), "change_epoch"),
    ("asl", dict(clip=2.0), "clip"),
    ("asl", dict(reduction="none"), "reduction"),
])
def test_bad_options_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_loss(name, **kwargs)


@pytest.mark.parametrize("name", ["hill", "splc", "asl"])
def test_gradients_and_wrong_encoding(name):
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    targets = torch.zeros(4, 5)
    targets[torch.arange(4), torch.tensor([0, 1, 2, 3])] = 1
    create_loss(name)(logits, targets).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # a positive's gradient pushes its logit up, an unknown's pushes it down (or leaves it)
    assert (logits.grad[targets == 1] < 0).all()
    assert (logits.grad[targets == 0] >= 0).all()
    with pytest.raises(ValueError, match="observed encoding"):
        create_loss(name)(logits, targets * 2)


def autograd_reference(formula, logits, targets):
    x = logits.clone().requires_grad_(True)
    value = formula(x, targets)
    return value.detach(), torch.autograd.grad(value, x)[0]


def hill_formula(x, t, lamb=1.5, margin=1.0, gamma=2.0):
    pm = torch.sigmoid(x - margin)
    p = torch.sigmoid(x)
    return torch.where(t == 1, (1 - pm) ** gamma * -torch.log(pm), (lamb - p) * p * p).sum()


def splc_formula(x, t, tau=0.6, margin=1.0, gamma=2.0):
    shift = margin * (t == 1).float()  # the margin on observed positives only, not on corrected entries
    t = ((t == 1) | ((t == 0) & (torch.sigmoid(x) > tau))).float()
    p = torch.sigmoid(x - shift)
    return -(t * (1 - p) ** gamma * torch.log(p) + (1 - t) * p ** gamma * torch.log(1 - p)).sum()


@pytest.mark.parametrize("name,formula,epoch", [("hill", hill_formula, 0), ("splc", splc_formula, 1)])
def test_closed_form_gradient_matches_autograd_of_the_formula(name, formula, epoch):
    torch.manual_seed(0)
    logits = torch.randn(6, 7) * 2
    targets = torch.zeros(6, 7)
    targets[torch.arange(6), torch.randint(0, 7, (6,))] = 1
    targets[0, 3] = -1 if targets[0, 3] == 0 else targets[0, 3]
    expected_value, expected_grad = autograd_reference(formula, logits, targets)
    loss = create_loss(name)
    loss.set_epoch(epoch)
    x = logits.clone().requires_grad_(True)
    value = loss(x, targets)
    value.backward()
    assert value.item() == pytest.approx(expected_value.item(), rel=1e-5)
    assert torch.allclose(x.grad, expected_grad, rtol=1e-4, atol=1e-6)
    # under torch.no_grad the value is the same and nothing is tracked
    with torch.no_grad():
        assert loss(x, targets).item() == pytest.approx(value.item(), rel=1e-6)
