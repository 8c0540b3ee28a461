"""The recipe's command line: one table of flags, their value types, argparse and YAML configs read alike.

The value types of the recipe's flags: each converts a command-line string or a YAML value, or refuses it.

A refusal raises ``argparse.ArgumentTypeError`` saying what was expected and what was given; argparse
turns it into its usage error, and a config file's keys are checked with the same functions.

The recipe's command line: one table of flags, read from argparse and from a YAML config alike.

``-c/--config FILE.yaml`` sets the flags' values from the file's keys (flag names with underscores);
flags given on the command line override them (timm's convention). Every value, from the command
line or the file, goes through the same type and range check, so ``epochs: 1.7`` or
``train_mode: end2end`` in a config is refused as ``--epochs 1.7`` would be. Keys that are not flags
are refused, except the config-only keys ``search_grid`` (the grid of ``--search``), ``search_space``
(ranges of a ``--search-sampler tpe`` search) and ``losses`` (several losses to compare, one run each).

Flags are never abbreviated (``--epoch 3`` is refused, not taken as ``--epochs``); an unknown flag or
config key is one error line naming the closest flags (``--bach-size``: ``--batch-size``;
``learning_rate``: ``lr``). YAML is read with :func:`spl_losses.safe_yaml.load_yaml` (aliases bounded).
"""
import argparse
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..safe_yaml import load_yaml
from .builders import ESTIMATOR_OPTIMIZERS, LAZY_ADAM_MIN_ENTRIES, LAZY_ADAM_MIN_ENTRIES_ACCELERATOR
from .cli import COMMON_NAMES, FlagParser, close_names
from .images import COMPILE_MODES

__all__ = ["boolean", "positive_int", "non_negative_int", "positive_float", "non_negative_float", "finite_float",
           "probability", "worker_count", "thread_count", "mapping", "text",
           "Flag", "FLAGS", "FLAG_NAMES", "CONFIG_ONLY_KEYS",
           "TRAIN_MODES", "LOSS_OPTION_FLAGS", "build_parser", "parse_args", "load_config_file", "flag_defaults",
           "loss_options", "DefaultsOnceHelpFormatter", "unknown_keys_message"]


def _fail(expected: str, value: Any):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")


def boolean(value: Any) -> bool:
    """``true/false, yes/no, on/off, 1/0`` (or a YAML bool)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    _fail("a boolean (true/false)", value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        _fail("an integer", value)
    try:
        return int(value)
    except (TypeError, ValueError):
        _fail("an integer", value)


def _real(value: Any) -> float:
    if isinstance(value, bool):
        _fail("a number", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        _fail("a number", value)
    if not math.isfinite(number):
        _fail("a finite number", value)
    return number


def _bounded(convert: Callable[[Any], Any], accept: Callable[[Any], bool], expected: str,
             value_type: type) -> Callable[[Any], Any]:
    """A value type: ``convert``, then refuse what ``accept`` rejects (saying what was ``expected``); its
    ``value_type`` is the Python type of what it returns (the settings' field type)."""
    def check(value: Any) -> Any:
        converted = convert(value)
        return converted if accept(converted) else _fail(expected, value)

    check.__doc__ = f"{expected[0].upper()}{expected[1:]}."
    check.value_type = value_type
    return check


positive_int = _bounded(_integer, lambda n: n > 0, "an integer > 0", int)
non_negative_int = _bounded(_integer, lambda n: n >= 0, "an integer >= 0", int)
positive_float = _bounded(_real, lambda x: x > 0, "a number > 0", float)
non_negative_float = _bounded(_real, lambda x: x >= 0, "a number >= 0", float)
finite_float = _bounded(_real, lambda x: True, "a finite number", float)
probability = _bounded(_real, lambda x: 0.0 <= x <= 1.0, "a number in [0, 1]", float)


def worker_count(value: Any) -> Any:
    """``auto`` or an integer >= 0."""
    if value == "auto":
        return value
    try:
        return non_negative_int(value)
    except argparse.ArgumentTypeError:
        _fail("'auto' or an integer >= 0", value)


worker_count.value_type = Union[str, int]


def thread_count(value: Any) -> Any:
    """``auto`` or an integer > 0."""
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        _fail("'auto' or an integer > 0", value)


thread_count.value_type = Union[str, int]


def mapping(value: Any) -> Dict[str, Any]:
    """A YAML/JSON mapping (``'{num_train: 64}'``) or an already parsed dict (YAML aliases bounded)."""
    if isinstance(value, str):
        try:
            parsed = load_yaml(value, "the value")
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a mapping such as '{{key: value}}': {err}") from None
    else:
        parsed = value
    if parsed is None:
        return {}
    return dict(parsed) if isinstance(parsed, dict) else _fail("a mapping such as '{key: value}'", value)


mapping.value_type = Dict[str, Any]


def text(value: Any) -> str:
    """A non-empty string."""
    return value if isinstance(value, str) and value else _fail("a non-empty string", value)


text.value_type = str


TRAIN_MODES = ("linear_fixed_features", "end_to_end", "linear_init")
#: Keys a YAML config may hold that are not flags.
CONFIG_ONLY_KEYS = ("search_grid", "search_space", "losses")


# ------------------------------------------------------------------------------------------ the flag table
@dataclass(frozen=True)
class Flag:
    """One flag of the recipe: how argparse reads it and how a config value is checked.

    Args:
        name: The long option, e.g. ``"--batch-size"``; the config key is ``batch_size``.
        default: The default value.
        help: Help text (``--help`` adds the default).
        type: Converter and check of one value (raises ``argparse.ArgumentTypeError``).
        choices: Allowed values, if restricted.
        group: ``--help`` section.
        switch: A boolean with a ``--no-`` form: ``--pretrained``, ``--no-pretrained``, ``--pretrained false``.
        repeat: Repeatable (values collected in a list), e.g. ``--dataset-option KEY=VALUE``.
        loss_option: The loss constructor argument this flag sets (loss options are passed only when set).
    """

    name: str
    default: Any
    help: str
    type: Callable[[Any], Any] = text
    choices: Optional[Tuple[Any, ...]] = None
    group: str = "run"
    switch: bool = False
    repeat: bool = False
    loss_option: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")

    @property
    def annotation(self) -> Any:
        """The Python type of the flag's value (its field type in the run's settings)."""
        value = bool if self.switch else getattr(self.type, "value_type", Any)
        if self.repeat:
            value = List[value]
        return Optional[value] if self.default is None else value

    def convert(self, value: Any) -> Any:
        """Check one value (from a config file or a default) and return it converted."""
        if value is None:
            return None
        if self.repeat:  # KEY=VALUE items; a config may give a mapping (values kept exactly, as JSON)
            if isinstance(value, dict):
                value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
            items = value if isinstance(value, (list, tuple)) else [value]
            return [self.type(v) for v in items]
        converted = (boolean if self.switch else self.type)(value)
        if self.choices is not None and converted not in self.choices:
            raise argparse.ArgumentTypeError(f"expected one of {list(self.choices)}, got {value!r}")
        return converted


def _loss_option(name: str, help_text: str, kind=finite_float, argument: Optional[str] = None) -> Flag:
    default = "" if "(default" in help_text else " (default: unset, the loss's own default)"  # said once
    return Flag(name, None, f"loss option ({help_text}){default}", kind, group="loss",
                loss_option=argument or name[2:].replace("-", "_"))


FLAGS: Tuple[Flag, ...] = (
    # data
    Flag("--dataset", None, "registered builder name, folder saved with save_to_disk, Parquet folder or Hub dataset "
         "id (required unless the config sets it)", group="data"),
    Flag("--data-dir", None, "raw data root of a registered builder", group="data"),
    Flag("--dataset-option", [], "builder option KEY=VALUE, value read as YAML (repeatable), e.g. num_train=2000; "
         "a config may give a mapping", group="data", repeat=True),
    Flag("--rebuild-dataset", False, "build the dataset again even where a cached build of the same input files "
         "exists (a reused build is said in the log)", group="data", switch=True),
    Flag("--observed-seed", 1200, "seed of the dataset's single positives", non_negative_int, group="data"),
    Flag("--val-set-variant", "clean", "validate against full labels (clean) or the single positives (observed)",
         choices=("clean", "observed"), group="data"),
    Flag("--image-size", 448, "input side in pixels (images are squashed to a square, no crop)", positive_int,
         group="data"),
    Flag("--workers", "auto", "DataLoader worker processes per training process; auto: on an accelerator the "
         "process's share of its machine's CPUs (CPUs // processes on the machine, 1 to 16), on the CPU 0",
         worker_count, group="data"),
    Flag("--cache-dir", None, "feature cache folder (default: $SPL_LOSSES_CACHE/features or "
         "~/.cache/spl_losses/features)", group="data"),
    Flag("--image-cache", False, "decode and resize each split's images once into a memory-mapped uint8 file "
         "(3 x SIZE x SIZE bytes per image) that later epochs and runs read instead of decoding", group="data",
         switch=True),
    Flag("--image-cache-dir", None, "image cache folder (default: $SPL_LOSSES_CACHE/images or "
         "~/.cache/spl_losses/images)", group="data"),
    # model
    Flag("--model", "resnet50", "a timm model name, or a published checkpoint hf-hub:ORG/NAME / local-dir:PATH "
         "(a model folder of this recipe); with --pretrained its weights are the start (its classes must be the "
         "dataset's)", group="model"),
    Flag("--pretrained", True, "start from pretrained weights", group="model", switch=True),
    Flag("--model-kwargs", {}, "extra timm.create_model arguments (YAML mapping)", mapping, group="model"),
    Flag("--sync-bn", False, "end_to_end on several processes: BatchNorm as SyncBatchNorm (statistics of the whole "
         "global batch, as on one process; CUDA GPUs only). Without it each process normalises with its own share's "
         "statistics (a warning says so)", group="model", switch=True),
    Flag("--boostlu", False, "wrap the model with BoostLU (Kim et al., CVPR 2023)", group="model", switch=True),
    Flag("--boostlu-alpha", 5.0, "BoostLU's boost of the positive class activations", positive_float, group="model"),
    Flag("--channels-last", False, "channels-last memory format for the network and its input batches (faster "
         "convolutions with mixed precision on recent GPUs)", group="model", switch=True),
    Flag("--compile", False, "compile the network's forward with torch.compile (training and prediction; the "
         "first batches take longer)", group="model", switch=True),
    Flag("--compile-mode", "default", "torch.compile mode", choices=COMPILE_MODES, group="model"),
    Flag("--feature-backbone", None, "features datasets: the timm model the 'features' column came from (recorded "
         "with the exported LinearProbe, with its preprocessing)", group="model"),
    Flag("--init-loss-state", "auto", "start the loss state (ROLE estimator, LL-Cp / APL matrices) from SOURCE's "
         "loss_state.safetensors (run dir, model dir, file or hf-hub:ORG/NAME); 'auto': from --model's checkpoint "
         "when it holds a state that fits; 'none': fresh", group="model"),
    # loss
    Flag("--loss", "epr", "registered loss name (spl_losses.list_losses())", group="loss"),
    Flag("--expected-num-pos", None, "k of EPR/ROLE-like losses; unset: the benchmark's value, else the mean number "
         "of positives of the clean validation labels", positive_float, group="loss"),
    _loss_option("--ls-coef", "label smoothing of an_ls/bce_ls", probability),
    _loss_option("--alpha", "EM's entropy weight"),
    _loss_option("--beta", "APL's soft-negative weight (em_apl); vlpl: weight of positive pseudo-labels (default: "
                 "0.7, VLPL's; 1 with --pseudo-label-rule prevalence)", non_negative_float),
    _loss_option("--beta-neg", "vlpl: weight of negative pseudo-labels (default: 1 where the rule gives negatives, "
                 "which then need a weight > 0)", non_negative_float),
    _loss_option("--apl-warmup-epochs", "EM+APL's warm-up epochs before pseudo-labelling", non_negative_int,
                 argument="warmup_epochs"),
    _loss_option("--theta", "APL's share of unknowns pseudo-labelled", probability),
    _loss_option("--delta-rel", "large-loss rate increment", probability),
    _loss_option("--gamma", "focusing exponent of hill/splc", non_negative_float),
    _loss_option("--margin", "logit margin of hill/splc"),
    _loss_option("--tau", "SPLC's correction threshold", probability),
    _loss_option("--lamb", "Hill's lambda"),
    _loss_option("--change-epoch", "SPLC's first correcting epoch (0-based)", non_negative_int),
    Flag("--loss-kwargs", {}, "further loss constructor arguments (YAML mapping)", mapping, group="loss"),
    Flag("--teacher", None, "pseudo-labels for vlpl/gpr from a teacher: clip:MODEL[@TAG] (open_clip, hf-hub: or "
         "local-dir:), model:CHECKPOINT (an earlier run), scores:PATH (an (N, C) array of scores in [0, 1] of the "
         "training split: .npy, .safetensors or Parquet keyed by index) or knn (label propagation over the features)",
         group="teacher"),
    Flag("--teacher-kwargs", {}, "teacher options (YAML mapping): temperature, grid, gate, fusion, templates, "
         "num_neighbors, device, ...", mapping, group="teacher"),
    Flag("--pseudo-label-rule", "threshold", "how teacher scores become pseudo-labels",
         choices=("threshold", "topk", "prevalence", "soft"), group="teacher"),
    Flag("--pseudo-label-kwargs", {}, "rule options (YAML mapping): threshold, k, negative_fraction, "
         "expected_num_pos, ...", mapping, group="teacher"),
    Flag("--teacher-cache-dir", None, "teacher score cache (default: $SPL_LOSSES_CACHE/teacher_scores or "
         "~/.cache/spl_losses/teacher_scores)",
         group="teacher"),
    Flag("--cl", False, "add the contrastive auxiliary loss (NT-Xent over two views)", group="loss", switch=True),
    Flag("--cl-coef", 0.1, "weight of the contrastive term", non_negative_float, group="loss"),
    Flag("--cl-supervised", False, "contrastive positives also share an observed class", group="loss", switch=True),
    # optimisation
    Flag("--train-mode", "end_to_end", "linear_fixed_features (a linear head on cached features), end_to_end, or "
         "linear_init (the linear mode, then fine-tuning with the loss state handed over)", choices=TRAIN_MODES,
         group="training"),
    Flag("--epochs", 10, "training epochs", positive_int, group="training"),
    Flag("--batch-size", 8, "global batch size (split over processes)", positive_int, group="training"),
    Flag("--lr", 1e-5, "learning rate", positive_float, group="training"),
    Flag("--opt", "adam", "optimizer name of timm.optim.create_optimizer_v2 (adam, adamw, sgd, ...)",
         group="training"),
    Flag("--momentum", 0.9, "SGD momentum", non_negative_float, group="training"),
    Flag("--weight-decay", 0.0, "weight decay", non_negative_float, group="training"),
    Flag("--lr-mult", 10.0, "learning-rate multiplier of the loss's trainable state (ROLE's estimator: 10)",
         positive_float, group="training"),
    Flag("--head-lr-mult", 1.0, "learning-rate multiplier of the classifier head", positive_float, group="training"),
    Flag("--sched", "none", "learning-rate schedule of timm.scheduler ('none': constant, as the protocol)",
         choices=("none", "cosine", "step", "multistep", "poly", "tanh"), group="training"),
    Flag("--warmup-epochs", 0, "learning-rate warm-up epochs (linear from --warmup-lr)", non_negative_int,
         group="training"),
    Flag("--warmup-lr", 1e-6, "learning rate at the start of the warm-up", positive_float, group="training"),
    Flag("--min-lr", 0.0, "lowest learning rate of cosine/poly/tanh schedules", non_negative_float, group="training"),
    Flag("--decay-epochs", 30, "step schedule: epochs between decays", positive_int, group="training"),
    Flag("--decay-rate", 0.1, "step schedules: learning-rate factor per decay", positive_float, group="training"),
    Flag("--clip-grad", None, "clip the gradient norm to this value", positive_float, group="training"),
    Flag("--grad-accum-steps", 1, "batches accumulated per optimizer step", positive_int, group="training"),
    Flag("--early-stop-patience", None, "stop after this many epochs without a better validation mAP",
         positive_int, group="training"),
    Flag("--early-stop-max-drop", None, "stop when validation mAP falls more than this many points below the best",
         positive_float, group="training"),
    Flag("--estimator-optimizer", "auto", "optimizer of a label estimator (role, label_estimation): lazy_adam "
         "(sparse gradients and LazyAdam: the reference's Adam, to float tolerance, at O(B*C) per step; with several "
         "processes only the batch's rows are exchanged), adam (a dense group of --opt's optimizer, as the reference: "
         "O(N*C) per step), sparse_adam (torch's SparseAdam, another optimizer: a row's moments decay only when it is "
         f"read); auto: lazy_adam from N*C = {LAZY_ADAM_MIN_ENTRIES:,} entries on "
         f"({LAZY_ADAM_MIN_ENTRIES_ACCELERATOR:,} on a GPU) with --opt adam and no weight decay, else adam", choices=ESTIMATOR_OPTIMIZERS, group="training"),
    Flag("--linear-epochs", 25, "linear_init: epochs of the linear phase", positive_int, group="training"),
    Flag("--linear-lr", 1e-3, "linear_init: learning rate of the linear phase", positive_float, group="training"),
    Flag("--linear-batch-size", 8, "linear_init: batch size of the linear phase", positive_int, group="training"),
    Flag("--linear-phase-dir", None, "linear_init: folder of the linear phase (default: OUTPUT_DIR/linear_phase); "
         "a finished phase with the same settings there is reused", group="training"),
    Flag("--mixed-precision", "no", "mixed precision of accelerate", choices=("no", "fp16", "bf16"),
         group="training"),
    Flag("--seed", 0, "seed of initialisation, data order and flips", non_negative_int, group="training"),
    Flag("--threads", "auto", "CPU threads of each process (torch.set_num_threads), set the same way under python "
         "and accelerate launch; auto: OMP_NUM_THREADS when set (accelerate launch sets 1), else torch's default "
         "divided by the processes on this machine. Recorded in results.json (num_threads), not part of the run's "
         "identity: float results can differ in the last digits across thread counts", thread_count,
         group="training"),
    # run
    Flag("--output-dir", "output/run", "run folder (config.yaml, metrics, results, model/, checkpoints/)"),
    Flag("--resume", False, "continue from the last checkpoint in OUTPUT_DIR/checkpoints", switch=True),
    Flag("--stop-after", None, "stop after this many epochs of this invocation (continue with --resume)",
         positive_int),
    Flag("--keep-checkpoints", 2, "checkpoints kept (the newest; the best epoch's weights are kept besides)",
         positive_int),
    Flag("--search", False, "run a hyperparameter search into OUTPUT_DIR (search_grid of the config, else batch size "
         "{8, 16} x lr {1e-2, 1e-3, 1e-4, 1e-5}); start the same command again, anywhere, to add workers",
         switch=True),
    Flag("--search-storage", None, "the shared Optuna study: an SQLAlchemy URL (postgresql://..., mysql://...) or "
         "journal:PATH (a journal file on a shared file system) (default: sqlite:///OUTPUT_DIR/search.db)"),
    Flag("--search-study", "search", "name of the study in the storage"),
    Flag("--search-sampler", "grid", "grid (every point of search_grid once) or tpe (search_space of the config)",
         choices=("grid", "tpe")),
    Flag("--search-trials", None, "points of a tpe search", positive_int),
    Flag("--search-group-size", None, "linear_fixed_features grid searches on one process: the most waiting points "
         "of one batch size a worker trains together in one data pass (default: all of them; 1: one at a time, "
         "which spreads the points over more workers)", positive_int),
    Flag("--log-with", None, "accelerate tracker (tensorboard, wandb, mlflow, ...)"),
    Flag("--log-interval", 50, "optimizer steps between the training loss and learning rate sent to the tracker",
         positive_int),
    Flag("--progress", True, "show progress bars", switch=True),
    Flag("--push-to-hub", None, "ORG/NAME: upload the exported model with its model card"),
    Flag("--private", False, "create the Hub repository as private", switch=True),
    Flag("--debug", False, "show tracebacks of errors", switch=True),
)

FLAG_NAMES = tuple(flag.dest for flag in FLAGS)
_BY_DEST = {flag.dest: flag for flag in FLAGS}
#: Loss-option flags: dest -> the loss constructor argument they set.
LOSS_OPTION_FLAGS: Dict[str, str] = {flag.dest: flag.loss_option for flag in FLAGS if flag.loss_option}


class _SwitchAction(argparse.Action):
    """``--x`` (True), ``--x VALUE`` (true/false) and ``--no-x`` (False)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, True if values is None else boolean(values))


class DefaultsOnceHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` that adds ``(default: ...)`` only to help that does not say its default.

    Help such as "feature cache folder (default: $SPL_LOSSES_CACHE/features)" already states it in words
    (better than argparse's ``None``); the stock formatter would append a second ``(default: None)``.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The recipe's argument parser: every flag of :data:`FLAGS`, with its help and default.

    No abbreviations; errors are one line, an unknown flag named with the closest flags
    (:class:`~spl_losses.training.cli.FlagParser`).

    Returns:
        An ``argparse.ArgumentParser``.
    """
    parser = FlagParser(
        description="Train a timm model with a single-positive multi-label loss (Cole et al., CVPR 2021 protocol).",
        formatter_class=DefaultsOnceHelpFormatter, flag_aliases=COMMON_NAMES)
    parser.add_argument("-c", "--config", default=None, help="YAML file whose keys are flag names (underscores)")
    groups = {}
    for flag in FLAGS:
        group = groups.get(flag.group) or groups.setdefault(flag.group, parser.add_argument_group(flag.group))
        if flag.switch:
            group.add_argument(flag.name, "--no-" + flag.name[2:], dest=flag.dest, default=flag.default, nargs="?",
                               action=_SwitchAction, metavar="BOOL", help=flag.help)
        elif flag.repeat:
            group.add_argument(flag.name, dest=flag.dest, default=list(flag.default), action="append",
                               type=flag.type, metavar="KEY=VALUE", help=flag.help)
        else:
            group.add_argument(flag.name, dest=flag.dest, default=flag.default, type=flag.type, choices=flag.choices,
                               help=flag.help)
    return parser


def flag_defaults() -> Dict[str, Any]:
    """Every flag's default, by config key."""
    return {flag.dest: flag.default for flag in FLAGS}


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML config: every key must be a flag (or config-only), every value pass the flag's check.

    Args:
        path: YAML file.

    Returns:
        The checked, converted mapping (config-only keys included, unconverted).

    Raises:
        ValueError: naming the file, the key and what was expected.
    """
    try:
        with open(path, encoding="utf-8") as f:
            config = load_yaml(f, f"config {path}") or {}
    except OSError as err:
        raise ValueError(f"cannot read config {path}: {err.strerror or err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config {path} must hold a mapping of flag names to values, got {type(config).__name__}")
    unknown = sorted(str(k) for k in config if k not in _BY_DEST and k not in CONFIG_ONLY_KEYS)
    if unknown:
        raise ValueError(f"config {path} has keys that are not flags: {unknown_keys_message(unknown)}; use flag "
                         f"names with underscores (e.g. batch_size)")
    checked = {}
    for key, value in config.items():
        if key in CONFIG_ONLY_KEYS:
            checked[key] = value
            continue
        try:
            checked[key] = _BY_DEST[key].convert(value)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"config {path}: {key}: {err}") from None
    if "losses" in checked:
        losses = checked["losses"]
        if isinstance(losses, str) or not isinstance(losses, list) or not losses \
                or not all(isinstance(n, str) for n in losses):
            raise ValueError(f"config {path}: losses must be a non-empty list of loss names, got {losses!r}")
    return checked


def unknown_keys_message(keys: Sequence[str]) -> str:
    """``"learning_rate (did you mean lr?), bach_size (did you mean batch_size?)"``: each key with the closest
    flags (config-key form) or config-only keys.

    Args:
        keys: The config keys that are not flags.
    """
    names = list(FLAG_NAMES) + list(CONFIG_ONLY_KEYS)
    parts = []
    for key in keys:
        suggestions = close_names(key, names, COMMON_NAMES)
        parts.append(f"{key} (did you mean {' or '.join(suggestions)}?)" if suggestions else key)
    return ", ".join(parts)


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """Parse the command line, applying the YAML config first (timm's ``_parse_args`` convention).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        ``(args, extra)``: the namespace (``args.config`` is the config path) and the config-only keys.
    """
    config_parser = FlagParser(add_help=False)
    config_parser.add_argument("-c", "--config", default=None)
    known, remaining = config_parser.parse_known_args(argv)
    parser = build_parser()
    extra: Dict[str, Any] = {}
    if known.config:
        config = load_config_file(known.config)
        extra = {k: config.pop(k) for k in CONFIG_ONLY_KEYS if k in config}
        parser.set_defaults(**config)
    args = parser.parse_args(remaining)
    args.config = known.config
    return args, extra


def loss_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The loss constructor arguments set by loss-option flags and ``--loss-kwargs``.

    Args:
        args: Parsed arguments.
    """
    options = {argument: getattr(args, dest) for dest, argument in LOSS_OPTION_FLAGS.items()
               if getattr(args, dest) is not None}
    options.update(args.loss_kwargs or {})
    return options
