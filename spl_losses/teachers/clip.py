"""A CLIP-style vision-language teacher through ``open_clip`` (the optional ``clip`` extra).

Every class gets a text embedding (the mean of its prompts' normalised embeddings, one prompt per
template); every image view gets an image embedding; the raw output is their cosine similarity,
(N, 1 + g², C), cached. The scores are ``softmax_c(cos / T)`` per view, fused over the views
(:func:`spl_losses.teachers.views.fuse_views`): with ``grid=0`` this is the VLPL rule's score (Xing et al.,
2024: ViT-L/14 at 336 px, T = 0.01), with ``grid=g`` AEVLP's global + local scores (Tran et al., 2025:
ViT-B/16, g = 4 or 5).

Any model ``open_clip.create_model_and_transforms`` accepts works: a built-in name with a pretrained tag
(``ViT-L-14-336`` + ``openai``), ``hf-hub:ORG/NAME`` (OpenCLIP and SigLIP models on the Hub) or
``local-dir:PATH`` (a folder with ``open_clip_config.json`` and weights).
"""
from typing import Any, Dict, Optional, Sequence

import datasets
import torch
import torch.nn.functional as F

from .base import Teacher, split_class_names
from .cache import module_fingerprint
from .views import check_views_options, fuse_views, score_split_views

__all__ = ["CLIPTeacher", "DEFAULT_TEMPLATES"]

#: The default prompt template; ``{}`` is replaced by the class name.
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def _import_open_clip():
    try:
        import open_clip
    except ImportError as err:  # the optional extra
        raise ImportError("the CLIP teacher needs open_clip: pip install 'spl_losses[clip]' "
                          "(or pip install open_clip_torch)") from err
    return open_clip


class CLIPTeacher(Teacher):
    """Zero-shot class scores of a frozen CLIP-style model, from the global view and optional grid crops.

    Args:
        model_name: An ``open_clip`` model name (``ViT-L-14-336``), ``hf-hub:ORG/NAME`` or ``local-dir:PATH``.
        pretrained: The pretrained tag for a built-in name (``openai``); ignored for ``hf-hub:`` / ``local-dir:``.
        class_names: Class names put into the prompts; default the split's class names (edit them when the
            dataset's names are not words, e.g. ``"pottedplant"`` -> ``"potted plant"``).
        templates: Prompt templates with one ``{}`` for the class name; a class's text embedding is the mean
            over its templates.
        temperature: T of the softmax over classes (0.01 for VLPL and AEVLP on VOC/COCO/NUS, 0.1 for CUB).
        grid: g, the side of the crop grid (0: global view only, VLPL; 4 or 5: AEVLP).
        fusion: How crop scores join the global ones (``"weighted"`` or ``"max"``, see ``fuse_views``).
        gate: η of the fusion.
        resize_mode: ``open_clip``'s image resize mode: ``"squash"`` (default: the whole image, resized without
            crop, as VLPL feeds CLIP), ``"shortest"`` (resize + centre crop, CLIP's own) or ``"longest"``.
        precision: ``open_clip`` precision (``fp32``, ``fp16``, ``bf16``, ``amp``...).
        batch_size: Images per forward pass (each brings 1 + g² views).
        device: Where the model runs (default: CUDA when available).
        cache_dir: Where ``open_clip`` keeps downloaded weights.
    """

    kind = "clip"

    def __init__(
            self,
            model_name: str = "ViT-L-14-336",
            pretrained: Optional[str] = "openai",
            class_names: Optional[Sequence[str]] = None,
            templates: Sequence[str] = DEFAULT_TEMPLATES,
            temperature: float = 0.01,
            grid: int = 0,
            fusion: str = "weighted",
            gate: float = 0.0,
            resize_mode: str = "squash",
            precision: str = "fp32",
            batch_size: int = 32,
            device: Optional[str] = None,
            cache_dir: Optional[str] = None,
    ):
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be an open_clip model name, got {model_name!r}")
        if isinstance(templates, str) or not templates or any("{}" not in t for t in templates):
            raise ValueError(f"templates must be a list of strings with one '{{}}' for the class name, got {templates!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.grid, self.fusion, self.gate = check_views_options(grid, fusion, gate)
        self.model_name = model_name
        self.pretrained = None if model_name.startswith(("hf-hub:", "local-dir:")) else pretrained
        self.class_names = list(class_names) if class_names is not None else None
        self.templates = list(templates)
        self.temperature = float(temperature)
        self.resize_mode = resize_mode
        self.precision = precision
        self.batch_size = int(batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_dir = cache_dir
        self._loaded = None

    def _load(self):
        """``(model, preprocess, tokenizer, weights fingerprint)``, loaded once."""
        if self._loaded is None:
            open_clip = _import_open_clip()
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, precision=self.precision, device=self.device,
                image_resize_mode=self.resize_mode, cache_dir=self.cache_dir)
            model.eval()
            tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
            self._loaded = (model, preprocess, tokenizer, module_fingerprint(model))
        return self._loaded

    def describe(self) -> Dict[str, Any]:
        """Model, weights fingerprint, preprocessing, prompts and grid (the cache key; the split's class
        names are covered by its fingerprint when ``class_names`` is not given)."""
        model, _, _, weights = self._load()
        open_clip = _import_open_clip()
        preprocessing = dict(open_clip.get_model_preprocess_cfg(model), resize_mode=self.resize_mode)
        return {"model": self.model_name, "pretrained": self.pretrained, "weights": weights,
                "precision": self.precision, "preprocessing": preprocessing, "templates": self.templates,
                "class_names": self.class_names, "grid": self.grid}

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """The (D, C) normalised class embeddings (mean over the templates, renormalised).

        Args:
            class_names: The C class names.
        """
        model, _, tokenizer, _ = self._load()
        open_clip = _import_open_clip()
        return open_clip.build_zero_shot_classifier(model, tokenizer, list(class_names), self.templates,
                                                    num_classes_per_batch=10, device=self.device).float()

    @torch.no_grad()
    def compute_raw(self, split: datasets.Dataset) -> torch.Tensor:
        """(N, 1 + g², C) cosine similarities of every image view with every class.

        Args:
            split: A split with an ``image`` column.
        """
        model, preprocess, _, _ = self._load()
        names = self.class_names if self.class_names is not None else split_class_names(split)
        text = self.text_embeddings(names)

        def encode(pixels):
            return F.normalize(model.encode_image(pixels).float(), dim=-1) @ text

        return score_split_views(split, encode, preprocess, self.grid, self.batch_size, self.device)

    def scores_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """``softmax_c(cos / T)`` per view, fused over the views.

        Args:
            raw: (N, V, C) cosine similarities.
        """
        return fuse_views(torch.softmax(raw.float() / self.temperature, dim=-1), self.fusion, self.gate)
