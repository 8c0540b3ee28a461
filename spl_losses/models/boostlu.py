"""BoostLU (Kim et al., CVPR 2023): boost the positive part of the class activation map.

BoostLU is a change to how logits are computed, not a loss, so it is a wrapper around a timm model.
For a model whose head is "global average pool, then one linear layer", the logits equal the
spatial mean of the class activation map (CAM): the linear layer applied at every position of the
backbone's NCHW feature map. BoostLU scales the positive part of the CAM by ``alpha`` before the
mean:

    CAM  = W · f[:, :, h, w] + b                   (B, C, H, W)
    CAM' = where(CAM > 0, alpha · CAM, CAM)
    logits = mean over (h, w) of CAM'

With ``alpha = 1`` the wrapper returns exactly the plain model's logits. It is applied at training
and at test time and is combined with the large-loss losses (``ll_r``, ``ll_ct``, ``ll_cp``).
Published mAP of LL-R + BoostLU (VOC / COCO / NUS / CUB, ResNet-50, 448 px, end-to-end):
89.29 / 72.89 / 49.59 / 19.80.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..losses._checks import check_number
from ..losses._citations import KIM_2023

__all__ = ["BoostLU", "create_boostlu_model"]

# Pool types of timm's SelectAdaptivePool2d that are a plain spatial mean.
_AVERAGE_POOL_TYPES = ("avg", "fast", "fastavg")


def _head_pool_type(model: nn.Module) -> Optional[str]:
    """The ``pool_type`` of the model's global pool, where timm exposes one (None otherwise)."""
    owners = [model, getattr(model, "head", None)]
    for owner in owners:
        pool = getattr(owner, "global_pool", None) if owner is not None else None
        if isinstance(pool, str):
            return pool
        pool_type = getattr(pool, "pool_type", None)
        if isinstance(pool_type, str):
            return pool_type
    return None


class BoostLU(nn.Module):
    """Wrap a timm CNN so that its logits are the mean of the boosted class activation map.

    BoostLU: Kim et al., "Bridging the Gap between Model Explanations in Partially Annotated
    Multi-label Classification", CVPR 2023. Published mAP of LL-R + BoostLU (VOC / COCO / NUS / CUB,
    ResNet-50 ImageNet, 448 px, end-to-end): 89.29 / 72.89 / 49.59 / 19.80.

    The wrapped model must be a timm model whose head is global average pooling followed by one
    linear layer (``resnet*``, ``efficientnet*``, ``regnet*``, ``densenet*``, ...): ``forward_features``
    returns an NCHW map and ``get_classifier()`` is an ``nn.Linear``. The head is checked once, at
    construction, by comparing ``model.forward_head`` with "average pool, then the classifier" on a
    small random feature map; models where that is not the computation (max or avg-max pooling, a
    norm or MLP after the pool, NHWC feature maps, vision transformers, ``num_classes=0``) are
    rejected with a ValueError/TypeError saying why.

    Head dropout: timm applies ``drop_rate`` dropout to the pooled features during training. The
    wrapper applies the same per-(example, channel) dropout mask to the feature map, which is the
    same computation because pooling is linear.

    ``BoostLU`` forwards the timm attributes a training recipe needs (``num_classes``,
    ``num_features``, ``pretrained_cfg``, ``get_classifier``, ``reset_classifier``,
    ``forward_features``, ``forward_head(x, pre_logits=True)``), so it can be used where a timm
    model is expected; the plain model (to save or export) is ``wrapper.model``.

    Example::

        >>> model = BoostLU(timm.create_model("resnet50", pretrained=True, num_classes=20), alpha=5.0)
        >>> logits = model(images)  # (B, 20); train with create_loss("ll_r") as usual

    Args:
        model: A timm model (see above). It becomes the submodule ``model``.
        alpha: Factor applied to the positive part of the CAM (the paper's α, default 5). Must be
            finite and > 0; 1 gives the plain model's logits.
        check_head: Verify at construction that the head is average pool + linear. Turn off only for
            a model known to qualify (e.g. one on the meta device).
    """

    paper = "Kim et al., CVPR 2023"
    citation = KIM_2023

    def __init__(self, model: nn.Module, alpha: float = 5.0, check_head: bool = True):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"BoostLU wraps a timm model (nn.Module), got {type(model).__name__}")
        missing = [name for name in ("forward_features", "forward_head", "get_classifier") if not hasattr(model, name)]
        if missing:
            raise TypeError(
                f"BoostLU needs a timm model with forward_features, forward_head and get_classifier; "
                f"{type(model).__name__} lacks {', '.join(missing)}")
        alpha = check_number("alpha", alpha, minimum=0.0, strict_minimum=True)
        self.model = model
        self.alpha = alpha
        self.training = model.training  # start in the wrapped model's mode (set directly: no recursion)
        if check_head:
            self.check_model()

    # ------------------------------------------------------------------ checks
    def _linear_classifier(self) -> nn.Linear:
        classifier = self.model.get_classifier()
        if isinstance(classifier, nn.Identity) or getattr(self.model, "num_classes", None) == 0:
            raise ValueError(
                "BoostLU needs a classifier, but the model has num_classes=0 (no head); create it with "
                "num_classes=C or call model.reset_classifier(C)")
        if not isinstance(classifier, nn.Linear):
            raise TypeError(
                f"BoostLU computes the class activation map with a linear classifier; "
                f"{type(self.model).__name__}.get_classifier() is a {type(classifier).__name__}")
        return classifier

    def check_model(self) -> None:
        """Check that the wrapped model's head is global average pooling followed by its linear classifier.

        Raises:
            ValueError: NHWC feature maps, a non-average global pool, no classifier, or a head whose
                output differs from ``classifier(feature_map.mean((2, 3)))``.
            TypeError: the classifier is not an ``nn.Linear``.
        """
        name = type(self.model).__name__
        output_fmt = str(getattr(self.model, "output_fmt", "NCHW"))
        if output_fmt != "NCHW":
            raise ValueError(f"BoostLU needs an NCHW feature map; {name} has output_fmt={output_fmt!r}")
        classifier = self._linear_classifier()
        pool_type = _head_pool_type(self.model)
        if pool_type is not None and pool_type.lower() not in _AVERAGE_POOL_TYPES:
            raise ValueError(
                f"BoostLU needs global average pooling (the CAM mean equals the logits only then); "
                f"{name} uses global_pool={pool_type!r}")
        weight = classifier.weight
        if weight.is_meta:
            return
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(2, classifier.in_features, 3, 5, generator=generator)
        features = features.to(device=weight.device, dtype=weight.dtype)
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                try:
                    head_out = self.model.forward_head(features)
                except Exception as err:
                    raise ValueError(
                        f"BoostLU needs a head that pools an NCHW feature map ({classifier.in_features} channels) "
                        f"and applies a linear classifier; {name}.forward_head failed on such a map: {err}") from err
                expected = classifier(features.mean(dim=(2, 3)))
        finally:
            for module, mode in modes.items():
                module.training = mode
        if not isinstance(head_out, torch.Tensor) or head_out.shape != expected.shape:
            got = tuple(head_out.shape) if isinstance(head_out, torch.Tensor) else type(head_out).__name__
            raise ValueError(
                f"BoostLU needs a head equal to average pool + linear; {name}.forward_head returned {got} "
                f"instead of {tuple(expected.shape)}")
        tol = 1e-3 * float(expected.abs().max()) + 1e-5
        if not torch.allclose(head_out.float(), expected.float(), rtol=1e-3, atol=tol):
            raise ValueError(
                f"BoostLU needs a head equal to average pool + linear, but {name}.forward_head computes something "
                "else (a norm, MLP or extra layer after the pool, or a non-average pool)")

    # ------------------------------------------------------------------ compute
    def class_activation_map(self, features: torch.Tensor, boosted: bool = True) -> torch.Tensor:
        """The (B, C, H, W) class activation map of an NCHW feature map, optionally boosted.

        Args:
            features: (B, D, H, W) output of ``forward_features``.
            boosted: Scale the positive entries by ``alpha``.

        Returns:
            (B, C, H, W) map: the classifier applied at every spatial position.
        """
        classifier = self._linear_classifier()
        self._check_features(features, classifier)
        return self._flat_cam(features, classifier, boosted).unflatten(2, features.shape[2:])

    @staticmethod
    def _check_features(features: torch.Tensor, classifier: nn.Linear) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"BoostLU needs a 4-D NCHW feature map, got {shape}")
        if features.shape[1] != classifier.in_features:
            hint = " (it looks NHWC)" if features.shape[-1] == classifier.in_features else ""
            raise ValueError(
                f"feature map must be NCHW with {classifier.in_features} channels, got shape "
                f"{tuple(features.shape)}{hint}")

    def _flat_cam(self, features: torch.Tensor, classifier: nn.Linear, boosted: bool) -> torch.Tensor:
        # (C, D) @ (B, D, H*W) -> (B, C, H*W): one batched matmul, no copy of the feature map.
        cam = torch.matmul(classifier.weight, features.flatten(2))
        if classifier.bias is not None:
            cam = cam + classifier.bias[:, None]
        if boosted and self.alpha != 1.0:
            cam = torch.where(cam > 0, cam * self.alpha, cam)
        return cam

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's feature map.

        Args:
            x: Input images.
        """
        return self.model.forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Boosted-CAM logits of a feature map, or the plain pooled features when ``pre_logits``.

        Args:
            features: (B, D, H, W) output of ``forward_features``.
            pre_logits: Return the wrapped model's pooled features (B, D) instead of logits.

        Returns:
            (B, C) logits (float32: the spatial mean is accumulated in float32 under autocast), or
            (B, D) pooled features.
        """
        if pre_logits:
            return self.model.forward_head(features, pre_logits=True)
        classifier = self._linear_classifier()
        self._check_features(features, classifier)
        drop_rate = float(getattr(self.model, "drop_rate", 0.0) or 0.0)
        if self.training and drop_rate > 0:
            # Dropout of the pooled features == the same channel mask on every spatial position.
            mask = features.new_ones(features.shape[0], features.shape[1], 1, 1)
            features = features * F.dropout(mask, p=drop_rate, training=True)
        return self._flat_cam(features, classifier, boosted=True).mean(dim=2, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the boosted class activation map.

        Args:
            x: (B, 3, H, W) images.

        Returns:
            (B, C) float32 logits.
        """
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ timm passthrough
    def get_classifier(self) -> nn.Module:
        """The wrapped model's linear classifier (its weights define the CAM)."""
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        """Replace the wrapped model's classifier (timm's ``reset_classifier``) and re-check the head.

        Args:
            num_classes: New number of classes (> 0).
            *args: Passed on to the model's ``reset_classifier`` (e.g. ``global_pool``).
            **kwargs: Passed on to the model's ``reset_classifier``.
        """
        self.model.reset_classifier(num_classes, *args, **kwargs)
        self.check_model()

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def num_features(self) -> int:
        return self.model.num_features

    @property
    def head_hidden_size(self) -> int:
        return getattr(self.model, "head_hidden_size", self.model.num_features)

    @property
    def pretrained_cfg(self) -> Dict[str, Any]:
        return getattr(self.model, "pretrained_cfg", {})

    @property
    def default_cfg(self) -> Dict[str, Any]:
        return self.pretrained_cfg

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def create_boostlu_model(model_name: str, alpha: float = 5.0, **kwargs) -> BoostLU:
    """Create a timm model with ``timm.create_model`` and wrap it in :class:`BoostLU`.

    Args:
        model_name: timm model name (``"resnet50"``).
        alpha: BoostLU's α (default 5).
        **kwargs: Passed to ``timm.create_model`` (``pretrained``, ``num_classes``, ...).
    """
    import timm

    return BoostLU(timm.create_model(model_name, **kwargs), alpha=alpha)
