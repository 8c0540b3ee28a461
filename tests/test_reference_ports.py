"""Reference-exact behaviour: each loss against an explicit port, written here, of its original formula.

The ports restate the originals' arithmetic in float64 with autograd (no package code), so both
the value and the gradient of the package's float32 loss are compared, within 1e-5 relative:

- SPLC: ``losses.py`` (class ``SPLC``) of Zhang et al.'s robust-loss-mlml repository;
- ASL: ``AsymmetricLoss`` of Alibaba-MIIL/ASL as its ``train.py`` builds it;
- LL-R / LL-Ct: ``losses.py`` and the per-epoch ``clean_rate`` update of ``train.py`` in LargeLossMatters;
- ROLE hand-off: ``inverse_sigmoid`` of Cole et al.'s ``models.py`` and ``loss_role`` of its ``losses.py``.
"""
import math

import numpy as np
import pytest
import torch

from spl_losses import create_loss

B, C = 16, 20  # VOC 2012 at the reference batch size: B·C = 320
RTOL = 1e-5


def spml_batch(seed, scale=2.0, shift=0.0, batch_size=B, num_classes=C):
    """Logits and single-positive {0, 1} targets (one positive per row, the rest unknown)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, num_classes, generator=gen) * scale + shift
    targets = torch.zeros(batch_size, num_classes)
    targets[torch.arange(batch_size), torch.randint(0, num_classes, (batch_size,), generator=gen)] = 1.0
    return logits, targets


def port_value_and_grad(port, logits, *args, **kwargs):
    """Value and gradient of a float64 port, by autograd."""
    x = logits.double().requires_grad_(True)
    value = port(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(value, x)
    return value.item(), grad


def package_value_and_grad(loss, logits, targets, **call):
    x = logits.clone().requires_grad_(True)
    value = loss(x, targets, **call)
    value.backward()
    return value.item(), x.grad.double()


def assert_matches(value, grad, expected_value, expected_grad):
    assert value == pytest.approx(expected_value, rel=RTOL)
    scale = expected_grad.abs().max().item()
    assert (grad - expected_grad).abs().max().item() <= RTOL * scale


# --------------------------------------------------------------------------------------------- SPLC
def splc_original(x, targets, epoch, tau=0.6, change_epoch=1, margin=1.0, gamma=2.0):
    """Zhang et al.'s SPLC: shift the observed positives' logits by the margin, then (from
    change_epoch) turn entries whose probability from those logits exceeds tau into targets 1,
    then a focal BCE on the shifted logits (unknowns were never shifted), summed."""
    observed = targets == 1
    z = x - margin * observed.double()
    t = targets.double()
    if epoch >= change_epoch:
        t = torch.where(torch.sigmoid(z) > tau, torch.ones_like(t), t)
    p = torch.sigmoid(z)
    focal = torch.where(t == 1, 1 - p, p) ** gamma  # not detached in the original
    bce = torch.where(t == 1, -torch.nn.functional.logsigmoid(z), -torch.nn.functional.logsigmoid(-z))
    return (focal * bce).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("epoch", [0, 1, 3])
def test_splc_matches_the_original(seed, epoch):
    logits, targets = spml_batch(seed)
    loss = create_loss("splc")
    loss.set_epoch(epoch)
    value, grad = package_value_and_grad(loss, logits, targets)
    assert_matches(value, grad, *port_value_and_grad(splc_original, logits, targets, epoch))


def test_splc_corrected_entries_are_scored_without_the_margin():
    loss = create_loss("splc", gamma=0.0)  # plain BCE terms: -log sigmoid(x - shift)
    loss.set_epoch(1)
    logits = torch.tensor([[0.5, 2.0]])  # the unknown entry, p = 0.88 > 0.6, is corrected
    value = loss(logits, torch.tensor([[1.0, 0.0]])).item()
    expected = math.log1p(math.exp(-(0.5 - 1.0))) + math.log1p(math.exp(-2.0))
    assert value == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------- ASL
def asl_original(x, targets, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    """Ridnik et al.'s AsymmetricLoss as its train.py builds it: asymmetric clipping of the negative
    probability, focusing weight computed without gradient, summed (unknowns are negatives)."""
    y = targets.double()
    p = torch.sigmoid(x)
    p_neg = torch.clamp(1 - p + clip, max=1.0)
    log_likelihood = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    with torch.no_grad():
        base = 1 - (p * y + p_neg * (1 - y))
        weight = base ** (gamma_pos * y + gamma_neg * (1 - y))
    return -(log_likelihood * weight).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asl_defaults_match_the_papers_training_script(seed):
    logits, targets = spml_batch(seed, shift=-1.0)
    loss = create_loss("asl")
    assert (loss.asl.gamma_pos, loss.asl.gamma_neg, loss.asl.clip, loss.reduction) == (0.0, 4.0, 0.05, "sum")
    assert loss.asl.disable_torch_grad_focal_loss
    value, grad = package_value_and_grad(loss, logits, targets)
    assert_matches(value, grad, *port_value_and_grad(asl_original, logits, targets))


def test_asl_keeps_timms_options():
    logits, targets = spml_batch(5, shift=-1.0)
    loss = create_loss("asl", gamma_pos=1.0, disable_torch_grad_focal_loss=False, reduction="batchmean")
    # with the focusing weight differentiable the gradient differs from the detached one
    _, grad_detached = package_value_and_grad(create_loss("asl", gamma_pos=1.0), logits, targets)
    value, grad = package_value_and_grad(loss, logits, targets)
    assert not torch.allclose(grad, grad_detached)
    assert value == pytest.approx(create_loss("asl", gamma_pos=1.0)(logits, targets).item() / B, rel=1e-6)


# -------------------------------------------------------------------------------------- LL-R, LL-Ct
def original_clean_rate(epoch, delta_rel):
    """train.py of LargeLossMatters: clean_rate starts at 1 and loses delta_rel after each epoch."""
    clean_rate = 1
    for _ in range(1, epoch):  # epochs 1 .. epoch-1 have finished
        clean_rate -= delta_rel
    return clean_rate


def large_loss_original(x, targets, epoch, delta_rel, scheme):
    """losses.py of LargeLossMatters: BCE-with-logits against assume-negative targets; after the
    first epoch the unobserved entries whose loss reaches the k-th largest unobserved loss,
    k = ceil(B·C·(1 - clean_rate)), are rejected (LL-R) or scored for target 1 (LL-Ct); mean."""
    y = targets.double()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    clean_rate = original_clean_rate(epoch, delta_rel)
    if clean_rate == 1:
        return loss.mean()
    k = math.ceil(x.numel() * (1 - clean_rate))
    unobserved_loss = (targets == 0).double() * loss
    threshold = torch.topk(unobserved_loss.flatten(), k).values[-1]
    taken = unobserved_loss >= threshold
    if scheme == "LL-Ct":
        replacement = torch.nn.functional.binary_cross_entropy_with_logits(x, 1 - y, reduction="none")
    else:
        replacement = torch.zeros_like(loss)
    return torch.where(taken, replacement, loss).mean()


def test_rejection_count_accumulates_clean_rate_like_the_original():
    # VOC at B = 16: epoch 6 with delta 0.005 takes ceil(320 * 0.025000000000000022) = 9, not 8
    assert math.ceil(B * C * (1 - original_clean_rate(6, 0.005))) == 9
    logits, targets = spml_batch(0)
    logits = logits.clone().requires_grad_(True)
    loss = create_loss("ll_r")
    loss.set_epoch(5)
    loss(logits, targets).backward()
    rejected = ((logits.grad == 0) & (targets == 0)).sum().item()
    assert rejected == 9


@pytest.mark.parametrize("name,scheme,delta_rel", [("ll_r", "LL-R", 0.005), ("ll_ct", "LL-Ct", 0.002)])
@pytest.mark.parametrize("epoch", [1, 2, 6, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_large_loss_matches_the_original(name, scheme, delta_rel, epoch, seed):
    logits, targets = spml_batch(seed)
    loss = create_loss(name, delta_rel=delta_rel)
    loss.set_epoch(epoch - 1)
    value, grad = package_value_and_grad(loss, logits, targets)
    expected = port_value_and_grad(large_loss_original, logits, targets, epoch, delta_rel, scheme)
    assert_matches(value, grad, *expected)


# ------------------------------------------------------------------------------------ ROLE hand-off
def inverse_sigmoid_original(p):
    """models.py of Cole et al.: clip to [1e-5, 1 - 1e-5], then log(p / (1 - p)), in float32 numpy."""
    epsilon = 1e-5
    p = np.maximum(np.minimum(p, 1 - epsilon), epsilon)
    return np.log(p / (1 - p))


def role_original(x, estimator_logits, targets, expected_num_pos):
    """loss_role of Cole et al.: both sides' positive, cross and EPR terms, mean over B·C plus the
    regularisers; each side sees the other detached."""
    nlog = lambda v: -torch.log(v + 1e-5)  # noqa: E731
    preds, estimates = torch.sigmoid(x), torch.sigmoid(estimator_logits)
    pos = (targets == 1).double()
    num_classes = x.shape[1]

    def reg(v):
        return (v.sum(1).mean(0) - expected_num_pos) ** 2 / num_classes ** 2

    est_d, preds_d = estimates.detach(), preds.detach()
    cross_1 = est_d * nlog(preds) + (1 - est_d) * nlog(1 - preds)
    cross_2 = preds_d * nlog(estimates) + (1 - preds_d) * nlog(1 - estimates)
    matrix = 0.5 * (pos * nlog(preds) + pos * nlog(estimates)) + 0.5 * (cross_1 + cross_2)
    return (matrix / x.numel()).sum() + 0.5 * (reg(preds) + reg(estimates))


def test_handoff_clips_like_the_original_and_role_matches_after_it():
    num_examples, k = 40, 1.5
    gen = torch.Generator().manual_seed(0)
    # a trained linear-phase estimate: many entries saturated beyond 1 - 1e-5 or below 1e-5
    linear_phase = torch.sigmoid(torch.randn(num_examples, C, generator=gen) * 9.0)
    loss = create_loss("role", num_classes=C, num_examples=num_examples, expected_num_pos=k, seed=0)
    loss.estimator.init_from_estimates(linear_phase)
    expected_logits = torch.from_numpy(inverse_sigmoid_original(linear_phase.numpy()))
    torch.testing.assert_close(loss.estimator.logits.detach(), expected_logits, rtol=RTOL, atol=1e-6)
    assert loss.estimator.logits.abs().max().item() == pytest.approx(math.log((1 - 1e-5) / 1e-5), rel=1e-5)

    logits, targets = spml_batch(3)
    index = torch.randperm(num_examples, generator=gen)[:B]
    x = logits.clone().requires_grad_(True)
    value = loss(x, targets, index=index)
    value.backward()
    ref_x = logits.double().requires_grad_(True)
    ref_est = expected_logits.double().requires_grad_(True)
    ref_value = role_original(ref_x, ref_est[index], targets, k)
    ref_value.backward()
    assert value.item() == pytest.approx(ref_value.item(), rel=RTOL)
    for got, ref in ((x.grad, ref_x.grad), (loss.estimator.logits.grad, ref_est.grad)):
        assert (got.double() - ref).abs().max().item() <= RTOL * ref.abs().max().item()
