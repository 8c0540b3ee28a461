"""The linear-head loop (spl_losses.training.linear_head) against a plain PyTorch training loop."""
import pytest
import torch
from torch import nn

import spl_losses
from spl_losses.training.linear_head import predict_linear, train_linear_epoch


def _observed(num_examples, num_classes):
    observed = torch.zeros(num_examples, num_classes)
    observed[torch.arange(num_examples), torch.arange(num_examples) % num_classes] = 1
    return observed


def _role(observed, sparse):
    n, c = observed.shape
    return spl_losses.create_loss("role", num_classes=c, num_examples=n, expected_num_pos=1.5,
                                  observed_labels=observed, seed=0, sparse=sparse)


def _optimizers(head, loss, sparse):
    if sparse:  # head in Adam, estimator in its own SparseAdam (the recipe's --sparse-estimator)
        return [torch.optim.Adam(head.parameters(), lr=1e-2),
                torch.optim.SparseAdam(list(loss.parameters()), lr=1e-1)]
    return [torch.optim.Adam([{"params": head.parameters()}, {"params": loss.parameters(), "lr": 1e-1}], lr=1e-2)]


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


@pytest.mark.parametrize("sparse", [False, True])
def test_role_epochs_match_a_plain_training_loop(sparse):
    torch.manual_seed(0)
    n, d, c, batch_size = 13, 6, 3, 4  # 13 = three full batches and a partial one
    x, observed = torch.randn(n, d), _observed(n, c)
    runs = []
    for loop in (train_linear_epoch, _reference_epoch):
        torch.manual_seed(1)
        head, loss = nn.Linear(d, c), _role(observed, sparse)
        optimizers = _optimizers(head, loss, sparse)
        means = [loop(head, loss, optimizers, x, observed, torch.randperm(n, generator=torch.Generator().manual_seed(e)),
                      batch_size) for e in range(3)]
        runs.append((head.weight.detach().clone(), head.bias.detach().clone(),
                     loss.estimator.logits.detach().clone(), means))
    fast, reference = runs
    # the estimator would drift far from the reference if its gradients accumulated across steps
    for got, expected in zip(fast[:3], reference[:3]):
        assert torch.allclose(got, expected, atol=1e-6)
    assert fast[3] == pytest.approx(reference[3], rel=1e-6)
    assert not torch.equal(reference[2], _role(observed, sparse).estimator.logits)  # the estimator did train


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
