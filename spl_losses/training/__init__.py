"""The pieces of the training recipe (recipes/train.py, which owns the run and its two loops), one job per module.

- :mod:`.arguments`: the flag table; argparse and YAML configs checked the same way.
- :mod:`.value_types`: the flags' value types (conversion and range checks, shared by argparse and configs).
- :mod:`.data`: the run's dataset, label matrices and fingerprints, checked once (:class:`RunData`).
- :mod:`.settings`: every check, then the frozen :class:`RunSettings` and its phases.
- :mod:`.run_dir`: whose a run folder is, whether it holds this run, its OS lock.
- :mod:`.loss_factory`: build any registered loss from the run; the linear-to-fine-tuning hand-off.
- :mod:`.modeling`: the timm model (BoostLU) and the head hand-off.
- :mod:`.image_data`: the protocol's image transform (float, or uint8 normalised on the device), loaders,
  batched flips, decoding errors named.
- :mod:`.image_cache`: resized uint8 images decoded once into a memory-mapped file per split.
- :mod:`.input_pipeline`: a run's image loaders: worker count, page-locked memory, device normalisation, cache.
- :mod:`.device_options`: channels-last memory format and ``torch.compile`` of the network.
- :mod:`.sampling`: data order and flips as functions of (seed, epoch) (exact resume, any process count).
- :mod:`.features`: pooled backbone features with an on-disk cache.
- :mod:`.linear_head`: linear-head training on whole feature tensors.
- :mod:`.linear_grid`: several linear heads trained on the same batches (a learning-rate grid in one pass).
- :mod:`.train_step`: model + loss (+ contrastive term) as one module for data parallelism.
- :mod:`.optim`: timm optimizers and schedules with the recipe's parameter groups.
- :mod:`.evaluation`: prediction gathered over processes, each example scored exactly once.
- :mod:`.checkpointing`: accelerate ``save_state``/``load_state`` + JSON bookkeeping, rotation.
- :mod:`.progress`: best-epoch bookkeeping and early stopping.
- :mod:`.phase_book`: one phase's per-epoch validation, logs, checkpoints and results; its outcome.
- :mod:`.pseudo_labels`: a teacher's pseudo-labels: rule, loss weights, counts (every path of the recipe).
- :mod:`.export`: the exported model folder.
- :mod:`.run_files`: metrics.jsonl, results.json, the validation-mAP plot.
- :mod:`.search`: the hyperparameter grid, run names, the winner.
"""
from .arguments import FLAGS, build_parser, load_config_file, parse_args
from .data import RunData, load_data
from .evaluation import features_loader, predict_loader, scatter_by_index
from .device_options import apply_device_options
from .features import extract_or_load_features, feature_cache_path, pooled_features, run_features, weights_fingerprint
from .image_cache import CachedImages, image_cache_path
from .image_data import DeviceNormalize, protocol_transform, protocol_uint8_transform
from .input_pipeline import ImagePipeline, default_workers, resolve_workers
from .linear_head import predict_linear, train_linear_epoch
from .loss_factory import build_loss, build_run_loss, hand_off_loss_state, loss_parameters
from .phase_book import PhaseBook, PhaseOutcome
from .progress import BestEpochTracker, EarlyStopping
from .sampling import EpochPermutationSampler, epoch_flip_mask, epoch_permutation
from .search import REFERENCE_GRID, grid_points, group_key, run_name, select_winner
from .settings import PhaseSettings, RunSettings, check_args, resolve_settings
from .train_step import LinearStep, TrainStep
