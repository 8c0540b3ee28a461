"""The Hugging Face Hub: publish a training run's model with its model card, and load it back.

A run folder of ``recipes/train.py`` holds ``config.yaml``, ``results.json`` and ``model/``: a stock timm
model saved with ``timm.models.save_for_hf`` (config.json with ``label_names`` + model.safetensors) or a
:class:`~spl_losses.models.LinearProbe` for feature datasets, plus ``loss_state.safetensors`` when the
loss keeps state.

- :func:`push_run_to_hub` writes the model card and the training record into ``model/`` and uploads it:
  a timm model then loads anywhere with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``;
  :func:`check_push_access` tells beforehand whether a push can succeed.
- :func:`build_model_card` / :func:`write_model_card`: the card (module :mod:`.card`).
- :func:`public_training_config` / :func:`mask_url_credentials`: what is published of a run's settings
  (credentials masked, absolute local paths reduced to their last component; module :mod:`.public`).
- Loading and the loss state live in :mod:`spl_losses.checkpoints` and are re-exported here:
  :func:`load_exported_model`, :func:`read_model_config`, :func:`save_loss_state`, :func:`load_loss_state`.
"""
from ..checkpoints import (LOSS_STATE_FILENAME, TRAINING_CONFIG_FILENAME, TRAINING_RESULTS_FILENAME,
                           has_loss_state, load_exported_model, load_loss_state, read_model_config, save_loss_state)
from .card import MODEL_CARD_TAG, build_model_card, read_run, write_model_card, write_training_record
from .public import mask_url_credentials, public_training_config
from .push import HubPushError, check_push_access, push_run_to_hub

__all__ = ["HubPushError", "check_push_access", "push_run_to_hub", "MODEL_CARD_TAG", "build_model_card",
           "write_model_card", "write_training_record", "read_run", "LOSS_STATE_FILENAME", "TRAINING_CONFIG_FILENAME",
           "TRAINING_RESULTS_FILENAME", "save_loss_state", "load_loss_state", "load_exported_model",
           "read_model_config", "has_loss_state", "mask_url_credentials", "public_training_config"]
