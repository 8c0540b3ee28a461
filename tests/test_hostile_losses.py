"""Hostile inputs: one rule for every registered loss, checked table-driven over ``list_losses()``.

| input | rule | where it bites |
|---|---|---|
| empty batch (B = 0) | exactly 0, zero gradient, connected to the logits (and to the label estimator), ``backward()`` works | every loss |
| ±inf logits, every term with a finite limit | finite loss and gradient, equal to the loss at ±1e6 | reference-form losses (``-log(p + 1e-5)``), ``asl``, ``gr``, ``em``; an infinite loss that ``ll_r`` rejects |
| ±inf logits that make a term unbounded | ValueError naming the loss and the term (with ``check_inputs``) | ``hill``/``splc`` positive at -inf, ``ll_*`` entries not rejected or corrected, ``stable=True`` forms, ``asl`` with ``eps=0`` |
| NaN logits | NaN loss | every loss |
| an index repeated within a batch, same targets | accepted | ``role``, ``label_estimation``, ``em_apl``, ``ll_cp`` |
| an index repeated with conflicting targets | ValueError naming the index (only with ``check_inputs``) | the same |
| NaN or inf numeric constructor argument | ValueError naming the argument | every loss, ``ContrastiveAuxiliary``, ``BoostLU``, ``LabelEstimator.init_from_estimates`` |
"""
import inspect
import math

import pytest
import torch

import spl_losses
from spl_losses import create_loss, list_losses

C, N = 3, 6
INF, NAN = float("inf"), float("nan")

#: Small valid constructor arguments of every registered loss (the others need none).
ARGS = {
    "epr": dict(expected_num_pos=1.0),
    "role": dict(num_classes=C, num_examples=N, expected_num_pos=1.0, seed=0),
    "label_estimation": dict(num_classes=C, num_examples=N, expected_num_pos=1.0, seed=0),
    "em_apl": dict(num_classes=C, num_examples=N),
    "ll_cp": dict(num_classes=C, num_examples=N),
    # pseudo-labels: a positive and a negative one per row
    "vlpl": dict(num_classes=C, num_examples=N, beta_neg=0.5,
                 pseudo_labels=torch.tensor([[0.0, 1.0, -1.0]] * N)),
    "gpr": dict(num_classes=C, num_examples=N, expected_num_pos=1.0,
                pseudo_labels=torch.tensor([[0.0, 1.0, -1.0]] * N)),
}
MULTI_HOT = {"bce", "bce_ls"}
STATEFUL = sorted(name for name in list_losses() if spl_losses.get_loss_class(name).requires_index)

#: Losses whose value stays finite with a positive at -inf and an unknown at +inf (epoch 0).
BOUNDED_WHEN_WRONG = {"an", "an_ls", "asl", "bce", "bce_ls", "em", "em_apl", "epr", "gr", "gpr", "iu",
                      "label_estimation", "role", "vlpl", "wan"}


def build(name, **overrides):
    return create_loss(name, **{**ARGS.get(name, {}), **overrides})


def targets_for(name, batch_size=2):
    rows = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]][:batch_size]
    return torch.tensor(rows)  # single positives; for bce/bce_ls the same rows are full labels


def call(loss, logits, targets, index=None):
    if index is None and loss.requires_index:
        index = torch.arange(logits.shape[0])
    return loss(logits, targets, index=index)


def test_the_table_covers_every_registered_loss():
    assert set(ARGS) | {n for n in list_losses() if n not in ARGS} == set(list_losses())
    assert set(STATEFUL) == {"em_apl", "gpr", "label_estimation", "ll_cp", "role", "vlpl"}


# ------------------------------------------------------------------------------------------- B = 0
@pytest.mark.parametrize("name", list_losses())
def test_empty_batch_is_zero_with_a_connected_zero_gradient(name):
    loss = build(name)
    logits = torch.zeros(0, C, requires_grad=True)
    value = loss(logits, torch.zeros(0, C), index=torch.zeros(0, dtype=torch.long))
    assert value.dtype == torch.float32 and value.dim() == 0 and value.item() == 0.0
    assert value.requires_grad
    value.backward()
    assert logits.grad is not None and logits.grad.shape == (0, C)
    if hasattr(loss, "estimator"):
        assert loss.estimator.logits.grad is not None and not loss.estimator.logits.grad.any()


def test_empty_batch_with_a_sparse_estimator_gives_a_sparse_zero_gradient():
    loss = build("role", sparse=True)
    loss(torch.zeros(0, C, requires_grad=True), torch.zeros(0, C), index=torch.zeros(0, dtype=torch.long)).backward()
    grad = loss.estimator.logits.grad
    assert grad.is_sparse and grad.coalesce().values().abs().sum() == 0


@pytest.mark.parametrize("name", STATEFUL)
def test_empty_batch_still_needs_the_index(name):
    with pytest.raises(ValueError, match="index"):
        build(name)(torch.zeros(0, C), torch.zeros(0, C))


# ------------------------------------------------------------------------------------- ±inf logits
def finite_stand_in(logits, magnitude=1e6):
    return logits.nan_to_num(posinf=magnitude, neginf=-magnitude)


@pytest.mark.parametrize("epoch", [0, 3])
@pytest.mark.parametrize("name", list_losses())
def test_infinite_logits_on_the_right_side_give_the_finite_limit(name, epoch):
    """Positives at +inf and unknowns at -inf: every loss has a finite limit, reached at ±1e6."""
    loss = build(name)
    loss.set_epoch(epoch)
    targets = targets_for(name)
    logits = torch.tensor([[INF, -INF, 0.3], [-INF, 0.5, INF]], requires_grad=True)
    value = call(loss, logits, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    reference = build(name)
    reference.set_epoch(epoch)
    expected = call(reference, finite_stand_in(logits.detach()), targets)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert logits.grad[torch.isinf(logits.detach())].abs().max() == 0  # the limit of every bounded term's slope


@pytest.mark.parametrize("name", list_losses())
def test_infinite_logits_on_the_wrong_side(name):
    """A positive at -inf and an unknown at +inf: finite where the loss is bounded, else a ValueError."""
    loss = build(name)
    targets = targets_for(name)
    logits = torch.tensor([[-INF, 0.2, 0.3], [INF, 0.5, 1.0]], requires_grad=True)
    if name in BOUNDED_WHEN_WRONG:
        value = call(loss, logits, targets)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
        expected = call(build(name), finite_stand_in(logits.detach()), targets)
        assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    else:
        with pytest.raises(ValueError, match=f"loss '{name}' is infinite"):
            call(loss, logits, targets)


@pytest.mark.parametrize("name", [n for n in list_losses() if "stable" in spl_losses.loss_parameters(n)])
def test_infinite_logits_in_the_stable_form(name):
    """With stable=True, -log p = softplus(-x) and -log(1 - p) = softplus(x) are unbounded."""
    targets = targets_for(name)
    with pytest.raises(ValueError, match="stable=True"):  # every one scores an observed positive with -log p
        call(build(name, stable=True), torch.tensor([[-INF, 0.2, 0.3], [0.1, 0.5, 1.0]]), targets)
    right = torch.tensor([[INF, -INF, 0.3], [-INF, 0.5, INF]])
    if name in ("an_ls", "bce_ls", "role", "label_estimation", "vlpl"):  # soft targets weigh both logs
        with pytest.raises(ValueError, match="stable=True"):
            call(build(name, stable=True), right, targets)
    else:
        assert torch.isfinite(call(build(name, stable=True), right, targets))


def test_a_rejected_infinite_loss_is_finite():
    loss = build("ll_r", delta_rel=0.2)  # B·C = 6: from the second epoch ceil(6 * 0.2) = 2 entries are rejected
    logits = torch.tensor([[2.0, INF, -1.0], [0.0, 0.5, 1.0]], requires_grad=True)
    with pytest.raises(ValueError, match="not rejected or corrected"):
        loss(logits, targets_for("ll_r"))  # first epoch: nothing is rejected
    loss.set_epoch(1)
    value = loss(logits, targets_for("ll_r"))
    value.backward()
    bce = lambda x, t: math.log1p(math.exp(-x if t else x))  # noqa: E731
    kept = bce(2.0, 1) + bce(-1.0, 0) + bce(0.0, 0) + bce(1.0, 1)  # (0, 1) and (1, 1) are rejected
    assert value.item() == pytest.approx(kept / 6, rel=1e-6)
    assert logits.grad[0, 1] == 0


def test_label_estimation_names_its_base_losss_unbounded_term():
    loss = build("label_estimation", base_loss="hill")
    with pytest.raises(ValueError, match="loss 'label_estimation' is infinite.*base loss 'hill': the positive term"):
        call(loss, torch.tensor([[-INF, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))


def test_asl_without_eps_has_no_finite_value_at_infinity():
    with pytest.raises(ValueError, match="eps=0"):
        build("asl", eps=0.0)(torch.tensor([[-INF, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))


def test_without_checks_infinite_logits_are_not_examined():
    value = build("hill", check_inputs=False)(torch.tensor([[-INF, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert not torch.isfinite(value)


def test_infinite_logits_leave_the_state_as_one_step_would():
    loss = build("ll_cp", delta_rel=0.2)
    loss.set_epoch(1)
    logits = torch.tensor([[2.0, INF, -1.0], [0.0, 0.5, 1.0]])
    loss(logits, targets_for("ll_cp"), index=torch.tensor([0, 1]))
    # ceil(6 * 0.2) = 2 flips: the +inf unknown (0, 1) and the next largest unknown loss, (1, 1) at 0.5
    assert loss.corrected.nonzero().tolist() == [[0, 1], [1, 1]]


# ---------------------------------------------------------------------------------------- NaN logits
@pytest.mark.parametrize("name", list_losses())
def test_nan_logits_give_nan(name):
    logits = torch.tensor([[NAN, 0.2, 0.3], [INF, 0.5, 1.0]])
    assert torch.isnan(call(build(name), logits, targets_for(name)))


# ------------------------------------------------------------------------------------ repeated index
@pytest.mark.parametrize("name", STATEFUL)
def test_repeated_index_with_agreeing_targets_is_accepted(name):
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    value = build(name)(torch.randn(3, C), targets, index=torch.tensor([4, 1, 4]))
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", STATEFUL)
def test_repeated_index_with_conflicting_targets_is_refused(name):
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="index 4 appears more than once"):
        build(name)(torch.randn(3, C), targets, index=torch.tensor([4, 1, 4]))
    assert torch.isfinite(build(name, check_inputs=False)(torch.randn(3, C), targets, index=torch.tensor([4, 1, 4])))


# ------------------------------------------------------------------------- numeric constructor arguments
def numeric_arguments(name):
    """Constructor arguments of the loss with a numeric default (following **kwargs up the classes)."""
    found = {}
    for klass in spl_losses.get_loss_class(name).__mro__:
        if "__init__" not in vars(klass) or klass in (torch.nn.Module, object):
            continue
        for arg, parameter in inspect.signature(klass.__init__).parameters.items():
            default = parameter.default
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                found.setdefault(arg, default)
    if "expected_num_pos" in spl_losses.loss_parameters(name):
        found["expected_num_pos"] = 1.0
    return sorted(set(found) & spl_losses.loss_parameters(name))


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("name,argument", [(n, a) for n in list_losses() for a in numeric_arguments(n)])
def test_non_finite_numeric_arguments_are_refused(name, argument, bad):
    with pytest.raises(ValueError, match=argument):
        build(name, **{argument: bad})


def test_the_epr_example_of_the_issue():
    with pytest.raises(ValueError, match="expected_num_pos must be a finite"):
        create_loss("epr", expected_num_pos=float("nan"))


@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_arguments_outside_the_registry(bad):
    from spl_losses.losses import ContrastiveAuxiliary, LabelEstimator

    for kwargs, argument in ((dict(temperature=bad), "temperature"), (dict(cl_coef=bad), "cl_coef")):
        with pytest.raises(ValueError, match=argument):
            ContrastiveAuxiliary(8, **kwargs)
    with pytest.raises(ValueError, match="clamp"):
        LabelEstimator(2, 2).init_from_estimates(torch.full((2, 2), 0.5), clamp=bad)
    class TimmLike(torch.nn.Linear):  # the methods BoostLU asks of a timm model
        forward_features = forward_head = get_classifier = torch.nn.Linear.forward

    with pytest.raises(ValueError, match="alpha"):
        spl_losses.BoostLU(TimmLike(2, 2), alpha=bad, check_head=False)
