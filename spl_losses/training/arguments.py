"""The recipe's command line: argparse flags with an optional YAML config (timm's convention).

``-c/--config FILE.yaml`` sets parser defaults from the file's keys (flag names with underscores);
flags given on the command line override them. A config key that is not a flag is an error, except
``search_grid`` (the grid of ``--search``).
"""
import argparse
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml

__all__ = ["build_parser", "parse_args", "load_config_file", "RUN_IDENTITY_IGNORED", "CONFIG_ONLY_KEYS",
           "TRAIN_MODES", "LOSS_OPTION_FLAGS"]

TRAIN_MODES = ("linear_fixed_features", "end_to_end", "linear_init")

#: Keys of config.yaml that do not change what a run computes (ignored when comparing runs).
RUN_IDENTITY_IGNORED = ("resume", "stop_after", "push_to_hub", "output_dir", "log_with", "workers", "config",
                        "cache_dir", "search", "no_progress", "search_grid", "linear_phase_dir")

#: Keys allowed in a YAML config that are not flags.
CONFIG_ONLY_KEYS = ("search_grid",)

#: Loss-option flags: passed to the loss constructor when set (None = the loss's default).
LOSS_OPTION_FLAGS = {
    "ls_coef": float, "alpha": float, "beta": float, "delta_rel": float, "warmup_epochs": int,
    "theta": float, "gamma": float, "margin": float, "tau": float, "lamb": float, "change_epoch": int,
}


def _str2bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The recipe's argument parser (every flag; defaults follow SPEC §5 where it sets one).

    Returns:
        An ``argparse.ArgumentParser``.
    """
    p = argparse.ArgumentParser(
        description="Train a timm model with a single-positive multi-label loss (SPEC §5 protocol).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", default=None, help="YAML file whose keys are flag names (underscores)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits_mosaic",
                   help="registered builder name, folder saved with save_to_disk, folder of Parquet files, or Hub id")
    g.add_argument("--data-dir", default=None, help="raw data root of a registered builder")
    g.add_argument("--dataset-kwargs", default=None, type=yaml.safe_load,
                   help="YAML/JSON mapping of extra builder options, e.g. '{num_train: 64}'")
    g.add_argument("--observed-seed", type=int, default=1200, help="seed of the dataset's single positives")
    g.add_argument("--val-set-variant", default="clean", choices=("clean", "observed"))
    g.add_argument("--image-size", type=int, default=448)
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--cache-dir", default=None, help="feature cache folder (default: ~/.cache/spl_losses/features)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet50",
                   help="any timm model name, or a published checkpoint: hf-hub:ORG/NAME or local-dir:PATH (a model "
                        "folder of recipes/train.py); with --pretrained its weights are the start (its class count "
                        "must match the dataset's)")
    g.add_argument("--init-loss-state", default="auto",
                   help="start the loss's state (ROLE estimator, LL-Cp / APL matrices, epoch) from SOURCE's "
                        "loss_state.safetensors: a run dir, model dir, .safetensors file or hf-hub:ORG/NAME (an error "
                        "if it does not fit this loss and dataset); 'auto': from --model's checkpoint when it is "
                        "hf-hub:/local-dir: with --pretrained and holds a state that fits (same loss, same (N, C)), "
                        "else a fresh state (the log says which); 'none': always fresh")
    g.add_argument("--feature-backbone", default=None,
                   help="features datasets: the timm model the 'features' column came from; the exported LinearProbe "
                        "records it with its timm preprocessing")
    g.add_argument("--pretrained", type=_str2bool, default=True, nargs="?", const=True)
    g.add_argument("--model-kwargs", default=None, type=yaml.safe_load, help="extra timm.create_model kwargs (YAML)")
    g.add_argument("--boostlu", type=_str2bool, default=False, nargs="?", const=True, help="BoostLU model wrapper")
    g.add_argument("--boostlu-alpha", type=float, default=5.0)
    g = p.add_argument_group("loss")
    g.add_argument("--loss", default="epr", help="registered loss name (spl_losses.list_losses())")
    g.add_argument("--expected-num-pos", type=float, default=None,
                   help="k of EPR/ROLE; default: the benchmark's value, else estimated from clean validation labels")
    for name, typ in LOSS_OPTION_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=f"loss option {name} (when the loss takes it)")
    g.add_argument("--loss-kwargs", default=None, type=yaml.safe_load, help="further loss kwargs (YAML mapping)")
    g.add_argument("--cl", type=_str2bool, default=False, nargs="?", const=True, help="contrastive auxiliary loss")
    g.add_argument("--cl-coef", type=float, default=0.1)
    g.add_argument("--cl-supervised", type=_str2bool, default=False, nargs="?", const=True)
    g = p.add_argument_group("training")
    g.add_argument("--train-mode", default="end_to_end", choices=TRAIN_MODES)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=8, help="global batch size (split over processes)")
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--lr-mult", type=float, default=10.0,
                   help="learning-rate multiplier of the loss's trainable state (ROLE estimator; 10 in the reference)")
    g.add_argument("--head-lr-mult", type=float, default=1.0, help="learning-rate multiplier of the classifier head")
    g.add_argument("--opt", default="adam", choices=("adam", "sgd"))
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--sparse-estimator", type=_str2bool, default=False, nargs="?", const=True,
                   help="linear training only: sparse gradients + SparseAdam for per-example loss state such as "
                        "ROLE's estimator (O(B*C) per step instead of O(N*C); SparseAdam updates only the batch's rows, "
                        "unlike the reference's dense Adam)")
    g.add_argument("--linear-epochs", type=int, default=25, help="linear_init: epochs of the linear phase")
    g.add_argument("--linear-lr", type=float, default=1e-3, help="linear_init: lr of the linear phase")
    g.add_argument("--linear-batch-size", type=int, default=8, help="linear_init: batch size of the linear phase")
    g.add_argument("--linear-phase-dir", default=None,
                   help="linear_init: folder of the linear phase (default OUTPUT_DIR/linear_phase); a finished phase "
                        "with the same settings there is reused (--search shares one across its runs)")
    g.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="output/run")
    g.add_argument("--resume", type=_str2bool, default=False, nargs="?", const=True,
                   help="continue from the last checkpoint in OUTPUT_DIR/checkpoints")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many epochs of this invocation (splits a run; continue with --resume)")
    g.add_argument("--search", type=_str2bool, default=False, nargs="?", const=True,
                   help="run the batch-size x lr grid (search_grid in the config, else SPEC §5's)")
    g.add_argument("--log-with", default=None, help="accelerate tracker, e.g. tensorboard")
    g.add_argument("--no-progress", type=_str2bool, default=False, nargs="?", const=True)
    g.add_argument("--push-to-hub", default=None, help="ORG/NAME: upload the exported model with spl_losses.hub")
    return p


def load_config_file(path: str, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    """Read a YAML config and check that every key is a flag (or a config-only key).

    Args:
        path: YAML file.
        parser: The parser whose flags are the allowed keys (default :func:`build_parser`).

    Returns:
        The mapping.
    """
    parser = parser or build_parser()
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must hold a mapping of flag names to values, got {type(cfg).__name__}")
    known = {a.dest for a in parser._actions} | set(CONFIG_ONLY_KEYS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"config {path} has keys that are not flags: {unknown}; "
                         f"use flag names with underscores (e.g. batch_size)")
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """Parse the command line, applying the YAML config first (timm's ``_parse_args`` convention).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        ``(args, extra)``: the namespace and the config-only keys (``search_grid``).
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default=None)
    known, remaining = config_parser.parse_known_args(argv)
    parser = build_parser()
    extra: Dict[str, Any] = {}
    if known.config:
        cfg = load_config_file(known.config, parser)
        extra = {k: cfg.pop(k) for k in CONFIG_ONLY_KEYS if k in cfg}
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args.config = known.config
    return args, extra
