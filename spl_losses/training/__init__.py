"""Reusable pieces of the training recipe (recipes/train.py), one job per module.

- :mod:`.arguments`: argparse flags + YAML config (timm's convention).
- :mod:`.label_matrices`: dense label matrices of a split; full-label and k checks.
- :mod:`.loss_factory`: build any registered loss from what its constructor takes.
- :mod:`.image_data`: the protocol's image transform, loaders, batched flips.
- :mod:`.sampling`: data order and flips as functions of (seed, epoch) (exact resume, any process count).
- :mod:`.features`: pooled backbone features with an on-disk cache.
- :mod:`.linear_head`: linear-head training on whole feature tensors.
- :mod:`.evaluation`: prediction gathered over processes, each example scored exactly once.
- :mod:`.train_step`: model + loss (+ contrastive term) as one module for data parallelism.
- :mod:`.optim`: Adam / SGD with head and loss-state learning-rate multipliers.
- :mod:`.model_state`: tensor state save/load, the linear-to-fine-tuning hand-off.
- :mod:`.progress`: best-epoch bookkeeping.
- :mod:`.run_files`: config.yaml, metrics.jsonl, results.json, the val-mAP plot.
- :mod:`.search`: the hyperparameter grid, run names, the winner.
"""
from .arguments import build_parser, load_config_file, parse_args
from .evaluation import evaluate_scores, predict_loader, scatter_by_index
from .features import extract_or_load_features, feature_cache_path, pooled_features, weights_fingerprint
from .linear_head import predict_linear, train_linear_epoch
from .loss_factory import build_loss, loss_parameters, loss_takes
from .model_state import copy_linear_head, load_tensor_state, save_tensor_state, tensor_state
from .progress import BestEpochTracker
from .sampling import EpochPermutationSampler, epoch_flip_mask, epoch_permutation
from .search import REFERENCE_GRID, grid_points, run_name, select_winner
from .train_step import TrainStep
