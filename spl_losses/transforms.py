"""Image transforms for the contrastive auxiliary loss: SimCLR-style views built with timm.

The SimCLR-style augmentations of the contrastive auxiliary loss (RandomResizedCrop with scale 0.2-1, horizontal flip, colour jitter
(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur p 0.5, then tensor conversion and
normalisation) are all options of ``timm.data.create_transform``; this module only picks them and
applies the result twice.

Randomness: timm's random resized crop draws from Python's ``random`` module and the torchvision
transforms from torch's generator, so seed both (``random.seed`` and ``torch.manual_seed``; timm's
and PyTorch's data-loader worker seeding do) for repeatable views.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

__all__ = ["TwoViewTransform", "contrastive_view_transform", "create_two_view_transform"]

#: The contrastive views' augmentations, as ``timm.data.create_transform`` arguments.
CONTRASTIVE_AUGMENTATION = dict(
    scale=(0.2, 1.0),
    hflip=0.5,
    color_jitter=(0.4, 0.4, 0.4, 0.1),
    color_jitter_prob=0.8,
    grayscale_prob=0.2,
    gaussian_blur_prob=0.5,
)


def contrastive_view_transform(
        input_size: Union[int, Sequence[int]] = 224,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        interpolation: str = "bilinear",
        **overrides: Any,
) -> Callable:
    """One SimCLR-style view transform, from ``timm.data.create_transform``.

    Args:
        input_size: Output size: an int, (H, W), or timm's (3, H, W).
        mean: Normalisation mean (the model's, e.g. from ``timm.data.resolve_data_config``).
        std: Normalisation standard deviation.
        interpolation: Resize interpolation.
        **overrides: Replace any augmentation argument of ``create_transform`` (``scale``,
            ``color_jitter_prob``, ...).

    Returns:
        A transform from a PIL image to a normalised (3, H, W) float tensor.
    """
    if isinstance(input_size, int):
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
    elif not (isinstance(input_size, (tuple, list)) and len(input_size) in (2, 3)
              and all(isinstance(v, int) and v > 0 for v in input_size)):
        raise ValueError(f"input_size must be an int, (H, W) or (3, H, W) of positive ints, got {input_size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values (RGB), got {tuple(mean)!r} and {tuple(std)!r}")
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        input_size = (3, *input_size)
    kwargs = dict(CONTRASTIVE_AUGMENTATION)
    kwargs.update(overrides)
    return create_transform(
        input_size, is_training=True, mean=tuple(mean), std=tuple(std), interpolation=interpolation, **kwargs)


class TwoViewTransform:
    """Apply a random view transform twice to the same image: returns ``(view1, view2)``.

    Optionally also applies a plain transform (the classification loss's training view) and then
    returns ``(plain, view1, view2)``.

    Args:
        view_transform: The random transform applied independently for each view (e.g. from
            :func:`contrastive_view_transform`).
        plain_transform: Optional transform for the plain training view.
    """

    def __init__(self, view_transform: Callable, plain_transform: Optional[Callable] = None):
        if not callable(view_transform):
            raise TypeError(f"view_transform must be callable, got {type(view_transform).__name__}")
        if plain_transform is not None and not callable(plain_transform):
            raise TypeError(f"plain_transform must be callable or None, got {type(plain_transform).__name__}")
        self.view_transform = view_transform
        self.plain_transform = plain_transform

    def __call__(self, image) -> Tuple:
        views = (self.view_transform(image), self.view_transform(image))
        if self.plain_transform is None:
            return views
        return (self.plain_transform(image), *views)

    def __repr__(self) -> str:
        plain = f", plain_transform={self.plain_transform!r}" if self.plain_transform is not None else ""
        return f"{type(self).__name__}(view_transform={self.view_transform!r}{plain})"


def create_two_view_transform(
        data_config: Optional[Dict[str, Any]] = None,
        input_size: Optional[Union[int, Sequence[int]]] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        plain_transform: Optional[Callable] = None,
        **overrides: Any,
) -> TwoViewTransform:
    """The two-view transform of the contrastive auxiliary loss, for a model.

    Args:
        data_config: timm's data config of the model (``timm.data.resolve_data_config(model=model)``);
            supplies ``input_size``, ``mean``, ``std`` and ``interpolation`` unless given explicitly.
        input_size: Output size (int, (H, W) or (3, H, W)); default 224 without a data config.
        mean: Normalisation mean; default ImageNet's.
        std: Normalisation standard deviation; default ImageNet's.
        plain_transform: Optional plain training transform; the result then returns (plain, view1, view2).
        **overrides: Augmentation arguments of ``timm.data.create_transform`` to change.

    Example::

        >>> cfg = timm.data.resolve_data_config(model=model)
        >>> two_views = create_two_view_transform(cfg, input_size=448)
        >>> view1, view2 = two_views(pil_image)
    """
    config = dict(data_config or {})
    input_size = input_size if input_size is not None else config.get("input_size", 224)
    mean = mean if mean is not None else config.get("mean", IMAGENET_DEFAULT_MEAN)
    std = std if std is not None else config.get("std", IMAGENET_DEFAULT_STD)
    if "interpolation" not in overrides and config.get("interpolation"):
        overrides["interpolation"] = config["interpolation"]
    view = contrastive_view_transform(input_size, mean=mean, std=std, **overrides)
    return TwoViewTransform(view, plain_transform=plain_transform)
