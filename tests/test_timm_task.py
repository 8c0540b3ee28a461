"""Stateless losses as the criterion of timm's MultiLabelClassificationTask (one training step)."""
import pytest
import timm
import torch
from timm.task import MultiLabelClassificationTask

import spl_losses

NUM_CLASSES = 5


def tiny_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=NUM_CLASSES, pretrained=False)


@pytest.mark.parametrize("name, targets", [
    ("an", [[1, 0, 0, 0, 0], [0, 0, 1, 0, -1]]),
    ("bce", [[1, 0, 1, 0, 0], [0, 0, 1, 0, 0]]),
])
def test_one_training_step_with_spl_criterion(name, targets):
    model = tiny_model()
    task = MultiLabelClassificationTask(model, criterion=spl_losses.create_loss(name), verbose=False)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(1)
    result = task(torch.randn(2, 3, 32, 32), torch.tensor(targets, dtype=torch.float32))
    assert result["output"].shape == (2, NUM_CLASSES)
    assert result["loss"].dim() == 0 and torch.isfinite(result["loss"])
    result["loss"].backward()
    optimizer.step()

    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())]
    assert any(changed)
    assert not torch.equal(before[-1], list(model.parameters())[-1].detach())  # the head moved


def test_task_rejects_observed_negatives_for_full_label_loss():
    task = MultiLabelClassificationTask(tiny_model(), criterion=spl_losses.create_loss("bce"), verbose=False)
    with pytest.raises(ValueError, match="observed negative"):
        task(torch.randn(2, 3, 32, 32), torch.tensor([[1, 0, 0, 0, -1], [0, 1, 0, 0, 0]], dtype=torch.float32))
