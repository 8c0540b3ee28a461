"""The networks a run trains: a timm model (optionally BoostLU-wrapped) and the linear-head hand-off."""
import timm
import torch
from torch import nn

__all__ = ["create_model", "timm_model_of", "copy_linear_head"]


def create_model(settings, num_classes: int) -> nn.Module:
    """The run's network: ``timm.create_model`` (a timm name or a published ``hf-hub:``/``local-dir:``
    checkpoint), wrapped in :class:`~spl_losses.models.BoostLU` with ``--boostlu``.

    Args:
        settings: The run's settings (``model``, ``pretrained``, ``model_kwargs``, ``boostlu``, ``boostlu_alpha``).
        num_classes: C.
    """
    kwargs = dict(settings.model_kwargs or {})
    if settings.boostlu:
        from ..models import create_boostlu_model

        return create_boostlu_model(settings.model, alpha=settings.boostlu_alpha, pretrained=settings.pretrained,
                                    num_classes=num_classes, **kwargs)
    return timm.create_model(settings.model, pretrained=settings.pretrained, num_classes=num_classes, **kwargs)


def timm_model_of(model: nn.Module) -> nn.Module:
    """The stock timm model inside a BoostLU wrapper, or the model itself.

    Args:
        model: A timm model or a :class:`~spl_losses.models.BoostLU`.
    """
    from ..models import BoostLU

    return model.model if isinstance(model, BoostLU) else model


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
