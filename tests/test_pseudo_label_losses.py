"""VLPL and GPR losses: hand-computed entries, explicit formulas (value and gradient), state and checks."""
import math

import pytest
import torch

from spl_losses import create_loss

EPS = 1e-5  # the reference log's epsilon (VLPL)
GR_EPS = 1e-7  # GR's (GPR)


def logit(p):
    return math.log(p / (1.0 - p))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def nlog(v, eps=EPS):
    return -math.log(v + eps)


def batch(seed=0, b=6, c=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 2
    targets = torch.zeros(b, c)
    targets[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1
    targets[0, (targets[0] == 0).nonzero()[0, 0]] = -1  # one observed negative
    pseudo = torch.randint(-1, 2, (b, c), generator=g).float()
    pseudo[1] = torch.rand(c, generator=g) * 2 - 1  # a soft row
    return logits, targets, pseudo


def assert_same_value_and_gradient(loss_fn, formula, logits):
    """The loss and the written-out formula agree in value and in their gradient towards the logits."""
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value, expected = loss_fn(x1), formula(x2)
    value.backward()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------ VLPL
def vlpl_formula(x, t, pseudo, alpha, beta, beta_neg=0.0, ls=0.1):
    """The per-entry VLPL loss written out entry by entry (autograd through every p)."""
    p = torch.sigmoid(x)
    nl_p, nl_q = -torch.log(p + EPS), -torch.log(1 - p + EPS)
    total = torch.zeros(())
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if t[i, j] == 1:
                total = total + nl_p[i, j]
            elif t[i, j] == -1:
                total = total + nl_q[i, j]
            else:
                s = float(pseudo[i, j])
                pos, neg = max(s, 0.0), max(-s, 0.0)
                entropy = p[i, j] * nl_p[i, j] + (1 - p[i, j]) * nl_q[i, j]
                total = (total + pos * beta * ((1 - ls) * nl_p[i, j] + ls * nl_q[i, j])
                         + neg * beta_neg * (ls * nl_p[i, j] + (1 - ls) * nl_q[i, j])
                         - (1 - pos - neg) * alpha * entropy)
    return total / x.numel()


def test_vlpl_hand_computed_entries():
    # row 0: observed positive (p .8), pseudo-positive (p .3), pseudo-negative (p .6), plain unknown (p .1)
    logits = torch.tensor([[logit(0.8), logit(0.3), logit(0.6), logit(0.1)]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    pseudo = torch.tensor([[-1.0, 1.0, -1.0, 0.0]])  # the -1 on the observed positive is ignored
    loss = create_loss("vlpl", num_classes=4, num_examples=1, pseudo_labels=pseudo, alpha=0.2, beta=0.7)
    entries = [nlog(0.8), 0.7 * (0.9 * nlog(0.3) + 0.1 * nlog(0.7)), 0.0,
               -0.2 * (0.1 * nlog(0.1) + 0.9 * nlog(0.9))]
    assert loss(logits, targets, index=torch.tensor([0])).item() == pytest.approx(sum(entries) / 4, rel=1e-6)


@pytest.mark.parametrize("beta_neg", [0.0, 0.3])
def test_vlpl_matches_formula_value_and_gradient(beta_neg):
    logits, targets, pseudo = batch()
    index = torch.tensor([5, 0, 3, 1, 4, 2])
    table = torch.zeros(8, 5)
    table[index] = pseudo
    loss = create_loss("vlpl", num_classes=5, num_examples=8, pseudo_labels=table, alpha=0.2, beta=0.7,
                       beta_neg=beta_neg)
    assert_same_value_and_gradient(lambda x: loss(x, targets, index=index),
                                   lambda x: vlpl_formula(x, targets, pseudo, 0.2, 0.7, beta_neg), logits)


def test_vlpl_stable_form_close_to_reference_and_half_precision_logits():
    logits, targets, pseudo = batch(1)
    stable = create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=pseudo, stable=True)
    reference = create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=pseudo)
    index = torch.arange(6)
    assert stable(logits, targets, index).item() == pytest.approx(reference(logits, targets, index).item(), abs=1e-3)
    half = reference(logits.half(), targets, index)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(reference(logits.half().float(), targets, index).item(), rel=1e-6)


def test_vlpl_without_pseudo_labels_or_in_warmup_is_em():
    logits, targets, pseudo = batch(2)
    index = torch.arange(6)
    em = create_loss("em", alpha=0.2)(logits, targets).item()
    assert create_loss("vlpl", num_classes=5, num_examples=6, alpha=0.2)(logits, targets, index).item() == \
        pytest.approx(em, rel=1e-6)
    loss = create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=pseudo, alpha=0.2, warmup_epochs=2)
    loss.set_epoch(1)
    assert loss(logits, targets, index).item() == pytest.approx(em, rel=1e-6)
    loss.set_epoch(2)
    assert loss(logits, targets, index).item() != pytest.approx(em, rel=1e-3)


def test_pseudo_label_state_round_trip_and_set():
    _, _, pseudo = batch(3)
    loss = create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=pseudo)
    fresh = create_loss("vlpl", num_classes=5, num_examples=6)
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.pseudo_labels, pseudo)
    fresh.set_pseudo_labels(torch.zeros(6, 5))
    assert not fresh.pseudo_labels.any()


def test_pseudo_label_checks():
    with pytest.raises(ValueError, match=r"shape \(num_examples, num_classes\) = \(6, 5\)"):
        create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=torch.zeros(5, 5))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=torch.full((6, 5), 2.0))
    with pytest.raises(TypeError, match="bool"):
        create_loss("vlpl", num_classes=5, num_examples=6, pseudo_labels=torch.zeros(6, 5, dtype=torch.bool))
    loss = create_loss("vlpl", num_classes=5, num_examples=6)
    logits, targets, _ = batch()
    with pytest.raises(ValueError, match="index"):
        loss(logits, targets)
    with pytest.raises(ValueError, match="out of range"):
        loss(logits, targets, index=torch.arange(1, 7))
    with pytest.raises(ValueError, match="warmup_epochs"):
        create_loss("vlpl", num_classes=5, num_examples=6, warmup_epochs=-1)
    assert loss.requires_index and create_loss("gpr", num_classes=5, num_examples=6, expected_num_pos=1.0).requires_index


# ------------------------------------------------------------------------------------------------ GPR
def gpr_formula(x, t, pseudo, epoch, num_epochs=10, lambda1=0.7, lambda2=0.5, rho=0.9, reg=0.001, k_pos=1.5):
    """GPR written out: GR's schedule, then each entry's term; k and v from detached probabilities."""
    slow, fast = min(1.0, max(epoch, 0) / num_epochs), min(1.0, (epoch + 1) / num_epochs)
    w, b = 0.0 + 2.0 * slow, -2.0
    mu, sigma = 0.5 + 0.3 * fast, 2.0 - 1.5 * fast
    p = torch.sigmoid(x)
    total = torch.zeros(())
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            pij, pd = p[i, j], float(p[i, j].detach())
            k = sigmoid(w * pd + b)
            v = math.exp(-(pd - mu) ** 2 / (2 * sigma ** 2))
            nl_p, nl_q = -torch.log(pij + GR_EPS), -torch.log(1 - pij + GR_EPS)
            if t[i, j] == 1:
                total = total + nl_p
            elif t[i, j] == -1:
                total = total + nl_q
            else:
                s = float(pseudo[i, j])
                pos, neg = max(s, 0.0), max(-s, 0.0)
                gr = v * (k * (1 - pij ** 0.01) / 0.01 + (1 - k) * pij)
                pos_term = (1 - min(max(v, 1 - lambda1), 1 - lambda2)) * (rho * nl_p + (1 - rho) * nl_q)
                total = total + pos * pos_term + neg * v * nl_q + (1 - pos - neg) * gr
    regularizer = (p.sum(dim=1).mean() - k_pos) ** 2 / x.shape[1] ** 2
    return total / x.numel() + reg * regularizer


def test_gpr_hand_computed_entries_first_epoch():
    # t = 1: w = 0, b = -2, mu = 0.53, sigma = 1.85; lambda1 .7, lambda2 .5 -> pseudo-positive weight 1 - clamp(v, .3, .5)
    logits = torch.tensor([[logit(0.8), logit(0.3), logit(0.6), logit(0.1)]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    pseudo = torch.tensor([[0.0, 1.0, -1.0, 0.0]])
    loss = create_loss("gpr", num_classes=4, num_examples=1, expected_num_pos=1.0, pseudo_labels=pseudo, reg=0.05)

    def v(p):
        return math.exp(-(p - 0.53) ** 2 / (2 * 1.85 ** 2))

    k = sigmoid(-2.0)
    entries = [nlog(0.8, GR_EPS),
               (1 - min(max(v(0.3), 0.3), 0.5)) * (0.9 * nlog(0.3, GR_EPS) + 0.1 * nlog(0.7, GR_EPS)),
               v(0.6) * nlog(0.4, GR_EPS),
               v(0.1) * (k * (1 - 0.1 ** 0.01) / 0.01 + (1 - k) * 0.1)]
    regularizer = (0.8 + 0.3 + 0.6 + 0.1 - 1.0) ** 2 / 16
    expected = sum(entries) / 4 + 0.05 * regularizer
    assert loss(logits, targets, index=torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("epoch", [0, 4, 9])
def test_gpr_matches_formula_value_and_gradient(epoch):
    logits, targets, pseudo = batch(4)
    loss = create_loss("gpr", num_classes=5, num_examples=6, expected_num_pos=1.5, pseudo_labels=pseudo)
    loss.set_epoch(epoch)
    assert_same_value_and_gradient(lambda x: loss(x, targets, index=torch.arange(6)),
                                   lambda x: gpr_formula(x, targets, pseudo, epoch), logits)


def test_gpr_without_pseudo_labels_and_regulariser_is_gr():
    logits, targets, _ = batch(5)
    gpr = create_loss("gpr", num_classes=5, num_examples=6, expected_num_pos=1.5, reg=0.0)
    gr = create_loss("gr")
    for epoch in (0, 7):
        gpr.set_epoch(epoch)
        gr.set_epoch(epoch)
        assert gpr(logits, targets, torch.arange(6)).item() == pytest.approx(gr(logits, targets).item(), rel=1e-5)


def test_gpr_options_checked():
    with pytest.raises(ValueError, match="lambda2"):
        create_loss("gpr", num_classes=5, num_examples=6, expected_num_pos=1.5, lambda1=0.3, lambda2=0.6)
    with pytest.raises(ValueError, match="expected_num_pos"):
        create_loss("gpr", num_classes=5, num_examples=6, expected_num_pos=-1)
    with pytest.raises(ValueError, match="rho"):
        create_loss("gpr", num_classes=5, num_examples=6, expected_num_pos=1.5, rho=1.5)


def test_citations_are_bibtex():
    from spl_losses import get_loss_class

    for name in ("vlpl", "gpr"):
        assert get_loss_class(name).citation.startswith("@inproceedings{")
