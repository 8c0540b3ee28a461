"""Training-state round trips and dtype / NaN behaviour of the later SPML losses."""
import io

import pytest
import torch

import spl_losses.losses.entropy  # noqa: F401  (registers the losses)
import spl_losses.losses.gr  # noqa: F401
import spl_losses.losses.label_estimation  # noqa: F401
import spl_losses.losses.large_loss  # noqa: F401
import spl_losses.losses.robust  # noqa: F401
from spl_losses import create_loss

N, C, D, BATCH, EPOCHS = 12, 4, 5, 4, 4


def make_data():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(N, D, generator=gen)
    observed = torch.zeros(N, C)
    observed[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    orders = [torch.randperm(N, generator=gen) for _ in range(EPOCHS)]
    return features, observed, orders


STATEFUL = {
    "ll_cp": dict(num_classes=C, num_examples=N, delta_rel=0.1),
    "ll_r": dict(delta_rel=0.1),
    "em_apl": dict(num_classes=C, num_examples=N, warmup_epochs=1, num_epochs=EPOCHS),
    "gr": dict(num_epochs=EPOCHS),
    "splc": dict(tau=0.5),
    "label_estimation": dict(num_classes=C, num_examples=N, expected_num_pos=1.0, base_loss="em_apl", seed=0,
                             base_kwargs=dict(warmup_epochs=1, num_epochs=EPOCHS)),
}


def build(name):
    torch.manual_seed(1)
    model = torch.nn.Linear(D, C)
    loss_fn = create_loss(name, **STATEFUL[name])
    params = [{"params": model.parameters(), "lr": 0.05}]
    if hasattr(loss_fn, "estimator"):
        params.append({"params": loss_fn.estimator.parameters(), "lr": 0.5})
    return model, loss_fn, torch.optim.Adam(params)


def train(model, loss_fn, optimizer, data, start=(0, 0), stop=None):
    """Run from (epoch, batch) ``start`` to ``stop`` (exclusive) or the end; return the loss values."""
    features, observed, orders = data
    values = []
    for epoch in range(start[0], EPOCHS):
        if (epoch, 0) != start or epoch == 0:
            loss_fn.set_epoch(epoch)  # a resumed run does not call set_epoch again mid-epoch
        for b in range(start[1] if epoch == start[0] else 0, N // BATCH):
            if stop == (epoch, b):
                return values
            index = orders[epoch][b * BATCH:(b + 1) * BATCH]
            loss = loss_fn(model(features[index]), observed[index], index=index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values.append(loss.item())
        if loss_fn.needs_predictions:
            with torch.no_grad():
                loss_fn.update_from_predictions(torch.sigmoid(model(features)))
    return values


def state_is_used(name, loss_fn):
    if name == "ll_cp":
        return bool(loss_fn.corrected.any())
    if name == "em_apl":
        return bool(loss_fn.pseudo_mask.any())
    if name == "label_estimation":
        return bool(loss_fn.base_loss.pseudo_mask.any())
    return loss_fn.epoch == 2


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_save_reload_mid_training_continues_identically(name):
    data = make_data()
    full = train(*build(name), data)

    model, loss_fn, optimizer = build(name)
    first = train(model, loss_fn, optimizer, data, stop=(2, 1))
    assert state_is_used(name, loss_fn)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "loss": loss_fn.state_dict(), "opt": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    model2, loss2, optimizer2 = build(name)
    model2.load_state_dict(saved["model"])
    loss2.load_state_dict(saved["loss"])
    optimizer2.load_state_dict(saved["opt"])
    assert loss2.epoch == 2
    rest = train(model2, loss2, optimizer2, data, start=(2, 1))
    assert first + rest == full
    # and the final state equals the uninterrupted run's
    model3, loss3, optimizer3 = build(name)
    train(model3, loss3, optimizer3, data)
    resumed = loss2.state_dict()
    for key, value in loss3.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed[key]), key
        else:  # extra state (the epoch)
            assert value == resumed[key], key


ALL = {
    "hill": {}, "splc": {}, "asl": {}, "em": {}, "gr": {}, "ll_r": {}, "ll_ct": {},
    "em_apl": dict(num_classes=3, num_examples=4),
    "ll_cp": dict(num_classes=3, num_examples=4),
    "label_estimation": dict(num_classes=3, num_examples=4, expected_num_pos=1.0, seed=0),
}
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
INDEX = torch.tensor([0, 3])


@pytest.mark.parametrize("name", sorted(ALL))
def test_nan_logits_never_give_a_finite_loss(name):
    loss_fn = create_loss(name, **ALL[name])
    loss_fn.set_epoch(5)  # large-loss methods now reject/correct the largest unknown losses
    logits = torch.tensor([[2.0, 0.0, 0.1], [-1.0, 0.3, 1.0]])
    logits[0, 1] = float("nan")  # an unknown entry, the one whose loss LL-R would reject
    assert torch.isnan(loss_fn(logits, TARGETS, index=INDEX))


@pytest.mark.parametrize("name", sorted(ALL))
def test_bf16_logits(name):
    loss_fn = create_loss(name, **ALL[name])
    loss_fn.set_epoch(1)
    logits = torch.tensor([[2.0, -0.5, 0.1], [-1.0, 0.3, 1.0]]).bfloat16().requires_grad_(True)
    value = loss_fn(logits, TARGETS, index=INDEX)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad).all()
    reference = create_loss(name, **ALL[name])
    reference.set_epoch(1)
    assert value.item() == pytest.approx(reference(logits.detach().float(), TARGETS, index=INDEX).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_saturated_logits_give_finite_loss_and_gradient(name):
    loss_fn = create_loss(name, **ALL[name])
    loss_fn.set_epoch(1)
    logits = torch.tensor([[100.0, -100.0, 40.0], [-40.0, 100.0, -100.0]], requires_grad=True)
    value = loss_fn(logits, TARGETS, index=INDEX)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_double_backward_raises_instead_of_returning_zeros():
    loss_fn = create_loss("hill")
    logits = torch.tensor([[1.0, -0.5, 0.2]], requires_grad=True)
    (grad,) = torch.autograd.grad(loss_fn(logits, TARGETS[:1]), logits, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
