"""Large-loss rejection / correction (LL-R, LL-Ct, LL-Cp) against hand computations."""
import math

import pytest
import torch

import spl_losses.losses.large_loss  # noqa: F401  (registers the losses)
from spl_losses import create_loss
from spl_losses.losses.large_loss import clean_rate, num_large_losses


def sp(x):
    """softplus: BCE-with-logits for target 0 is sp(x), for target 1 sp(-x)."""
    return math.log1p(math.exp(x))


LOGITS = torch.tensor([[5.0, 3.0, 4.0], [0.5, -1.0, 2.0]])
TARGETS = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
# entry losses: sp(-5) positive, sp(3) unknown, sp(4) observed negative (largest, never a candidate),
# sp(0.5), sp(-1), sp(2) unknown


def test_num_large_losses_follows_the_originals_float_arithmetic():
    # the original's rate is 1 - clean_rate, clean_rate losing delta_rel once per epoch in float
    assert clean_rate(0, 0.005) == 1.0
    assert 1 - clean_rate(1, 0.005) == 1 - (1 - 0.005)  # 0.0050000000000000044, not 0.005
    assert num_large_losses(256 * 1000, 1 - clean_rate(1, 0.005)) == 1281
    assert num_large_losses(320, 1 - clean_rate(5, 0.005)) == 9  # ceil(8.000000000000007)
    assert num_large_losses(6, 0.1) == 1
    assert num_large_losses(6, 0.2) == 2
    assert num_large_losses(40, 0.001) == 1
    assert num_large_losses(10, 0.0) == 0
    assert num_large_losses(10, 1.0) == 10


def test_ll_r_schedule():
    loss = create_loss("ll_r", delta_rel=0.1)
    base = [sp(-5), sp(3), sp(4), sp(0.5), sp(-1), sp(2)]
    assert loss(LOGITS, TARGETS).item() == pytest.approx(sum(base) / 6, rel=1e-6)  # epoch 1: rate 0
    loss.set_epoch(1)  # rate 0.1: k = ceil(0.6) = 1, the unknown sp(3) is rejected
    assert loss(LOGITS, TARGETS).item() == pytest.approx((sum(base) - sp(3)) / 6, rel=1e-6)
    loss.set_epoch(2)  # rate 0.2: k = ceil(1.2) = 2, sp(3) and sp(2)
    assert loss(LOGITS, TARGETS).item() == pytest.approx((sum(base) - sp(3) - sp(2)) / 6, rel=1e-6)
    loss.set_epoch(10)  # rate 1: k = 6 but only the 4 unknown entries can go
    assert loss(LOGITS, TARGETS).item() == pytest.approx((sp(-5) + sp(4)) / 6, rel=1e-6)


def test_ll_r_rejected_entries_get_no_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    loss = create_loss("ll_r", delta_rel=0.1)
    loss.set_epoch(1)
    loss(logits, TARGETS).backward()
    assert logits.grad[0, 1] == 0
    assert (logits.grad.flatten()[[0, 2, 3, 4, 5]] != 0).all()


def test_ll_ct_schedule():
    loss = create_loss("ll_ct", delta_rel=0.1)
    base = [sp(-5), sp(3), sp(4), sp(0.5), sp(-1), sp(2)]
    assert loss(LOGITS, TARGETS).item() == pytest.approx(sum(base) / 6, rel=1e-6)
    loss.set_epoch(2)  # k = 2: sp(3) -> sp(-3), sp(2) -> sp(-2)
    expected = sum(base) - sp(3) - sp(2) + sp(-3) + sp(-2)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected / 6, rel=1e-6)


def test_defaults_from_spec():
    assert create_loss("ll_r").delta_rel == 0.005
    assert create_loss("ll_ct").delta_rel == 0.002
    assert create_loss("ll_cp", num_classes=3, num_examples=4).delta_rel == 0.001


OBSERVED = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
ROW_LOGITS = torch.tensor([[2.0, 1.5, -1.0], [0.5, 2.0, 3.0], [1.0, 0.2, 1.0], [3.0, -2.0, 0.0]])


def step(loss, rows):
    index = torch.tensor(rows)
    return loss(ROW_LOGITS[index], OBSERVED[index], index=index).item()


def test_ll_cp_scripted_flips():
    loss = create_loss("ll_cp", num_classes=3, num_examples=4, delta_rel=0.1)  # B = 2: k = ceil(0.6) = 1
    loss.set_epoch(0)  # first epoch: nothing flips, plain assume-negative BCE
    value = step(loss, [0, 2])
    assert value == pytest.approx((sp(-2) + sp(1.5) + sp(-1) + sp(1) + sp(0.2) + sp(-1)) / 6, rel=1e-6)
    step(loss, [1, 3])
    assert not loss.corrected.any()

    loss.set_epoch(1)
    value = step(loss, [0, 2])  # largest unknown loss of rows 0, 2: (0, 1) with logit 1.5
    assert value == pytest.approx((sp(-2) + sp(-1.5) + sp(-1) + sp(1) + sp(0.2) + sp(-1)) / 6, rel=1e-6)
    assert loss.corrected.nonzero().tolist() == [[0, 1]]
    step(loss, [1, 3])  # rows 1, 3: (1, 2) with logit 3
    assert loss.corrected.nonzero().tolist() == [[0, 1], [1, 2]]

    loss.set_epoch(2)
    value = step(loss, [0, 2])  # (0, 1) is a positive now; the next largest unknown is (2, 0), logit 1
    assert value == pytest.approx((sp(-2) + sp(-1.5) + sp(-1) + sp(-1) + sp(0.2) + sp(-1)) / 6, rel=1e-6)
    assert loss.corrected.nonzero().tolist() == [[0, 1], [1, 2], [2, 0]]

    loss.eval()  # a validation pass changes nothing
    step(loss, [1, 3])
    assert loss.corrected.sum().item() == 3
    expected = OBSERVED.clone()
    expected[0, 1] = expected[1, 2] = expected[2, 0] = 1
    assert torch.equal(loss.corrected_labels(OBSERVED), expected)


def test_ll_cp_duplicate_indices_keep_every_flip():
    loss = create_loss("ll_cp", num_classes=2, num_examples=3, delta_rel=0.5)  # B·C = 4: k = 2
    loss.set_epoch(1)
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    loss(logits, torch.zeros(2, 2), index=torch.tensor([1, 1]))
    assert loss.corrected.nonzero().tolist() == [[1, 0], [1, 1]]


def test_ll_cp_checks():
    loss = create_loss("ll_cp", num_classes=3, num_examples=4)
    with pytest.raises(ValueError, match="index"):
        loss(ROW_LOGITS[:2], OBSERVED[:2])
    with pytest.raises(ValueError, match="out of range"):
        loss(ROW_LOGITS[:2], OBSERVED[:2], index=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="num_classes"):
        loss(torch.zeros(2, 5), torch.zeros(2, 5), index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="delta_rel"):
        create_loss("ll_r", delta_rel=1.5)


@pytest.mark.parametrize("name", ["ll_r", "ll_ct"])
def test_closed_form_gradient_matches_autograd(name):
    loss = create_loss(name, delta_rel=0.1)
    loss.set_epoch(2)  # k = 2: the unknown entries with logits 3 and 2
    x = LOGITS.clone().requires_grad_(True)
    loss(x, TARGETS).backward()
    ref = LOGITS.clone().requires_grad_(True)
    y = (TARGETS == 1).float()
    selected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    if name == "ll_r":
        entries = torch.nn.functional.binary_cross_entropy_with_logits(ref, y, reduction="none") * (1 - selected)
    else:
        entries = torch.nn.functional.binary_cross_entropy_with_logits(ref, torch.maximum(y, selected),
                                                                       reduction="none")
    entries.mean().backward()
    assert torch.allclose(x.grad, ref.grad, atol=1e-7)


@pytest.mark.parametrize("k", [1, 37, 300, 5000])
def test_select_large_losses_is_exact(k):
    # 1, 37 and 300 take the sampled-threshold path on CPU, 5000 the plain top-k; both must be exact
    gen = torch.Generator().manual_seed(k)
    losses = torch.rand(64, 200, generator=gen)
    candidates = torch.rand(64, 200, generator=gen) > 0.2
    from spl_losses.losses.large_loss import select_large_losses
    chosen = set(select_large_losses(losses, candidates, k).tolist())
    flat = [(v, i) for i, (v, c) in enumerate(zip(losses.flatten().tolist(), candidates.flatten().tolist())) if c]
    expected = {i for _, i in sorted(flat, reverse=True)[:k]}
    assert chosen == expected


def test_ties_at_the_kth_value_go_to_the_earliest_positions_and_nan_is_never_selected():
    # 3 candidates at 2.0, then 5 tied at 1.0: k = 5 takes the 3, then the first two 1.0s in row-major order
    from spl_losses.losses.large_loss import select_large_losses
    losses = torch.tensor([[1.0, 2.0, 1.0, 0.5], [1.0, 2.0, float("nan"), 1.0], [2.0, 1.0, 0.0, 0.0]])
    candidates = torch.ones(3, 4, dtype=torch.bool)
    candidates[0, 3] = False
    assert select_large_losses(losses, candidates, 5).tolist() == [0, 1, 2, 5, 8]
    assert select_large_losses(losses, candidates, 7).tolist() == [0, 1, 2, 4, 5, 7, 8]
    # more than the candidates: all of them but the NaN
    assert select_large_losses(losses, candidates, 12).tolist() == [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
