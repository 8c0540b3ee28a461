"""Teachers from a string (the recipe's ``--teacher``), and the papers' pseudo-label settings.

Teacher strings:

- ``clip:MODEL[@TAG]``: :class:`CLIPTeacher` with an ``open_clip`` model: ``clip:ViT-L-14-336@openai``,
  ``clip:hf-hub:timm/ViT-B-16-SigLIP``, ``clip:local-dir:/path/to/model``;
- ``model:CHECKPOINT``: :class:`ModelTeacher` of an exported run (``model:runs/round1``,
  ``model:hf-hub:ORG/NAME``);
- ``knn``: :class:`KNNTeacher` over the split's (or the given) features;
- ``scores:PATH``: :class:`ScoresTeacher` of precomputed (N, C) probabilities (``.npy``, ``.safetensors`` or
  ``.parquet`` keyed by the dataset's ``index``): any tagger's scores, or the true labels as an oracle.
"""
from typing import Any, Dict

from .base import Teacher
from .clip import CLIPTeacher
from .knn import KNNTeacher
from .model import ModelTeacher
from .scores import ScoresTeacher

__all__ = ["create_teacher", "VLPL_PSEUDO_LABEL_DEFAULTS", "AEVLP_PSEUDO_LABEL_DEFAULTS"]

#: VLPL's teacher and rule (Xing et al., 2024; the same on every dataset): CLIP ViT-L/14 at 336 px,
#: softmax at T = 0.01, positives where the score exceeds 0.3, no negative pseudo-labels.
VLPL_PSEUDO_LABEL_DEFAULTS: Dict[str, Any] = dict(
    teacher="clip:ViT-L-14-336@openai", temperature=0.01, grid=0, rule="threshold", threshold=0.3)

#: AEVLP's teacher and rule per dataset (Tran et al., 2025): CLIP ViT-B/16, softmax at ``temperature``,
#: global view and ``grid`` × ``grid`` crops fused with gate ``gate``, then each row's ``top_k`` classes
#: whose score reaches ``threshold``.
AEVLP_PSEUDO_LABEL_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "voc2012": dict(teacher="clip:ViT-B-16@openai", temperature=0.01, threshold=0.5, gate=0.0, grid=4, top_k=3),
    "coco2014": dict(teacher="clip:ViT-B-16@openai", temperature=0.01, threshold=0.5, gate=0.3, grid=4, top_k=3),
    "nuswide": dict(teacher="clip:ViT-B-16@openai", temperature=0.01, threshold=0.6, gate=0.3, grid=4, top_k=3),
    "cub200": dict(teacher="clip:ViT-B-16@openai", temperature=0.1, threshold=0.005, gate=0.005, grid=5, top_k=32),
}


def create_teacher(spec: str, **kwargs) -> Teacher:
    """A teacher from its string (see the module docstring).

    Args:
        spec: ``clip:MODEL[@TAG]``, ``model:CHECKPOINT``, ``knn`` or ``scores:PATH``.
        **kwargs: The teacher's other arguments (``temperature``, ``grid``, ``gate``, ``fusion``, ``templates``,
            ``class_names``, ``features``, ``num_neighbors``, ``device``, ...; ``scores:`` takes only
            ``class_names``).

    Returns:
        The teacher.
    """
    if not isinstance(spec, str):
        raise TypeError("teacher must be a string like 'clip:ViT-L-14-336@openai', 'model:RUN_DIR', 'knn' or "
                        f"'scores:PATH', got {type(spec).__name__}")
    kind, _, rest = spec.partition(":")
    if kind == "clip" and rest:
        model_name, pretrained = rest, None
        if "@" in rest and not rest.startswith(("hf-hub:", "local-dir:")):
            model_name, pretrained = rest.split("@", 1)
        return CLIPTeacher(model_name, pretrained=pretrained, **kwargs)
    if kind == "model" and rest:
        return ModelTeacher(rest, **kwargs)
    if kind == "scores" and rest:
        return ScoresTeacher(rest, **kwargs)
    if spec == "knn":
        return KNNTeacher(**kwargs)
    raise ValueError(f"unknown teacher {spec!r}: expected 'clip:MODEL[@TAG]' (an open_clip model, hf-hub: or "
                     "local-dir:), 'model:CHECKPOINT' (an exported run), 'knn' or 'scores:PATH' (an (N, C) "
                     ".npy, .safetensors or .parquet file of scores in [0, 1])")
