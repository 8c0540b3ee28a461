"""A run folder: whose it is, its lock, its files (config, metrics, results, plot) and its exported model.

The files of a run folder a person reads: metrics.jsonl, results.json and the validation-mAP plot.

Epochs are numbered from 1 in all of them.

A run folder: whose it is, whether it holds this run, and one process writing it at a time.

Rules (nothing the recipe did not write is ever modified or deleted):

- A new run goes into a missing or empty folder. A folder holding other files and no ``config.yaml``
  is not a run folder of this recipe: refused, naming some of its files.
- A folder with a ``config.yaml`` but no finished epoch (no checkpoint, no ``results.json``: a run that failed
  before training) belongs to nobody: a run of any settings reuses it (``config.yaml`` rewritten,
  ``metrics.jsonl`` emptied).
- A folder whose ``config.yaml`` records another run (other settings) is refused, naming the settings
  that differ. Only ``--epochs`` may grow, with ``--resume``: the run continues from its last
  checkpoint (its results, plot and model rewritten), unless the schedule's horizon is part of the run
  (the caller says why: a learning-rate schedule or a loss that takes the number of epochs). A run is
  never shortened below the epochs it trained. Keys that do not change the result (output dir, resume, logging, ...) are ignored; a
  key missing from an older ``config.yaml`` (a flag added since) counts as its default.
- The same run, finished (``results.json``): :meth:`RunDir.state` says so; the caller reuses it (a
  search or a comparison) or refuses. Unfinished with checkpoints and no ``--resume``: refused, so
  that hours of training are not restarted by a forgotten flag.
- While a run works in its folder it holds an OS file lock on ``run.lock`` (released when the process
  dies, even by ``kill -9``): a second run into the same folder is refused at once.

The exported model of a finished run: ``OUT/model``, loadable by timm alone (or as a LinearProbe).

An image run exports the stock timm model with ``timm.models.save_for_hf`` (safetensors; ``config.json``
records the class names and the training preprocessing, and ``boostlu_alpha`` for a BoostLU run); a
features run exports a :class:`~spl_losses.models.LinearProbe`. The loss state, when the loss has one,
goes beside it as ``loss_state.safetensors``. Only these files are written; nothing else in the folder
is touched.
"""
import contextlib
import json
import math
import os
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import filelock
import timm
import yaml

from ..checkpoints import save_loss_state
from .builders import timm_model_of
from .images import protocol_data_config

__all__ = ["read_jsonl", "MetricsLog", "write_json", "read_json", "plot_val_map", "RunDir", "IDENTITY_IGNORED",
           "LOCK_FILENAME", "RunDirBusyError", "os_file_lock", "export_model"]


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Records of a JSON-lines file ([] when missing).

    A torn last line (a process killed while writing it) is dropped with a warning; a damaged line before
    the last is an error naming the file and the line.

    Args:
        path: File.

    Raises:
        ValueError: a line other than the last is not JSON.
    """
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if position == len(lines) - 1:
                warnings.warn(f"{path}: line {number} is torn (an interrupted write: {err}); it is dropped",
                              stacklevel=2)
                break
            raise ValueError(f"{path}: line {number} is not JSON ({err}); the file is damaged: repair or remove "
                             "the line") from None
    return records


class MetricsLog:
    """Per-epoch metrics as JSON lines (``epoch`` is 1-based), rewritable on resume.

    Args:
        path: The ``metrics.jsonl`` file.
    """

    def __init__(self, path: str):
        self.path = path

    def keep_epochs_up_to(self, epoch: int) -> None:
        """Drop records after ``epoch`` (a resumed run re-logs them; 0 drops everything).

        Args:
            epoch: Last epoch to keep (1-based).
        """
        kept = [r for r in read_jsonl(self.path) if r.get("epoch", epoch + 1) <= epoch]
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record.

        Args:
            record: JSON-able mapping.
        """
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(record)) + "\n")

    def records(self) -> List[Dict[str, Any]]:
        """All records."""
        return read_jsonl(self.path)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON (atomically).

    Args:
        path: File.
        obj: JSON-able object (NaN written as null).
    """
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(clean(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """Read a JSON file.

    Args:
        path: File.
    """
    with open(path) as f:
        return json.load(f)


def plot_val_map(path: str, curves: Mapping[str, Iterable[Mapping[str, Any]]], title: str = "",
                 best: Optional[Mapping[str, int]] = None) -> None:
    """Plot validation mAP per epoch (one line per run) to a PNG, marking each run's best epoch.

    Args:
        path: PNG file.
        curves: Run label -> metric records with ``epoch`` (1-based) and ``val_map``.
        title: Plot title (say which dataset).
        best: Run label -> its best epoch (1-based), marked with a star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4))
    epochs = set()
    for label, records in curves.items():
        records = [r for r in records if r.get("val_map") is not None]
        epochs |= {r["epoch"] for r in records}
        line, = ax.plot([r["epoch"] for r in records], [r["val_map"] for r in records], marker="o", label=label)
        best_epoch = (best or {}).get(label)
        marked = [r for r in records if r["epoch"] == best_epoch]
        if marked:
            ax.plot([best_epoch], [marked[0]["val_map"]], marker="*", markersize=16, color=line.get_color(),
                    linestyle="none")
    if best:
        ax.plot([], [], marker="*", markersize=12, color="gray", linestyle="none", label="best epoch")
    if epochs and max(epochs) - min(epochs) <= 25:  # every epoch a tick: integers only
        ax.set_xticks(range(min(epochs), max(epochs) + 1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP (%)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # beside the curves
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


#: config.yaml keys that do not change what a run computes.
IDENTITY_IGNORED = ("resume", "stop_after", "push_to_hub", "private", "output_dir", "log_with", "workers", "config",
                    "cache_dir", "search", "progress", "linear_phase_dir", "keep_checkpoints", "log_interval",
                    "search_storage", "search_study", "search_sampler", "search_trials", "teacher_cache_dir",
                    "image_cache", "image_cache_dir", "channels_last", "compile", "compile_mode", "debug", "rebuild_dataset",
                    "threads")
LOCK_FILENAME = "run.lock"
_OWN_FILES = (LOCK_FILENAME,)


def os_file_lock(path: str) -> filelock.FileLock:
    """The project's one kind of lock: an OS lock on ``path`` (``filelock``; released when the process dies, even
    by ``kill -9``; the file is kept, so a waiting process never locks a deleted file).

    Args:
        path: The lock file.
    """
    return filelock.FileLock(path, thread_local=False, preserve_lock_file=True)


class RunDirBusyError(ValueError):
    """Another process holds the run folder's lock."""


class RunDir:
    """One run folder (see the module docstring for the rules).

    Args:
        path: The folder.
    """

    #: Locks this process holds: absolute path -> [open lock file, times taken] (the lock is re-entrant).
    _held: Dict[str, list] = {}

    def __init__(self, path: str):
        self.path = str(path)

    def file(self, name: str) -> str:
        """Path of a file of the run.

        Args:
            name: File name, e.g. ``"results.json"``.
        """
        return os.path.join(self.path, name)

    @property
    def finished(self) -> bool:
        return os.path.isfile(self.file("results.json"))

    @property
    def has_checkpoints(self) -> bool:
        folder = self.file("checkpoints")
        return os.path.isdir(folder) and any(name.startswith("epoch_") for name in os.listdir(folder))

    def recorded_config(self) -> Optional[Dict[str, Any]]:
        """The folder's ``config.yaml``, or None."""
        if not os.path.isfile(self.file("config.yaml")):
            return None
        with open(self.file("config.yaml"), encoding="utf-8") as f:
            config = yaml.safe_load(f)
        if not isinstance(config, dict):
            raise ValueError(f"{self.file('config.yaml')} is not a mapping of settings")
        return config

    @property
    def trained_epochs(self) -> int:
        """The newest checkpointed epoch (1-based; 0 when none)."""
        folder = self.file("checkpoints")
        if not os.path.isdir(folder):
            return 0
        epochs = [int(n[len("epoch_"):]) for n in os.listdir(folder)
                  if n.startswith("epoch_") and n[len("epoch_"):].isdigit()]
        return max(epochs, default=0)

    def check(self, config: Mapping[str, Any], defaults: Mapping[str, Any], resume: bool,
              ignored: Sequence[str] = IDENTITY_IGNORED, horizon: Optional[str] = None) -> Optional[str]:
        """Refuse a folder of other files, of another run, or an unfinished run restarted without ``--resume``.

        Args:
            config: This run's resolved settings (what ``config.yaml`` records).
            defaults: Flag defaults (a key missing from an older config.yaml counts as its default).
            resume: Whether ``--resume`` was given.
            ignored: Keys left out of the comparison.
            horizon: Why the number of epochs is part of the run (its schedule or loss depends on it), or None:
                then a run given more epochs with ``--resume`` is extended.

        Returns:
            None; ``"unclaimed"`` for a folder of another run that finished no epoch (reused: its config.yaml
            is rewritten); ``"extend"`` for this run given more epochs (its ``results.json`` is stale:
            :meth:`start_extension` removes it).

        Raises:
            ValueError: naming the folder and what is wrong.
        """
        previous = self.recorded_config()
        if previous is None:
            others = sorted(n for n in os.listdir(self.path) if n not in _OWN_FILES) if os.path.isdir(self.path) else []
            if os.path.exists(self.path) and not os.path.isdir(self.path):
                raise ValueError(f"--output-dir {self.path} is a file, not a folder")
            if others:
                raise ValueError(f"--output-dir {self.path} is not empty and holds no run of recipes/train.py "
                                 f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); choose a new or "
                                 "empty folder: nothing in it is overwritten")
            return
        previous = {**{k: v for k, v in defaults.items() if k in config}, **previous}
        keys = sorted(k for k in set(previous) | set(config) if k not in ignored)
        diff = [k for k in keys if previous.get(k) != config.get(k)]
        if diff and not self.finished and not self.has_checkpoints:
            return "unclaimed"  # it failed before its first epoch: nothing of it is worth keeping
        if diff == ["epochs"]:
            return self._check_extension(previous["epochs"], config["epochs"], resume, horizon)
        if diff:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in diff[:6])
            raise ValueError(f"--output-dir {self.path} holds a different run (config.yaml differs in {details}); "
                             "choose another --output-dir")
        if not resume and not self.finished and self.has_checkpoints:
            raise ValueError(f"--output-dir {self.path} holds an unfinished run of these settings with checkpoints: "
                             "continue it with --resume, or choose another --output-dir")
        return None

    def _check_extension(self, old: Any, new: Any, resume: bool, horizon: Optional[str]) -> str:
        """This run with another ``--epochs``: continue it to ``new`` epochs, or say why not."""
        trained = self.trained_epochs
        where = f"--output-dir {self.path} holds this run with --epochs {old} ({trained} trained)"
        if not isinstance(new, int) or new < trained:
            raise ValueError(f"{where}: --epochs {new} is fewer than the epochs it trained, and a run is not "
                             f"shortened; pass --epochs {old} (with --resume to reuse it), or choose another "
                             "--output-dir")
        if horizon:
            raise ValueError(f"{where}: --epochs {new} cannot extend it, because {horizon}, so a run of {new} epochs "
                             f"differs from the first {trained} epochs of this one; choose another --output-dir")
        if not resume:
            raise ValueError(f"{where}: pass --resume to continue it to epoch {new}, or choose another --output-dir")
        if self.finished:
            stopped = read_json(self.file("results.json")).get("stopped_early")
            if stopped:
                raise ValueError(f"{where}: it stopped early ({stopped}), so more epochs would train none; choose "
                                 "another --output-dir")
        if trained == 0:
            raise ValueError(f"{where}: it has no checkpoint to continue from; choose another --output-dir")
        return "extend"

    def start_extension(self) -> None:
        """A run continued to more epochs is unfinished again: remove its ``results.json`` (rewritten at the end)."""
        if self.finished:
            os.remove(self.file("results.json"))

    def check_writable(self) -> None:
        """Check, before any work and without creating anything, that the folder can be created and written.

        Raises:
            ValueError: naming the folder and the reason.
        """
        path = os.path.abspath(self.path)
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if existing != path and not os.path.isdir(existing):
            raise ValueError(f"--output-dir {self.path} cannot be written: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--output-dir {self.path} cannot be written: no write permission on {existing}")

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.yaml`` (atomically).

        Args:
            config: Plain-data mapping.
        """
        os.makedirs(self.path, exist_ok=True)
        tmp = self.file(f".config.yaml.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(dict(config), f, sort_keys=True)
        os.replace(tmp, self.file("config.yaml"))

    # ------------------------------------------------------------------ the lock
    def acquire(self, wait: bool = False) -> None:
        """Take the folder's OS lock (re-entrant within a process).

        Args:
            wait: Wait for another holder to finish instead of failing.

        Raises:
            RunDirBusyError: another process holds it (``wait=False``).
        """
        key = os.path.abspath(self.path)
        if key in RunDir._held:
            RunDir._held[key][1] += 1
            return
        os.makedirs(self.path, exist_ok=True)
        lock = os_file_lock(self.file(LOCK_FILENAME))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except filelock.Timeout:
            raise RunDirBusyError(f"--output-dir {self.path} is in use by another run (it holds {LOCK_FILENAME}); "
                                  "wait for it or choose another --output-dir") from None
        RunDir._held[key] = [lock, 1]

    def release(self) -> None:
        """Release the lock once (the lock file stays: deleting it would race with a waiting process)."""
        key = os.path.abspath(self.path)
        if key not in RunDir._held:
            return
        RunDir._held[key][1] -= 1
        if RunDir._held[key][1] == 0:
            RunDir._held.pop(key)[0].release()

    @contextlib.contextmanager
    def held(self, accelerator, wait: bool = False):
        """Hold the lock for a (possibly multi-process) run: the main process takes it, every process learns
        whether it could, so all stop together when another run holds it.

        Args:
            accelerator: The ``accelerate.Accelerator``.
            wait: Wait for another holder instead of failing.
        """
        status = [None]
        if accelerator.is_main_process:
            try:
                self.acquire(wait=wait)
            except RunDirBusyError as err:
                status = [str(err)]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            status = broadcast_object_list(status)
        if status[0] is not None:
            raise RunDirBusyError(status[0])
        try:
            yield self
        finally:
            self.release()


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
