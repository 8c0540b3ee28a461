"""An earlier run's model as the teacher (self-training rounds).

The model is an exported timm model or :class:`spl_losses.LinearProbe` (a run directory, its ``model/``
folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``, loaded with ``spl_losses.hub.load_exported_model``) or
any module already in memory. Image models score the image views (the global view and optional grid
crops, as the CLIP teacher); feature models (a LinearProbe, an ``nn.Linear``) score the split's
``features`` column or a given feature tensor. Scores are ``sigmoid(logits)`` (a multi-label model, the
default) or ``softmax(logits / T)`` (a single-label classifier).
"""
from typing import Any, Callable, Dict, Optional, Union

import datasets
import torch
from torch import nn

from .base import Teacher
from .cache import module_fingerprint, tensor_fingerprint
from .views import check_views_options, fuse_views, score_split_views

__all__ = ["ModelTeacher", "ACTIVATIONS", "split_features"]

#: How logits become scores.
ACTIVATIONS = ("sigmoid", "softmax")


def split_features(split: datasets.Dataset, features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (N, D) float32 features of a split: ``features`` when given, else its ``features`` column.

    Args:
        split: The split (rows in ``index`` order).
        features: Optional precomputed (N, D) features (e.g. the recipe's cached backbone features).
    """
    if features is None:
        if "features" not in split.column_names:
            raise ValueError("this teacher needs features: pass features=(N, D) tensor or use a split with a "
                             f"'features' column; got columns {split.column_names}")
        from ..data.columns import feature_tensor  # in bulk from the Arrow table

        features = feature_tensor(split)
    features = torch.as_tensor(features).float()
    if features.dim() != 2 or features.shape[0] != len(split):
        raise ValueError(f"features must have shape ({len(split)}, D), got {tuple(features.shape)}")
    return features


def _is_feature_model(model: nn.Module) -> bool:
    from ..models.linear_probe import LinearProbe

    return isinstance(model, (LinearProbe, nn.Linear))


def _default_transform(model: nn.Module) -> Callable:
    """timm's eval transform for the model's (exported) preprocessing."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model), is_training=False)


class ModelTeacher(Teacher):
    """Scores of a trained multi-label model (an earlier run) on every image view or feature row.

    Args:
        model: An ``nn.Module`` or an exported checkpoint (run directory, model folder, ``local-dir:PATH``,
            ``hf-hub:ORG/NAME``); a BoostLU export is scored with BoostLU's logits.
        transform: PIL-to-tensor preprocessing of image views (default: timm's eval transform for the
            model's recorded preprocessing).
        activation: ``"sigmoid"`` (multi-label model) or ``"softmax"`` (single-label classifier).
        temperature: T of the softmax (with ``activation="softmax"``).
        grid: g, the side of the crop grid for image models (0: whole image only).
        fusion: How crop scores join the global ones (``"weighted"`` or ``"max"``).
        gate: η of the fusion.
        features: Optional (N, D) features for a feature model (default: the split's ``features`` column).
        batch_size: Images (or feature rows / 64) per forward pass.
        device: Where the model runs (default: CUDA when available).
        name: A name for the description (default: the checkpoint or the module's class name).
    """

    kind = "model"

    def __init__(
            self,
            model: Union[nn.Module, str],
            transform: Optional[Callable] = None,
            activation: str = "sigmoid",
            temperature: float = 1.0,
            grid: int = 0,
            fusion: str = "weighted",
            gate: float = 0.0,
            features: Optional[torch.Tensor] = None,
            batch_size: int = 64,
            device: Optional[str] = None,
            name: Optional[str] = None,
    ):
        if isinstance(model, str):
            from ..hub import load_exported_model

            name = name or model
            model = load_exported_model(model, apply_boostlu=True)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or a checkpoint path/id, got {type(model).__name__}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.grid, self.fusion, self.gate = check_views_options(grid, fusion, gate)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.feature_model = _is_feature_model(model)
        if self.feature_model and self.grid:
            raise ValueError("grid crops need an image model; this model takes features")
        self.transform = transform
        self.activation = activation
        self.temperature = float(temperature)
        self.features = features
        self.batch_size = int(batch_size)
        self.name = name or type(model).__name__
        self._weights = module_fingerprint(model)

    def describe(self) -> Dict[str, Any]:
        """Model name, weights fingerprint, its input (features fingerprint or image preprocessing), grid."""
        if self.feature_model:
            source = "column:features" if self.features is None else \
                tensor_fingerprint({"features": torch.as_tensor(self.features)})
            inputs = {"features": source}
        else:
            inputs = {"preprocessing": repr(self.transform or _default_transform(self.model)), "grid": self.grid}
        return {"model": self.name, "weights": self._weights, **inputs}

    @torch.no_grad()
    def compute_raw(self, split: datasets.Dataset) -> torch.Tensor:
        """(N, V, C) logits: V = 1 for a feature model, 1 + g² image views otherwise.

        Args:
            split: The split (``features`` column or ``image`` column).
        """
        if self.feature_model:
            x = split_features(split, self.features)
            out = torch.cat([self.model(chunk.to(self.device)).float().cpu()
                             for chunk in torch.split(x, 64 * self.batch_size)])
            return out.unsqueeze(1)
        transform = self.transform or _default_transform(self.model)
        return score_split_views(split, self.model, transform, self.grid, self.batch_size, self.device)

    def scores_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Per-view ``sigmoid`` or ``softmax(·/T)``, fused over the views.

        Args:
            raw: (N, V, C) logits.
        """
        raw = raw.float()
        probs = torch.sigmoid(raw) if self.activation == "sigmoid" else torch.softmax(raw / self.temperature, dim=-1)
        return fuse_views(probs, self.fusion, self.gate)
