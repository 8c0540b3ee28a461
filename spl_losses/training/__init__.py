"""The pieces of the training recipe (recipes/train.py), one job per module.

- :mod:`.arguments`: the flag table; argparse and YAML configs checked the same way.
- :mod:`.data`: the run's dataset, label matrices and fingerprints, checked once (:class:`RunData`).
- :mod:`.settings`: every check, then the frozen :class:`RunSettings` and its phases.
- :mod:`.run_dir`: whose a run folder is, whether it holds this run, its OS lock.
- :mod:`.loss_factory`: build any registered loss from the run; the linear-to-fine-tuning hand-off.
- :mod:`.modeling`: the timm model (BoostLU) and the head hand-off.
- :mod:`.image_data`: the protocol's image transform, loaders, batched flips, decoding errors named.
- :mod:`.sampling`: data order and flips as functions of (seed, epoch) (exact resume, any process count).
- :mod:`.features`: pooled backbone features with an on-disk cache.
- :mod:`.linear_head`: linear-head training on whole feature tensors.
- :mod:`.linear_grid`: several linear heads trained on the same batches (a learning-rate grid in one pass).
- :mod:`.linear_group`: linear runs differing only in the learning rate trained together, each in its own folder.
- :mod:`.train_step`: model + loss (+ contrastive term) as one module for data parallelism.
- :mod:`.optim`: timm optimizers and schedules with the recipe's parameter groups.
- :mod:`.evaluation`: prediction gathered over processes, each example scored exactly once.
- :mod:`.checkpointing`: accelerate ``save_state``/``load_state`` + JSON bookkeeping, rotation.
- :mod:`.progress`: best-epoch bookkeeping and early stopping.
- :mod:`.phase_book`: one phase's per-epoch validation, logs, checkpoints and results.
- :mod:`.phases`: the linear and the end-to-end phase.
- :mod:`.export`: the exported model folder.
- :mod:`.run_files`: metrics.jsonl, results.json, the validation-mAP plot.
- :mod:`.search`: the hyperparameter grid, run names, the winner.
"""
from .arguments import FLAGS, build_parser, load_config_file, parse_args
from .data import RunData, load_data
from .evaluation import features_loader, predict_loader, scatter_by_index
from .features import extract_or_load_features, feature_cache_path, pooled_features, weights_fingerprint
from .linear_head import predict_linear, train_linear_epoch
from .loss_factory import build_loss, build_run_loss, hand_off_loss_state, loss_parameters
from .phases import PhaseOutcome, train_end_to_end_phase, train_linear_phase
from .progress import BestEpochTracker, EarlyStopping
from .sampling import EpochPermutationSampler, epoch_flip_mask, epoch_permutation
from .search import REFERENCE_GRID, grid_points, run_name, select_winner
from .settings import PhaseSettings, RunSettings, check_args, resolve_settings
from .train_step import LinearStep, TrainStep
