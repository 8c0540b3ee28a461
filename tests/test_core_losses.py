"""The Cole et al. losses against values worked out by hand from the paper's formulas, and their input checks.

Expected values are computed here entry by entry with ``math`` from the formulas of Cole et al. (2021)
(``nlog(v) = -log(v + 1e-5)``, reduction ``sum / (B·C)`` plus the unscaled regularizer), never with
the package's own helpers.
"""
import math

import pytest
import torch

import spl_losses
from spl_losses import create_loss

EPS = 1e-5
LOGITS = [[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]]
# observed encoding: an observed positive per row, one observed negative, the rest unobserved
OBSERVED = [[1, 0, -1], [0, 1, 0]]
# full labels for bce / bce_ls
MULTI_HOT = [[1, 0, 0], [0, 1, 1]]
B, C = 2, 3

CORE_LOSSES = ["bce", "bce_ls", "an", "an_ls", "wan", "iu", "epr", "role"]
MULTI_HOT_LOSSES = {"bce", "bce_ls"}


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def nlog(v, eps=EPS):
    return -math.log(v + eps)


def entries(targets):
    for b in range(B):
        for c in range(C):
            yield sig(LOGITS[b][c]), targets[b][c]


def make_loss(name, num_classes=C, num_examples=4, **kwargs):
    """Build a core loss with the constructor arguments its formula needs."""
    if name == "epr":
        kwargs.setdefault("expected_num_pos", 1.5)
    if name in ("wan", "epr"):
        kwargs.setdefault("num_classes", num_classes)
    if name == "role":
        kwargs.setdefault("expected_num_pos", 1.5)
        kwargs.setdefault("seed", 0)
        return create_loss(name, num_classes=num_classes, num_examples=num_examples, **kwargs)
    return create_loss(name, **kwargs)


def call(loss, logits, targets):
    index = torch.arange(logits.shape[0]) if loss.requires_index else None
    return loss(logits, targets, index=index)


def valid_targets(name, b=B, c=C):
    torch.manual_seed(0)
    if name in MULTI_HOT_LOSSES:
        return (torch.rand(b, c) < 0.4).float()
    return torch.randint(-1, 2, (b, c)).float()


def test_core_losses_are_registered():
    assert set(CORE_LOSSES) <= set(spl_losses.list_losses())


# ------------------------------------------------------------------ hand-computed values
def test_bce_hand_value():
    expected = sum(t * nlog(p) + (1 - t) * nlog(1 - p) for p, t in entries(MULTI_HOT)) / (B * C)
    got = create_loss("bce")(torch.tensor(LOGITS), torch.tensor(MULTI_HOT, dtype=torch.float32))
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bce_accepts_soft_targets():
    soft = [[0.7, 0.0, 0.2], [0.0, 1.0, 0.5]]
    expected = sum(t * nlog(p) + (1 - t) * nlog(1 - p) for p, t in entries(soft)) / (B * C)
    got = create_loss("bce")(torch.tensor(LOGITS), torch.tensor(soft))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("ls", [0.1, 0.3])
def test_bce_ls_hand_value(ls):
    def term(p, t):
        if t == 1:
            return (1 - ls) * nlog(p) + ls * nlog(1 - p)
        return (1 - ls) * nlog(1 - p) + ls * nlog(p)

    expected = sum(term(p, t) for p, t in entries(MULTI_HOT)) / (B * C)
    got = create_loss("bce_ls", ls_coef=ls)(torch.tensor(LOGITS), torch.tensor(MULTI_HOT, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_an_hand_value():
    # observed positive: nlog(p); unobserved and observed negative: nlog(1 - p)
    expected = (nlog(sig(0.5)) + nlog(1 - sig(-1.0)) + nlog(1 - sig(2.0))
                + nlog(1 - sig(0.0)) + nlog(sig(1.5)) + nlog(1 - sig(-0.5))) / 6
    got = create_loss("an")(torch.tensor(LOGITS), torch.tensor(OBSERVED, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("ls", [0.1, 0.25])
def test_an_ls_hand_value(ls):
    def term(p, t):
        if t == 1:
            return (1 - ls) * nlog(p) + ls * nlog(1 - p)
        if t == 0:
            return (1 - ls) * nlog(1 - p) + ls * nlog(p)
        return nlog(1 - p)  # observed negative: not smoothed

    expected = sum(term(p, t) for p, t in entries(OBSERVED)) / (B * C)
    got = create_loss("an_ls", ls_coef=ls)(torch.tensor(LOGITS), torch.tensor(OBSERVED, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_an_ls_default_coefficient_is_0_1():
    assert create_loss("an_ls").ls_coef == 0.1
    assert create_loss("bce_ls").ls_coef == 0.1


def test_wan_hand_value_weights_unobserved_by_one_over_c_minus_one():
    # C = 3: unobserved entries weighted 1/2; the observed negative keeps weight 1
    expected = (nlog(sig(0.5)) + nlog(1 - sig(-1.0)) / 2 + nlog(1 - sig(2.0))
                + nlog(1 - sig(0.0)) / 2 + nlog(sig(1.5)) + nlog(1 - sig(-0.5)) / 2) / 6
    got = create_loss("wan")(torch.tensor(LOGITS), torch.tensor(OBSERVED, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the same with num_classes given
    got = create_loss("wan", num_classes=3)(torch.tensor(LOGITS), torch.tensor(OBSERVED, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_iu_hand_value_ignores_unobserved_but_divides_by_all_entries():
    expected = (nlog(sig(0.5)) + nlog(1 - sig(2.0)) + nlog(sig(1.5))) / 6
    got = create_loss("iu")(torch.tensor(LOGITS), torch.tensor(OBSERVED, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k", [1.5, 2.9])
def test_epr_hand_value_with_regularizer(k):
    observed = (nlog(sig(0.5)) + nlog(1 - sig(2.0)) + nlog(sig(1.5))) / 6
    row_sums = [sum(sig(z) for z in row) for row in LOGITS]
    reg = ((row_sums[0] + row_sums[1]) / 2 - k) ** 2 / C ** 2
    got = create_loss("epr", expected_num_pos=k)(torch.tensor(LOGITS), torch.tensor(OBSERVED, dtype=torch.float32))
    assert reg > 1e-3  # the regularizer matters in this case
    assert got.item() == pytest.approx(observed + reg, rel=1e-6)


def test_epr_requires_expected_num_pos():
    with pytest.raises(TypeError):
        create_loss("epr")
    with pytest.raises(ValueError, match="expected_num_pos"):
        create_loss("epr", expected_num_pos=-1.0)


def test_integer_targets_equal_float_targets():
    logits = torch.tensor(LOGITS)
    for name in ["an", "an_ls", "wan", "iu", "epr"]:
        loss = make_loss(name)
        a = loss(logits, torch.tensor(OBSERVED, dtype=torch.float32))
        b = loss(logits, torch.tensor(OBSERVED, dtype=torch.int64))
        assert a.item() == pytest.approx(b.item(), rel=1e-7), name


# ------------------------------------------------------------------ gradients
def test_an_gradient_matches_hand_derivation_reference_form():
    # d/dx nlog(p) = -p(1-p)/(p+eps); d/dx nlog(1-p) = p(1-p)/(1-p+eps); mean over 6 entries
    logits = torch.tensor(LOGITS, requires_grad=True)
    create_loss("an")(logits, torch.tensor(OBSERVED, dtype=torch.float32)).backward()
    for b in range(B):
        for c in range(C):
            p = sig(LOGITS[b][c])
            if OBSERVED[b][c] == 1:
                expected = -p * (1 - p) / (p + EPS) / 6
            else:
                expected = p * (1 - p) / (1 - p + EPS) / 6
            assert logits.grad[b, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_wan_gradient_stable_form_is_weighted_p_minus_target():
    # stable form: d/dx softplus(-x) = p - 1, d/dx softplus(x) = p
    logits = torch.tensor(LOGITS, requires_grad=True)
    create_loss("wan", stable=True)(logits, torch.tensor(OBSERVED, dtype=torch.float32)).backward()
    for b in range(B):
        for c in range(C):
            p, t = sig(LOGITS[b][c]), OBSERVED[b][c]
            expected = {1: p - 1, -1: p, 0: p / 2}[t] / 6
            assert logits.grad[b, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-8)


# ------------------------------------------------------------------ stable vs reference form
def test_stable_form_is_exact_log_sigmoid_without_eps():
    expected = sum(t * -math.log(p) + (1 - t) * -math.log(1 - p) for p, t in entries(MULTI_HOT)) / (B * C)
    got = create_loss("bce", stable=True)(torch.tensor(LOGITS), torch.tensor(MULTI_HOT, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "bce_ls", "an", "an_ls", "wan", "iu", "epr", "role"])
def test_stable_form_close_to_but_not_equal_reference(name):
    logits = torch.tensor(LOGITS)
    targets = torch.tensor(MULTI_HOT if name in MULTI_HOT_LOSSES else OBSERVED, dtype=torch.float32)
    ref = call(make_loss(name), logits, targets).item()
    stable = call(make_loss(name, stable=True), logits, targets).item()
    assert stable == pytest.approx(ref, rel=1e-3)
    assert abs(stable - ref) > 1e-7


def test_stable_form_handles_extreme_logits():
    logits = torch.tensor([[-100.0, 100.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # -log sigmoid(-100) = 100 exactly enough; the reference form saturates at -log(1e-5)
    assert create_loss("an", stable=True)(logits, targets).item() == pytest.approx(100.0, rel=1e-6)
    assert create_loss("an")(logits, targets).item() == pytest.approx(-math.log(EPS), rel=1e-4)


# ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CORE_LOSSES)
def test_half_precision_logits_compute_in_float32(name, dtype):
    torch.manual_seed(1)
    logits = (torch.randn(4, 5) * 2).to(dtype)
    targets = valid_targets(name, 4, 5)
    loss = make_loss(name, num_classes=5)
    low = call(loss, logits.requires_grad_(), targets)
    full = call(loss, logits.detach().float(), targets)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(full.item(), rel=1e-6)
    low.backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("name", CORE_LOSSES)
def test_cpu_autocast_keeps_float32(name):
    torch.manual_seed(2)
    logits = torch.randn(4, 5)
    targets = valid_targets(name, 4, 5)
    loss = make_loss(name, num_classes=5)
    expected = call(loss, logits, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call(loss, logits, targets)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", CORE_LOSSES)
def test_shape_mismatch_raises(name):
    loss = make_loss(name)
    with pytest.raises(ValueError, match="shape"):
        call(loss, torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        call(loss, torch.zeros(6), torch.zeros(6))


@pytest.mark.parametrize("name", sorted(set(CORE_LOSSES) - MULTI_HOT_LOSSES))
@pytest.mark.parametrize("bad", [0.5, 2.0, -2.0, 0.9999999, -0.5])
def test_targets_outside_observed_encoding_raise(name, bad):
    targets = valid_targets(name)
    targets[1, 2] = bad
    with pytest.raises(ValueError, match="observed encoding"):
        call(make_loss(name), torch.zeros(B, C), targets)


@pytest.mark.parametrize("name", sorted(MULTI_HOT_LOSSES))
@pytest.mark.parametrize("bad", [2.0, -0.5, 1.0000001])
def test_targets_outside_multi_hot_range_raise(name, bad):
    targets = valid_targets(name)
    targets[1, 2] = bad
    with pytest.raises(ValueError, match="targets"):
        call(make_loss(name), torch.zeros(B, C), targets)


@pytest.mark.parametrize("name", CORE_LOSSES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_targets_raise(name, bad):
    targets = valid_targets(name)
    targets[0, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        call(make_loss(name), torch.zeros(B, C), targets)


@pytest.mark.parametrize("name", sorted(MULTI_HOT_LOSSES))
def test_minus_one_given_to_full_label_loss_raises(name):
    with pytest.raises(ValueError, match="observed negative"):
        make_loss(name)(torch.zeros(B, C), torch.tensor(OBSERVED, dtype=torch.float32))


@pytest.mark.parametrize("name", ["wan", "epr", "role"])
def test_num_classes_mismatch_raises(name):
    loss = make_loss(name, num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        call(loss, torch.zeros(B, C), valid_targets(name))


def test_non_tensor_inputs_raise_type_error():
    with pytest.raises(TypeError, match="logits"):
        create_loss("an")([[0.0]], torch.zeros(1, 1))
    with pytest.raises(TypeError, match="targets"):
        create_loss("an")(torch.zeros(1, 1), [[0.0]])


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("name", CORE_LOSSES)
def test_nan_logits_never_give_a_finite_loss(name, stable):
    loss = make_loss(name, stable=stable)
    targets = valid_targets(name)
    for b, c in [(0, 0), (1, 2)]:  # whatever the entry's target, including ignored entries
        logits = torch.zeros(B, C)
        logits[b, c] = float("nan")
        assert torch.isnan(call(loss, logits, targets)), (name, b, c)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="ls_coef"):
        create_loss("an_ls", ls_coef=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        create_loss("wan", num_classes=1)
    with pytest.raises(ValueError, match="eps"):
        create_loss("an", eps=-1.0)


def test_check_inputs_off_skips_encoding_check_but_keeps_shape_check():
    loss = create_loss("an", check_inputs=False)
    expected = create_loss("an")(torch.zeros(B, C), torch.tensor(OBSERVED, dtype=torch.float32))
    assert loss(torch.zeros(B, C), torch.tensor(OBSERVED, dtype=torch.float32)).item() == expected.item()
    loss(torch.zeros(B, C), torch.full((B, C), 0.5))  # not validated: no error
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(B, C), torch.zeros(B, C + 1))


def test_set_epoch_is_saved_in_state_dict():
    loss = create_loss("an")
    loss.set_epoch(3)
    restored = create_loss("an")
    restored.load_state_dict(loss.state_dict())
    assert restored.epoch == 3
    with pytest.raises(ValueError, match="epoch"):
        loss.set_epoch(-1)


@pytest.mark.parametrize("exclusive", [False, True])
def test_weighted_bce_mean_backward_passes_gradcheck(exclusive):
    torch.manual_seed(3)
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    if exclusive:
        pos = (torch.rand(3, 4) < 0.5).double()
        a, b = pos * 2.0, (1 - pos) * 0.5  # never both > 0
    else:
        a, b = torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64)
    loss = create_loss("an")
    assert torch.autograd.gradcheck(lambda x: loss.weighted_bce_mean(x, a, b, exclusive=exclusive)[0], (logits,))
    # with the EPR regularizer folded in
    assert torch.autograd.gradcheck(
        lambda x: loss.weighted_bce_mean(x, a, b, exclusive=exclusive, expected_num_pos=1.5)[0], (logits,))


def test_nan_logit_at_an_ignored_entry_still_gives_nan():
    # iu gives unobserved entries weight 0; 0 * NaN must stay NaN
    logits = torch.zeros(B, C)
    logits[0, 1] = float("nan")  # OBSERVED[0][1] is unobserved
    for name in ["iu", "epr"]:
        assert torch.isnan(make_loss(name)(logits, torch.tensor(OBSERVED, dtype=torch.float32))), name


# ------------------------------------------------------------------ every registered loss
def build_any_loss(name, num_classes=C, num_examples=8):
    """Build any registered loss from the constructor arguments its signature names."""
    import inspect

    cls = spl_losses.get_loss_class(name)
    known = {"num_classes": num_classes, "num_examples": num_examples, "expected_num_pos": 1.5}
    params = inspect.signature(cls).parameters
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty
               and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD) and p not in known]
    if missing:
        pytest.skip(f"{name} needs {missing}")
    return cls(**{k: v for k, v in known.items() if k in params})


@pytest.mark.parametrize("name", spl_losses.list_losses())
def test_every_registered_loss_keeps_the_call_contract(name):
    loss = build_any_loss(name)
    multi_hot = getattr(loss, "target_encoding", "observed") == "multi_hot"
    targets = torch.tensor(MULTI_HOT if multi_hot else OBSERVED, dtype=torch.float32)
    index = torch.arange(B) if getattr(loss, "requires_index", False) else None

    def run(logits, targets):
        return loss(logits, targets) if index is None else loss(logits, targets, index=index)

    # bf16 logits: a float32 scalar with a finite gradient
    logits = torch.tensor(LOGITS).bfloat16().requires_grad_()
    value = run(logits, targets)
    assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad.float()).all()
    # NaN logits never give a finite loss, whichever entry holds the NaN
    for b, c in [(0, 0), (0, 1), (1, 2)]:
        nan_logits = torch.zeros(B, C)
        nan_logits[b, c] = float("nan")
        assert torch.isnan(run(nan_logits, targets)), (b, c)
    # bad targets and shapes are ValueErrors
    for bad in [float("nan"), float("inf"), 2.0, -0.5]:
        bad_targets = targets.clone()
        bad_targets[1, 1] = bad
        with pytest.raises(ValueError):
            run(torch.zeros(B, C), bad_targets)
    with pytest.raises(ValueError):
        run(torch.zeros(B, C), torch.zeros(B, C + 1))


def test_reference_form_is_first_order_only():
    # the closed-form backward is once differentiable: a double backward raises, never returns zeros
    logits = torch.tensor(LOGITS, requires_grad=True)
    (grad,) = torch.autograd.grad(create_loss("an")(logits, torch.tensor(OBSERVED, dtype=torch.float32)),
                                  logits, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
