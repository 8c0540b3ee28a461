"""The exported model of a finished run: ``OUT/model``, loadable by timm alone (or as a LinearProbe).

An image run exports the stock timm model with ``timm.models.save_for_hf`` (safetensors; ``config.json``
records the class names and the training preprocessing, and ``boostlu_alpha`` for a BoostLU run); a
features run exports a :class:`~spl_losses.models.LinearProbe`. The loss state, when the loss has one,
goes beside it as ``loss_state.safetensors``. Only these files are written; nothing else in the folder
is touched.
"""
import os

import timm

from ..checkpoints import save_loss_state
from .image_data import protocol_data_config
from .modeling import timm_model_of

__all__ = ["export_model"]


def export_model(output_dir: str, settings, class_names, outcome) -> str:
    """Write the run's model (the best epoch's) into ``output_dir/model``.

    Args:
        output_dir: The run folder.
        settings: The run's settings.
        class_names: The dataset's class names.
        outcome: The last phase's :class:`~spl_losses.training.phase_book.PhaseOutcome`.

    Returns:
        The model folder.
    """
    model_dir = os.path.join(output_dir, "model")
    if outcome.model is not None:
        model = timm_model_of(outcome.model)
        model_config = {"label_names": list(class_names)}
        if settings.boostlu:  # the stock timm model is saved; its logits at test time were BoostLU's
            model_config["boostlu_alpha"] = settings.boostlu_alpha
        # the training preprocessing (squash to image_size, no crop), not timm's default for the architecture
        timm.models.save_for_hf(model, model_dir, model_config=model_config, safe_serialization=True,
                                data_config=protocol_data_config(model, settings.image_size))
    else:
        from ..models.linear_probe import LinearProbe, preprocessing_from_timm

        preprocessing = None
        if settings.feature_backbone:  # the features came from this timm model: record what it expects
            preprocessing = preprocessing_from_timm(timm.create_model(settings.feature_backbone, pretrained=False))
        probe = LinearProbe(outcome.in_features, len(class_names), label_names=list(class_names),
                            backbone=settings.feature_backbone, preprocessing=preprocessing)
        probe.fc.load_state_dict(outcome.head.state_dict())
        probe.save_pretrained(model_dir)
    save_loss_state(outcome.loss, os.path.join(model_dir, "loss_state.safetensors"))
    return model_dir
