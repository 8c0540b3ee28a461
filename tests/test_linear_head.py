"""The linear-head loop (spl_losses.training.linear) against a plain PyTorch training loop."""
import pytest
import torch
from torch import nn

import spl_losses
from spl_losses.training.linear import predict_linear, train_linear_epoch
from spl_losses.training.builders import attach_estimator_optimizer, build_optimizer, param_groups


def _observed(num_examples, num_classes):
    observed = torch.zeros(num_examples, num_classes)
    observed[torch.arange(num_examples), torch.arange(num_examples) % num_classes] = 1
    return observed


def _role(observed, sparse):
    n, c = observed.shape
    return spl_losses.create_loss("role", num_classes=c, num_examples=n, expected_num_pos=1.5,
                                  observed_labels=observed, seed=0, sparse=sparse)


def _optimizers(head, loss, estimator):
    """The recipe's optimizer: head at lr 1e-2, estimator at 10x in Adam, LazyAdam or SparseAdam."""
    groups = param_groups(1e-2, head=list(head.parameters()), loss_state=list(loss.parameters()))
    optimizer = build_optimizer(groups, "adam", estimator=estimator)
    attach_estimator_optimizer(loss, optimizer)  # the estimator catches its rows up through its optimizer
    return [optimizer]


def _reference_epoch(head, loss, optimizers, x, y, order, batch_size):
    """The textbook loop: zero_grad, forward, backward, step, per batch of the order."""
    losses = []
    for idx in torch.split(order, batch_size):
        for opt in optimizers:
            opt.zero_grad()
        value = loss(head(x[idx]), y[idx], index=idx)
        value.backward()
        for opt in optimizers:
            opt.step()
        losses.append(value.item())
    return sum(losses) / len(losses)


def _train(loop, estimator, x, observed, batch_size, epochs=3):
    torch.manual_seed(1)
    head, loss = nn.Linear(x.shape[1], observed.shape[1]), _role(observed, estimator != "adam")
    optimizers = _optimizers(head, loss, estimator)
    orders = [torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(e)) for e in range(epochs)]
    means = [loop(head, loss, optimizers, x, observed, order, batch_size) for order in orders]
    loss.estimator.estimates()  # every row caught up
    return head.weight.detach().clone(), head.bias.detach().clone(), loss.estimator.logits.detach().clone(), means


@pytest.mark.parametrize("estimator", ["adam", "lazy_adam", "sparse_adam"])
def test_role_epochs_match_a_plain_training_loop(estimator):
    torch.manual_seed(0)
    n, d, c, batch_size = 13, 6, 3, 4  # 13 = three full batches and a partial one
    x, observed = torch.randn(n, d), _observed(n, c)
    fast, reference = (_train(loop, estimator, x, observed, batch_size)
                       for loop in (train_linear_epoch, _reference_epoch))
    # the estimator would drift far from the reference if its gradients accumulated across steps
    for got, expected in zip(fast[:3], reference[:3]):
        assert torch.allclose(got, expected, atol=1e-6)
    assert fast[3] == pytest.approx(reference[3], rel=1e-6)
    assert not torch.equal(reference[2], _role(observed, estimator != "adam").estimator.logits)  # it trained


def test_lazy_adam_trains_the_estimator_as_dense_adam_and_sparse_adam_differs():
    torch.manual_seed(0)
    n, d, c, batch_size = 40, 6, 3, 4  # rows skip up to ~20 steps between reads
    x, observed = torch.randn(n, d), _observed(n, c)
    dense, lazy, sparse = (_train(train_linear_epoch, e, x, observed, batch_size, epochs=6)
                           for e in ("adam", "lazy_adam", "sparse_adam"))
    for got, expected in zip(lazy[:3], dense[:3]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert lazy[3] == pytest.approx(dense[3], rel=1e-6)
    assert (sparse[2] - dense[2]).abs().max() > 1e-2  # SparseAdam is another optimizer


def test_loss_input_checks_are_restored_after_the_epoch():
    torch.manual_seed(0)
    x, observed = torch.randn(8, 4), _observed(8, 2)
    head, loss = nn.Linear(4, 2), spl_losses.create_loss("an")
    train_linear_epoch(head, loss, [torch.optim.SGD(head.parameters(), lr=0.1)], x, observed, torch.arange(8), 3)
    assert loss.check_inputs
    with pytest.raises(ValueError, match="same length"):
        train_linear_epoch(head, loss, [], x, observed, torch.arange(7), 3)
    with pytest.raises(ValueError, match="batch_size"):
        train_linear_epoch(head, loss, [], x, observed, torch.arange(8), 0)


def test_predict_linear_gives_head_logits_in_row_order_for_any_chunk_size():
    torch.manual_seed(0)
    head, x = nn.Linear(5, 3), torch.randn(11, 5)
    expected = x @ head.weight.detach().t() + head.bias.detach()
    for chunk_size in (1, 4, 11, 100):
        assert torch.allclose(predict_linear(head, x, chunk_size=chunk_size), expected, atol=1e-6)
    assert predict_linear(head, x[:0]).shape == (0, 3)


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_the_direct_optimizer_step_updates_as_the_optimizers_own_step_bit_for_bit(opt):
    """step_function (accelerate's wrapper, CombinedOptimizer and fused Adam's layers left out) == opt.step()."""
    from accelerate import Accelerator

    from spl_losses.optim.direct_step import step_function

    def build(wrap):
        torch.manual_seed(0)
        head, state = nn.Linear(6, 3), nn.Parameter(torch.randn(5, 3))
        groups = param_groups(1e-2, head=list(head.parameters()), loss_state=[state])
        optimizer = build_optimizer(groups, opt, weight_decay=0.01 if opt == "adamw" else 0.0)
        return head, state, (Accelerator().prepare_optimizer(optimizer) if wrap else optimizer)

    runs = [build(False), build(True)]
    steps = [runs[0][2].step, step_function([runs[1][2]])]
    g = torch.Generator().manual_seed(1)
    for t in range(12):
        x = torch.randn(4, 6, generator=g)
        for (head, state, optimizer), step in zip(runs, steps):
            optimizer.zero_grad(set_to_none=True)
            loss = head(x).square().mean() + (state.sin().sum() if t % 4 != 1 else 0)  # state without a grad
            loss.backward()
            for group in optimizer.param_groups:  # a schedule changes the rates
                group["lr"] = 1e-2 / (1 + t)
            if t == 6:  # a checkpoint loaded: new state tensors
                optimizer.load_state_dict(optimizer.state_dict())
            step()
        for a, b in zip([*runs[0][0].parameters(), runs[0][1]], [*runs[1][0].parameters(), runs[1][1]]):
            assert torch.equal(a, b)
