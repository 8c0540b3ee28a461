"""Teachers that score every (image, class), and the rules that turn their scores into pseudo-labels.

The losses ``vlpl`` and ``gpr`` train on pseudo-labels beside the single positive. They come from a
teacher, computed once per dataset split and cached (:func:`teacher_scores`), and a rule::

    from spl_losses import create_loss
    from spl_losses.teachers import create_teacher, teacher_scores, ThresholdRule, observed_label_matrix

    teacher = create_teacher("clip:ViT-L-14-336@openai", temperature=0.01)      # VLPL's teacher
    scores = teacher_scores(teacher, dsd["train"], dataset_source="ORG/my-dataset")  # (N, C), cached
    pseudo = ThresholdRule(0.3)(scores, observed_label_matrix(dsd["train"]))     # (N, C) in {0, 1}
    loss = create_loss("vlpl", num_classes=C, num_examples=N, pseudo_labels=pseudo, alpha=0.2)

Teachers: :class:`CLIPTeacher` (any ``open_clip`` / SigLIP model; global view and grid crops),
:class:`ModelTeacher` (an earlier run: self-training rounds), :class:`KNNTeacher` (label propagation over
the frozen features), :class:`ScoresTeacher` (precomputed scores from a file, read each time, never cached). Rules: :class:`ThresholdRule`, :class:`TopKRule`, :class:`PrevalenceRule`,
:class:`SoftRule`. Files travel with the dataset: :func:`export_teacher_scores` puts one in a dataset folder
or Hub dataset repo, where :func:`teacher_scores` looks first (``dataset_source``).
"""
from .base import Teacher, export_teacher_scores, observed_label_matrix, split_class_names, teacher_scores
from .cache import SCORES_FOLDER, default_teacher_cache_dir
from .clip import DEFAULT_TEMPLATES, CLIPTeacher
from .factory import AEVLP_PSEUDO_LABEL_DEFAULTS, VLPL_PSEUDO_LABEL_DEFAULTS, create_teacher
from .knn import KNNTeacher, propagate_labels
from .model import ModelTeacher
from .rules import RULES, PrevalenceRule, PseudoLabelRule, SoftRule, ThresholdRule, TopKRule, create_rule
from .scores import ScoresTeacher
from .views import fuse_views, grid_boxes
