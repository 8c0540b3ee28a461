"""The pieces of the training recipe. ``recipes/train.py`` owns the run (one ``run`` function for a single run,
the points of a search and several processes) and its two loops (linear, end to end); each module here is a
leaf with one job, called with explicit arguments.

- :mod:`.flags`: the flag table and the flags' value types; argparse and YAML configs read the same way.
- :mod:`.cli`: one ``error:`` line (exit 2) for a user's mistake, a clean Ctrl-C, tracebacks with ``--debug``.
- :mod:`.settings`: every check, then the frozen, typed :class:`RunSettings` and its phases.
- :mod:`.run_data`: the run's dataset, label matrices and fingerprints, checked once (:class:`RunData`).
- :mod:`.label_matrices`: dense label matrices of a split and the checks made on them.
- :mod:`.images`: transforms, decoding, loaders, the decoded-image cache, channels-last / compile.
- :mod:`.features`: the run's features: the dataset's column, or a frozen backbone's (cached on disk).
- :mod:`.evaluation`: prediction gathered over processes, each example scored exactly once.
- :mod:`.builders`: the timm model, any registered loss, optimizers (the estimator's included) and schedules.
- :mod:`.pseudo_labels`: a teacher's pseudo-labels: rule, loss weights, counts (every path of the recipe).
- :mod:`.linear`: a linear head's steps on feature tensors, alone or several heads on the same batches.
- :mod:`.parallel`: the per-process step (model + loss + contrastive term), the row exchange of a sparse
  estimator, data order and flips as functions of (seed, epoch).
- :mod:`.phase_book`: one phase's validation, best epoch, early stopping, checkpoints and results.
- :mod:`.run_dir`: a run folder: identity, lock, files, plot, exported model.
- :mod:`.study`: the search grid and the Optuna study shared by any number of workers.
"""
from .builders import build_loss, build_run_loss, hand_off_loss_state, loss_parameters
from .evaluation import features_loader, predict_loader, scatter_by_index
from .features import extract_or_load_features, feature_cache_path, pooled_features, run_features, weights_fingerprint
from .flags import FLAGS, build_parser, load_config_file, parse_args
from .images import (CachedImages, DeviceNormalize, ImagePipeline, apply_device_options, default_workers,
                     image_cache_path, protocol_transform, protocol_uint8_transform, resolve_workers)
from .linear import predict_linear, train_linear_epoch
from .parallel import EpochPermutationSampler, LinearStep, TrainStep, epoch_flip_mask, epoch_permutation
from .phase_book import BestEpochTracker, EarlyStopping, PhaseBook, PhaseOutcome
from .run_data import RunData, load_data
from .settings import PhaseSettings, RunSettings, check_args, resolve_settings
from .study import REFERENCE_GRID, grid_points, group_key, run_name, select_winner
