"""A linear classifier on fixed (pre-extracted) features that saves to and loads from the Hugging Face Hub.

``LinearProbe`` is the model of the ``linear_fixed_features`` train mode when the dataset holds features
instead of images (no timm backbone to attach the head to). It uses huggingface_hub's
``PyTorchModelHubMixin``: ``save_pretrained`` / ``push_to_hub`` write ``config.json`` (the constructor
arguments: in_features, num_classes, label_names, backbone, preprocessing) and ``model.safetensors``;
``LinearProbe.from_pretrained("ORG/NAME")`` (or a local folder) loads both back in one call::

    probe = LinearProbe(2048, 20, label_names=names, backbone="resnet50.a1_in1k",
                        preprocessing=preprocessing_from_timm(backbone_model))
    probe.save_pretrained("out/model")
    probe = LinearProbe.from_pretrained("out/model")
    probe.backbone, probe.preprocessing   # which features it expects
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..losses._checks import check_positive_int

__all__ = ["LinearProbe", "preprocessing_from_timm", "PREPROCESSING_KEYS"]

#: The timm data-config fields that describe the preprocessing a backbone expects.
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def preprocessing_from_timm(model: nn.Module) -> Dict[str, Any]:
    """The preprocessing a timm model expects, as a JSON-able dict (timm's resolved data config).

    Args:
        model: A timm model (its ``pretrained_cfg`` is read by ``timm.data.resolve_data_config``).

    Returns:
        ``{"input_size": [3, H, W], "interpolation": ..., "mean": [...], "std": [...], "crop_pct": ...,
        "crop_mode": ...}`` (keys timm does not report are left out).
    """
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    out = {}
    for key in PREPROCESSING_KEYS:
        if key in config:
            value = config[key]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


class LinearProbe(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="spl_losses",
    tags=["multi-label-classification", "single-positive-multi-label", "spl_losses", "linear-probe"],
):
    """One linear layer from fixed features to C logits, with the metadata needed to use it.

    Args:
        in_features: D, the feature dimension.
        num_classes: C.
        label_names: Optional C class names, kept in ``config.json``.
        backbone: Optional name of the model the features come from (e.g. a timm model name), so a user
            knows how to produce features for new images.
        preprocessing: Optional preprocessing of the backbone's input (see :func:`preprocessing_from_timm`).
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            label_names: Optional[List[str]] = None,
            backbone: Optional[str] = None,
            preprocessing: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.num_classes = check_positive_int("num_classes", num_classes)
        if label_names is not None:
            if isinstance(label_names, str) or not isinstance(label_names, Sequence):
                raise TypeError(f"label_names must be a list of str, got {type(label_names).__name__}")
            label_names = [str(name) for name in label_names]
            if len(label_names) != num_classes:
                raise ValueError(f"label_names has {len(label_names)} names, expected num_classes={num_classes}")
        if backbone is not None and not isinstance(backbone, str):
            raise TypeError(f"backbone must be a model name (str) or None, got {type(backbone).__name__}")
        if preprocessing is not None and not isinstance(preprocessing, dict):
            raise TypeError(f"preprocessing must be a dict or None, got {type(preprocessing).__name__}")
        self.label_names = label_names
        self.backbone = backbone
        self.preprocessing = dict(preprocessing) if preprocessing is not None else None
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return (B, C) logits.

        Args:
            features: (B, D) features.
        """
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"features must have shape (batch, {self.in_features}), got {tuple(features.shape)}")
        return self.fc(features.to(self.fc.weight.dtype))

    def extra_repr(self) -> str:
        return f"backbone={self.backbone!r}"
