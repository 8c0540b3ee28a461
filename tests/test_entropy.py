"""EM and EM+APL: hand-computed values and a scripted pseudo-labeling sequence."""
import math

import pytest
import torch

import spl_losses.losses.entropy  # noqa: F401  (registers the losses)
from spl_losses import create_loss

EPS = 1e-5


def nlog(v):
    return -math.log(v + EPS)


def logit(p):
    return math.log(p / (1.0 - p))


def test_em_hand_computed():
    alpha = 0.2
    logits = torch.tensor([[0.0, math.log(3.0)], [-math.log(3.0), 0.0]])  # p = .5 .75 / .25 .5
    targets = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    entries = [
        nlog(0.5),  # observed positive
        -alpha * (0.75 * nlog(0.75) + 0.25 * nlog(0.25)),  # unknown: -alpha * entropy
        nlog(0.75),  # observed negative: nlog(1 - 0.25)
        -alpha * (0.5 * nlog(0.5) + 0.5 * nlog(0.5)),
    ]
    loss = create_loss("em", alpha=alpha)
    assert loss(logits, targets).item() == pytest.approx(sum(entries) / 4, rel=1e-5)
    stable = create_loss("em", alpha=alpha, stable=True)
    exact = [-math.log(0.5), alpha * (0.75 * math.log(0.75) + 0.25 * math.log(0.25)), -math.log(0.75),
             alpha * math.log(0.5)]
    assert stable(logits, targets).item() == pytest.approx(sum(exact) / 4, rel=1e-5)


def test_em_pushes_unknowns_towards_one_half():
    logits = torch.tensor([[2.0, -2.0, 0.5]], requires_grad=True)
    create_loss("em", alpha=0.1)(logits, torch.zeros(1, 3)).backward()
    # gradient descent lowers the positive logits and raises the negative one (entropy maximization)
    assert logits.grad[0, 0] > 0 and logits.grad[0, 2] > 0 and logits.grad[0, 1] < 0


# The scripted EM+APL case: N = 8, C = 2, T = 4, T_w = 2, theta = 0.9.
OBSERVED = torch.tensor([[1, 0], [0, 1], [0, 1], [1, 0], [0, 0], [0, -1], [0, 1], [0, 0]], dtype=torch.float32)
# class 0: unknown rows 1 2 4 5 6 7 -> U_0 = 6, floor(0.9 * 6 / 2) = 2 per round
# class 1: unknown rows 0 3 4 7 (row 5 is an observed negative) -> U_1 = 4, floor(0.9 * 4 / 2) = 1 per round
PROBS_ROUND1 = torch.tensor([[0.90, 0.02], [0.30, 0.90], [0.10, 0.90], [0.80, 0.30],
                             [0.05, 0.15], [0.01, 0.001], [0.20, 0.80], [0.40, 0.50]])
PROBS_ROUND2 = torch.tensor([[0.90, 0.00], [0.30, 0.90], [0.02, 0.90], [0.80, 0.60],
                             [0.00, 0.10], [0.00, 0.001], [0.25, 0.80], [0.03, 0.20]])


def make_apl(**kwargs):
    defaults = dict(num_classes=2, num_examples=8, alpha=0.2, beta=0.5, warmup_epochs=2, num_epochs=4, theta=0.9)
    defaults.update(kwargs)
    return create_loss("em_apl", **defaults)


def run_rounds(loss):
    loss.set_epoch(0)  # t = 1: still warm-up
    assert loss.needs_predictions and not loss.predictions_due
    assert loss.update_from_predictions(PROBS_ROUND1) is None
    assert not loss.pseudo_mask.any()
    loss.set_epoch(1)  # t = 2 = T_w: first round
    assert loss.predictions_due
    added = loss.update_from_predictions(PROBS_ROUND1)
    assert added.tolist() == [2, 1]
    assert loss.initial_unknown.tolist() == [6, 4]
    assert loss.pseudo_labels_per_round().tolist() == [2, 1]
    # lowest unknown p: class 0 rows 5 (0.01), 4 (0.05); class 1 row 0 (0.02), not row 5 (observed negative)
    assert loss.pseudo_mask.nonzero().tolist() == [[0, 1], [4, 0], [5, 0]]
    assert loss.soft_targets[5, 0].item() == pytest.approx(0.01)
    assert loss.soft_targets[4, 0].item() == pytest.approx(0.05)
    assert loss.soft_targets[0, 1].item() == pytest.approx(0.02)
    loss.set_epoch(2)  # t = 3: second round, already-labelled entries are skipped
    assert loss.update_from_predictions(PROBS_ROUND2).tolist() == [2, 1]
    assert loss.pseudo_mask.nonzero().tolist() == [[0, 1], [2, 0], [4, 0], [4, 1], [5, 0], [7, 0]]
    # soft targets keep the probability from the round that labelled them
    assert loss.soft_targets[4, 0].item() == pytest.approx(0.05)
    assert loss.soft_targets[2, 0].item() == pytest.approx(0.02)
    assert loss.soft_targets[4, 1].item() == pytest.approx(0.10)
    assert loss.soft_targets[7, 0].item() == pytest.approx(0.03)


def test_em_apl_scripted_rounds_with_observed_labels():
    run_rounds(make_apl(observed_labels=OBSERVED))


def test_em_apl_scripted_rounds_recording_observed_labels_from_batches():
    loss = make_apl()
    loss.set_epoch(0)
    for rows in ([3, 0, 6, 1], [2, 7, 4, 5]):
        index = torch.tensor(rows)
        loss(torch.zeros(4, 2), OBSERVED[index], index=index)
    loss.eval()  # evaluation batches are not recorded
    loss(torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), index=torch.tensor([4]))
    loss.train()
    run_rounds(loss)


def test_em_apl_loss_on_pseudo_labelled_entries():
    alpha, beta = 0.2, 0.5
    loss = make_apl(observed_labels=OBSERVED)
    loss.set_epoch(1)
    loss.update_from_predictions(PROBS_ROUND1)  # pseudo: (4, 0) s=0.05, (0, 1) s=0.02, (5, 0) s=0.01
    loss.set_epoch(2)
    p = [[0.3, 0.6], [0.7, 0.2]]
    logits = torch.tensor([[logit(v) for v in row] for row in p])
    index = torch.tensor([4, 0])
    entries = [
        beta * (0.05 * nlog(0.3) + 0.95 * nlog(0.7)),  # (4, 0) soft negative
        -alpha * (0.6 * nlog(0.6) + 0.4 * nlog(0.4)),  # (4, 1) still unknown: EM
        nlog(0.7),  # (0, 0) observed positive
        beta * (0.02 * nlog(0.2) + 0.98 * nlog(0.8)),  # (0, 1) soft negative
    ]
    assert loss(logits, OBSERVED[index], index=index).item() == pytest.approx(sum(entries) / 4, rel=1e-5)
    # before any round it is plain EM
    plain = create_loss("em", alpha=alpha)
    fresh = make_apl(observed_labels=OBSERVED)
    assert fresh(logits, OBSERVED[index], index=index).item() == pytest.approx(
        plain(logits, OBSERVED[index]).item(), rel=1e-6)


def test_em_apl_checks():
    loss = make_apl()
    with pytest.raises(ValueError, match="index"):
        loss(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        loss.update_from_predictions(torch.zeros(7, 2))
    with pytest.raises(ValueError, match="probabilities"):
        loss.update_from_predictions(torch.full((8, 2), 1.5))
    with pytest.raises(ValueError, match="exceed"):
        make_apl(warmup_epochs=4, num_epochs=4)
    with pytest.raises(ValueError, match="observed_labels"):
        make_apl(observed_labels=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="alpha"):
        create_loss("em", alpha=-0.1)


def em_apl_formula(x, t, pseudo, soft, alpha, beta, eps=EPS):
    p = torch.sigmoid(x)
    a, b = -torch.log(p + eps), -torch.log(1 - p + eps)
    unknown = (t == 0) & ~pseudo
    loss = ((t == 1) * a + (t == -1) * b - alpha * unknown * (p * a + (1 - p) * b)
            + beta * pseudo * (soft * a + (1 - soft) * b))
    return loss.mean()


def em_apl_formula_stable(x, t, pseudo, soft, alpha, beta):
    a, b = -torch.nn.functional.logsigmoid(x), -torch.nn.functional.logsigmoid(-x)
    p = torch.sigmoid(x)
    unknown = (t == 0) & ~pseudo
    loss = ((t == 1) * a + (t == -1) * b - alpha * unknown * (p * a + (1 - p) * b)
            + beta * pseudo * (soft * a + (1 - soft) * b))
    return loss.mean()


@pytest.mark.parametrize("stable", [False, True])
def test_em_apl_closed_form_gradient_matches_autograd_of_the_formula(stable):
    alpha, beta = 0.2, 0.5
    loss = make_apl(observed_labels=OBSERVED, stable=stable)
    loss.set_epoch(1)
    loss.update_from_predictions(PROBS_ROUND1)
    torch.manual_seed(0)
    logits = torch.randn(8, 2) * 3
    index = torch.arange(8)
    x = logits.clone().requires_grad_(True)
    value = loss(x, OBSERVED, index=index)
    value.backward()
    ref = logits.clone().requires_grad_(True)
    pseudo, soft = loss.pseudo_mask.clone(), loss.soft_targets.clone()
    formula = em_apl_formula_stable if stable else em_apl_formula
    expected = formula(ref, OBSERVED, pseudo, soft, alpha, beta)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(x.grad, ref.grad, rtol=1e-4, atol=1e-7)


def test_dataset_defaults_match_spec():
    from spl_losses.losses.entropy import EM_APL_DATASET_DEFAULTS
    expected = {"voc2012": (8, 1e-5, 0.2, 0.02, 5), "coco2014": (16, 1e-5, 0.1, 0.9, 5),
                "nuswide": (16, 1e-5, 0.1, 0.2, 4), "cub200": (8, 1e-4, 0.01, 0.4, 3)}
    for name, (bs, lr, alpha, beta, warmup) in expected.items():
        d = EM_APL_DATASET_DEFAULTS[name]
        assert (d["batch_size"], d["lr"], d["alpha"], d["beta"], d["warmup_epochs"]) == (bs, lr, alpha, beta, warmup)
    loss = make_apl(**{k: v for k, v in EM_APL_DATASET_DEFAULTS["voc2012"].items() if k in ("alpha", "beta")})
    assert (loss.alpha, loss.beta) == (0.2, 0.02)
    default = create_loss("em_apl", num_classes=2, num_examples=8)  # defaults are COCO's
    assert (default.alpha, default.beta, default.warmup_epochs, default.num_epochs, default.theta) == (0.1, 0.9, 5, 10, 0.9)


def test_predictions_due_follows_the_warm_up_and_defaults_to_needs_predictions():
    loss = make_apl(warmup_epochs=3, num_epochs=6)
    due = []
    for epoch in range(6):
        loss.set_epoch(epoch)
        due.append(loss.predictions_due)
    assert due == [False, False, True, True, True, True]  # 1-based t >= T_w = 3
    assert make_apl(warmup_epochs=0).predictions_due  # no warm-up: due from the first epoch
    # stateless and other losses: the default is needs_predictions
    assert create_loss("em", num_classes=2).predictions_due is False
    em_apl_state = make_apl().state_dict()
    restored = make_apl()
    restored.set_epoch(0)
    em_apl_state["_extra_state"] = {"epoch": 1}
    restored.load_state_dict(em_apl_state)
    assert restored.predictions_due  # the epoch travels with the state
