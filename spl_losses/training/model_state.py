"""Saving and restoring tensors of models and losses (best weights, loss state, the phase hand-off)."""
import os
from typing import Dict

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["tensor_state", "save_tensor_state", "load_tensor_state", "copy_linear_head"]


def tensor_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The tensors of ``module.state_dict()`` (extra non-tensor state left out), detached CPU copies.

    Args:
        module: Any module (a loss's state: ROLE estimator logits, LL-Cp / APL matrices).
    """
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()
            if isinstance(v, torch.Tensor)}


def save_tensor_state(module: nn.Module, path: str) -> bool:
    """Save :func:`tensor_state` as safetensors; nothing is written for a module without tensors.

    Args:
        module: The module.
        path: File.

    Returns:
        Whether a file was written.
    """
    state = tensor_state(module)
    if not state:
        return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(state, path)
    return True


def load_tensor_state(module: nn.Module, path_or_state) -> None:
    """Load tensors saved by :func:`save_tensor_state` (or a dict of them) into ``module``.

    Every tensor of the module must be present with the same shape (a loss built for another
    training set or class count is refused); non-tensor extra state keeps its current value.

    Args:
        module: The module.
        path_or_state: File or dict.
    """
    state = load_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else dict(path_or_state)
    own = tensor_state(module)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"state does not match {type(module).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: saved shape {tuple(state[key].shape)} != expected {tuple(value.shape)}")
    module.load_state_dict(state, strict=False)


@torch.no_grad()
def copy_linear_head(head: nn.Linear, model: nn.Module) -> None:
    """Copy a trained linear head into a timm model's classifier (``model.get_classifier()``).

    Args:
        head: The trained ``nn.Linear`` (D -> C).
        model: The timm model (its classifier must be an ``nn.Linear`` of the same shape).
    """
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"the model's classifier is {type(classifier).__name__}, expected nn.Linear")
    if classifier.weight.shape != head.weight.shape:
        raise ValueError(f"head shape {tuple(head.weight.shape)} does not match the classifier's "
                         f"{tuple(classifier.weight.shape)}")
    classifier.weight.copy_(head.weight)
    if classifier.bias is not None and head.bias is not None:
        classifier.bias.copy_(head.bias)
