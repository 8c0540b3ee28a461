"""One phase's per-epoch bookkeeping: validation, best epoch, early stopping, checkpoints, results.

Best-epoch bookkeeping and early stopping, decided on the validation mAP.

Epochs are counted from 1 here, as the papers and every file a person reads do. The state is plain
JSON (saved in the recipe's checkpoints, never pickled).

Checkpoints of a training phase: accelerate's ``save_state`` / ``load_state`` plus JSON bookkeeping.

``OUT/checkpoints/epoch_003/`` (1-based) holds what ``accelerator.save_state(safe_serialization=True)``
writes for the prepared objects (``model.safetensors`` with the model and the loss's state once,
``optimizer.bin``, the RNG states; accelerate reads these back with ``torch.load(weights_only=True)``,
which refuses pickled code) and ``recipe_state.json``: epochs done, the best epoch, the dataset's
fingerprints and the name of the best epoch's weights file. ``recipe_state.json`` is written last and
atomically: a folder without it is an interrupted save and is never read. It lists every file of the
checkpoint with its SHA-256: a checkpoint whose files changed, or gained or lost one of accelerate's, is
refused before anything is loaded (other files, a user's notes, are neither read nor deleted). Nothing goes through ``register_for_checkpointing`` (accelerate unpickles those
without restriction).

The best epoch's weights are one safetensors file, ``OUT/checkpoints/best_epoch_002.safetensors``.
Rotation keeps the newest ``keep`` checkpoints and the best-weights file they name. It deletes only
files this module or accelerate wrote, in folders this module created (they carry a
``.spl_losses_checkpoint`` marker); a folder still holding anything else is left in place.

The bookkeeping of one training phase: resume, per-epoch validation, best epoch, stopping, logs, results.

A phase is validated after every epoch (1-based); the best epoch by validation mAP is kept (its
weights in one file), early stopping is decided on the gathered validation mAP (the same on every
process), each epoch is logged to ``metrics.jsonl`` and the trackers, then checkpointed. At the end the
best epoch's weights are restored and test is scored with them.
"""
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..metrics import compute_metrics
from .run_dir import MetricsLog

__all__ = ["BestEpochTracker", "EarlyStopping", "PhaseCheckpoints", "STATE_FILENAME", "PhaseBook", "PhaseOutcome",
           "TrainingDiverged", "NON_FINITE_HINT"]

#: What to try when training turns non-finite.
NON_FINITE_HINT = "lower --lr, or clip the gradient norm with --clip-grad (e.g. --clip-grad 1.0)"


class TrainingDiverged(ValueError):
    """Runs whose training turned non-finite (NaN or inf) before any epoch with finite values.

    Args:
        failures: Run index (in the ``run`` call's order) -> the reason, naming the epoch and the hints.
        results: Each run's results (those of the runs that finished), as ``run`` returns them.
    """

    def __init__(self, failures: Mapping[int, str], results=None):
        self.failures = dict(failures)
        self.results = results
        super().__init__("; ".join(self.failures.values()))


class BestEpochTracker:
    """Remembers the epochs done and the best epoch by validation mAP (first best wins ties; NaN never wins).

    Args:
        None.
    """

    def __init__(self):
        self.epochs_done = 0
        self.best_epoch: Optional[int] = None
        self.best_val_map = -math.inf

    def update(self, epoch: int, val_map: float) -> bool:
        """Record a finished epoch; return whether it is the new best.

        Args:
            epoch: The epoch just finished, 1-based.
            val_map: Its validation mAP.
        """
        self.epochs_done = int(epoch)
        if val_map == val_map and val_map > self.best_val_map:
            self.best_val_map = float(val_map)
            self.best_epoch = int(epoch)
            return True
        return False

    def state_dict(self) -> Dict[str, Any]:
        """JSON-able state."""
        best = self.best_val_map if math.isfinite(self.best_val_map) else None
        return {"epochs_done": self.epochs_done, "best_epoch": self.best_epoch, "best_val_map": best}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Args:
            state: The saved state.
        """
        self.epochs_done = int(state["epochs_done"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.best_val_map = -math.inf if state["best_val_map"] is None else float(state["best_val_map"])


class EarlyStopping:
    """Stop when validation mAP has not improved for ``patience`` epochs, or fell ``max_drop`` points below
    the best (the rules of the EM / APL loop of Zhou et al. and of the large-loss loop of Kim et al.).

    Args:
        patience: Epochs without a new best after which to stop (None: no limit). EM's loop stops at the
            first epoch that does not improve: ``patience=1``.
        max_drop: Stop when the epoch's mAP is more than this many points below the best (None: no limit).
    """

    def __init__(self, patience: Optional[int] = None, max_drop: Optional[float] = None):
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be an int >= 1 or None, got {patience!r}")
        if max_drop is not None and not (isinstance(max_drop, (int, float)) and max_drop > 0):
            raise ValueError(f"max_drop must be a number > 0 or None, got {max_drop!r}")
        self.patience = patience
        self.max_drop = max_drop

    @property
    def enabled(self) -> bool:
        return self.patience is not None or self.max_drop is not None

    def should_stop(self, tracker: BestEpochTracker, val_map: float) -> Optional[str]:
        """Why to stop after the epoch just recorded in ``tracker``, or None to go on.

        Args:
            tracker: The best-epoch tracker, already updated with this epoch.
            val_map: This epoch's validation mAP.
        """
        if tracker.best_epoch is None:
            return None
        waited = tracker.epochs_done - tracker.best_epoch
        if self.patience is not None and waited >= self.patience:
            return f"no better validation mAP for {waited} epoch(s) (patience {self.patience})"
        if self.max_drop is not None and val_map == val_map and tracker.best_val_map - val_map > self.max_drop:
            return (f"validation mAP {val_map:.2f} is {tracker.best_val_map - val_map:.2f} points below the best "
                    f"(max drop {self.max_drop})")
        return None


STATE_FILENAME = "recipe_state.json"
_MARKER = ".spl_losses_checkpoint"
_PREFIX = "epoch_"
_BEST_PREFIX = "best_epoch_"
FORMAT_VERSION = 1
#: The names of the files ``accelerator.save_state`` writes.
_ACCELERATE_FILE = re.compile(r"^(model(_\d+)?\.safetensors|pytorch_model(_\d+)?\.bin|(optimizer|scheduler|sampler|"
                              r"dl_state_dict)(_\d+)?\.bin|random_states_\d+\.pkl|scaler\.pt|custom_checkpoint_\d+\.pkl)$")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


class PhaseCheckpoints:
    """Save, find, check and load the checkpoints of one phase in ``run_dir/checkpoints``.

    Args:
        accelerator: The ``accelerate.Accelerator`` whose prepared objects are saved.
        run_dir: The phase's run folder.
        fingerprints: The dataset's split fingerprints (recorded; checked on load).
        keep: Checkpoints kept (the newest).
    """

    def __init__(self, accelerator, run_dir: str, fingerprints: Mapping[str, str], keep: int = 2):
        self.accelerator = accelerator
        self.root = os.path.join(run_dir, "checkpoints")
        self.fingerprints = dict(fingerprints)
        self.keep = int(keep)
        self.best_weights: Optional[str] = None  # file name of the best epoch's weights, on every process

    def _own(self, name: str) -> bool:
        return name.startswith(_PREFIX) and os.path.isfile(os.path.join(self.root, name, _MARKER))

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint folder, or None."""
        if not os.path.isdir(self.root):
            return None
        done = sorted(n for n in os.listdir(self.root)
                      if self._own(n) and os.path.isfile(os.path.join(self.root, n, STATE_FILENAME)))
        return os.path.join(self.root, done[-1]) if done else None

    def save(self, epoch: int, state: Dict[str, Any], module: nn.Module, is_best: bool) -> Dict[str, Any]:
        """Checkpoint the end of ``epoch`` (1-based).

        Args:
            epoch: The epoch just finished.
            state: JSON-able bookkeeping (tracker state, ...); the dataset fingerprints are added.
            module: The unwrapped module whose tensors are the best weights when ``is_best``.
            is_best: Whether this epoch is the best so far (the same on every process).

        Returns:
            The checkpoint's bookkeeping, as :meth:`load` returns it.
        """
        acc = self.accelerator
        folder = os.path.join(self.root, f"{_PREFIX}{epoch:03d}")
        if is_best:
            self.best_weights = f"{_BEST_PREFIX}{epoch:03d}.safetensors"
        record = {**state, "format": FORMAT_VERSION, "epoch": epoch, "fingerprints": self.fingerprints,
                  "best_weights": self.best_weights}
        if acc.is_main_process:
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, _MARKER), "w").close()
        acc.wait_for_everyone()
        acc.save_state(folder, safe_serialization=True)
        acc.wait_for_everyone()  # every process's files (RNG states) are written
        if acc.is_main_process:
            record["files"] = {name: _sha256(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                               if _ACCELERATE_FILE.match(name)}
            if is_best:
                tmp = os.path.join(self.root, f".{self.best_weights}.tmp")
                save_file(_tensor_state(module), tmp)
                os.replace(tmp, os.path.join(self.root, self.best_weights))
            record["best_weights_sha256"] = _sha256(os.path.join(self.root, self.best_weights)) \
                if self.best_weights else None
            tmp = os.path.join(folder, f".{STATE_FILENAME}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
            os.replace(tmp, os.path.join(folder, STATE_FILENAME))
            self._rotate()
        acc.wait_for_everyone()
        return record

    def _rotate(self) -> None:
        names = sorted(n for n in os.listdir(self.root) if self._own(n))
        complete = [n for n in names if os.path.isfile(os.path.join(self.root, n, STATE_FILENAME))]
        kept = set(complete[-self.keep:])
        for name in names:
            if name not in kept:
                self._remove(os.path.join(self.root, name))
        needed = {self.read_state(os.path.join(self.root, n)).get("best_weights") for n in kept}
        for name in os.listdir(self.root):
            if name.startswith(_BEST_PREFIX) and name.endswith(".safetensors") and name not in needed:
                os.remove(os.path.join(self.root, name))

    @staticmethod
    def _remove(folder: str) -> None:
        """Delete a checkpoint folder's own files (those its manifest lists, or accelerate's names in an
        interrupted save), then the folder if nothing else is left in it."""
        listed = None
        if os.path.isfile(os.path.join(folder, STATE_FILENAME)):
            try:
                with open(os.path.join(folder, STATE_FILENAME), encoding="utf-8") as f:
                    listed = set(json.load(f).get("files", {}))
            except (OSError, ValueError, AttributeError):
                listed = None
        for name in os.listdir(folder):
            ours = name in listed if listed is not None else bool(_ACCELERATE_FILE.match(name))
            if ours or name in (_MARKER, STATE_FILENAME) or name.startswith(f".{STATE_FILENAME}"):
                os.remove(os.path.join(folder, name))
        if not os.listdir(folder):
            os.rmdir(folder)

    def read_state(self, folder: str) -> Dict[str, Any]:
        """The bookkeeping of a checkpoint folder, checked.

        Args:
            folder: A checkpoint folder.

        Raises:
            ValueError: unreadable, of another format, or of another dataset (naming the split).
        """
        path = os.path.join(folder, STATE_FILENAME)
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read checkpoint state {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a checkpoint of this version of recipes/train.py")
        return state

    def load(self, folder: str) -> Dict[str, Any]:
        """Restore the prepared objects from ``folder`` and return its bookkeeping.

        Args:
            folder: A checkpoint folder (see :meth:`latest`).

        Raises:
            ValueError: the dataset changed since the checkpoint (its split fingerprints differ).
        """
        state = self.read_state(folder)
        self._verify_files(folder, state)
        saved = state.get("fingerprints") or {}
        changed = sorted(s for s in set(saved) | set(self.fingerprints) if saved.get(s) != self.fingerprints.get(s))
        if changed:
            raise ValueError(f"cannot resume from {folder}: the dataset changed since it was saved (split(s) "
                             f"{changed} differ); resume with the same data, or start a new --output-dir")
        best = state.get("best_weights")
        if best and (not os.path.isfile(os.path.join(self.root, best))
                     or _sha256(os.path.join(self.root, best)) != state.get("best_weights_sha256")):
            raise ValueError(f"cannot resume from {folder}: the best epoch's weights {best} are missing or not those "
                             "saved; nothing was loaded")
        self.accelerator.load_state(folder)
        self.best_weights = best
        return state

    @staticmethod
    def _verify_files(folder: str, state: Dict[str, Any]) -> None:
        """Refuse a checkpoint whose files are not exactly those saved (a file changed, added or missing)."""
        listed = state.get("files")
        if not isinstance(listed, dict):
            raise ValueError(f"{folder}/{STATE_FILENAME} lists no files: not a complete checkpoint")
        present = {n for n in os.listdir(folder) if _ACCELERATE_FILE.match(n)}
        extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
        changed = sorted(n for n in set(listed) & present if _sha256(os.path.join(folder, n)) != listed[n])
        if extra or missing or changed:
            raise ValueError(f"cannot resume from {folder}: its files are not those it was saved with (changed: "
                             f"{changed}, added: {extra}, missing: {missing}); nothing was loaded")

    def load_best(self, module: nn.Module) -> None:
        """Load the best epoch's weights into ``module`` (all keys must match).

        Args:
            module: The unwrapped module.
        """
        if self.best_weights:
            module.load_state_dict(load_file(os.path.join(self.root, self.best_weights)), strict=True)


@dataclass
class PhaseOutcome:
    """What a phase leaves: its results (None when it stopped before its last epoch: resume it) and, at the
    best epoch, the trained network and loss.

    Args:
        results: The phase's results (best epoch, validation and test metrics), or None.
        loss: The loss, with its state at the best epoch (CPU).
        model: The network (a timm model, or BoostLU around one), or None for a features dataset.
        head: The linear head of a linear phase, else None.
        in_features: The head's input size (linear phase).
        failure: Why the phase failed (training turned non-finite before any good epoch), else None.
    """

    results: Optional[Dict[str, Any]]
    loss: Optional[nn.Module] = None
    model: Optional[nn.Module] = None
    head: Optional[nn.Linear] = None
    in_features: Optional[int] = None
    failure: Optional[str] = None

    @property
    def finished(self) -> bool:
        """Whether the phase trained all its epochs (or stopped early)."""
        return self.results is not None


class PhaseBook:
    """Per-epoch bookkeeping of one phase (see the module docstring).

    Args:
        accelerator: The ``accelerate.Accelerator``.
        settings: The run's settings (stopping rules, ``stop_after``, ``keep_checkpoints``, trackers).
        phase: The :class:`~spl_losses.training.settings.PhaseSettings`.
        fingerprints: The dataset's split fingerprints (checked on resume).
        module: The unwrapped module whose weights are the phase's (model or head, and the loss).
        checkpoint_accelerator: The ``Accelerator`` whose prepared objects a checkpoint saves (default
            ``accelerator``; each head of a linear loop has its own, so its checkpoints hold its objects only).
    """

    def __init__(self, accelerator, settings, phase, fingerprints, module: nn.Module, checkpoint_accelerator=None):
        self.accelerator, self.settings, self.phase, self.module = accelerator, settings, phase, module
        self.tracker = BestEpochTracker()
        self.stopping = EarlyStopping(settings.early_stop_patience, settings.early_stop_max_drop)
        self.log = MetricsLog(os.path.join(phase.output_dir, "metrics.jsonl"))
        self.checkpoints = PhaseCheckpoints(checkpoint_accelerator or accelerator, phase.output_dir, fingerprints,
                                            settings.keep_checkpoints)
        #: The checkpoint this phase continues from (``--resume`` and one exists), else None: known from the
        #: start, so the loss state's origin can be decided before anything is prepared.
        self.resume_from: Optional[str] = self.checkpoints.latest() if phase.resume else None
        self.epochs_done = 0
        self.stop_reason: Optional[str] = None
        self.failure: Optional[str] = None  # non-finite before any good epoch: nothing to export
        self.non_finite_epoch: Optional[int] = None
        self._epochs_this_call = 0
        self._state: Dict[str, Any] = {}
        self._started = time.perf_counter()

    def begin(self) -> None:
        """Start fresh, or restore :attr:`resume_from` (the prepared objects' states, best epoch, epochs done).

        Raises:
            RuntimeError: called with a checkpoint to restore before the phase's model was prepared (accelerate
                restores prepared objects only).
        """
        acc, checkpoint = self.accelerator, self.resume_from
        if checkpoint is not None and not self.checkpoints.accelerator._models:
            raise RuntimeError(f"[{self.phase.name}] prepare the phase's model and optimizers before begin(): "
                               f"{checkpoint} restores prepared objects")
        if checkpoint is not None:
            self._state = self.checkpoints.load(checkpoint)
            self.tracker.load_state_dict(self._state["tracker"])
            self.epochs_done = self.tracker.epochs_done
            self.stop_reason = self._state.get("stop_reason")
            self.non_finite_epoch = self._state.get("non_finite_epoch")
            acc.print(f"[{self.phase.name}] resumed from {checkpoint} after epoch {self.epochs_done}")
        if acc.is_main_process:  # a resumed run re-logs the epochs after its checkpoint
            os.makedirs(self.phase.output_dir, exist_ok=True)
            self.log.keep_epochs_up_to(self.epochs_done)
        acc.wait_for_everyone()

    @property
    def epochs_to_run(self) -> range:
        """The 1-based epochs still to train (none after an early stop)."""
        return range(self.epochs_done + 1, self.phase.epochs + 1) if self.stop_reason is None else range(0)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """Send a training step's loss and learning rate to the trackers.

        Args:
            step: Global optimizer step.
            loss: The step's loss.
            lr: The base learning rate.
        """
        if self.settings.log_with and self.phase.name == "main":
            self.accelerator.log({"train/loss": loss, "train/lr": lr}, step=step)

    def end_epoch(self, epoch: int, train_loss: float, val_scores: torch.Tensor, val_labels: torch.Tensor,
                  seconds: float) -> bool:
        """Score validation, keep the best, decide on stopping, log and checkpoint.

        Args:
            epoch: The epoch just finished (1-based).
            train_loss: Its mean training loss.
            val_scores: (N_val, C) validation logits (identical on every process).
            val_labels: The validation labels (full or observed).
            seconds: Its duration.

        Returns:
            Whether to train another epoch in this invocation.
        """
        acc = self.accelerator
        if not (math.isfinite(float(train_loss)) and bool(torch.isfinite(val_scores).all())):
            return self._non_finite(epoch, float(train_loss), val_scores, seconds)
        metrics = compute_metrics(val_scores, val_labels, ks=(), threshold=None)
        val_map = metrics["map"]
        is_best = self.tracker.update(epoch, val_map)
        self.epochs_done = epoch
        self.stop_reason = self.stopping.should_stop(self.tracker, val_map)
        record = {"epoch": epoch, "train_loss": train_loss, "val_map": val_map,
                  "val_map_skip_empty": metrics["map_skip_empty"], "best_epoch": self.tracker.best_epoch,
                  "seconds": round(seconds, 3)}
        if acc.is_main_process:  # logged first: a resumed run drops records past its checkpoint
            self.log.append(record)
        self._state = self.checkpoints.save(epoch, {"tracker": self.tracker.state_dict(),
                                                    "stop_reason": self.stop_reason}, self.module, is_best)
        if self.settings.log_with and self.phase.name == "main":
            acc.log({f"val/{k}" if k != "epoch" else k: v for k, v in record.items()
                     if isinstance(v, (int, float)) and math.isfinite(v)}, step=None)
        acc.print(f"[{self.phase.name}] epoch {epoch}/{self.phase.epochs}: train loss {train_loss:.4f}  "
                  f"val mAP {val_map:.2f}  (best epoch {self.tracker.best_epoch})")
        if self.stop_reason:
            acc.print(f"[{self.phase.name}] early stop after epoch {epoch}: {self.stop_reason}")
            return False
        self._epochs_this_call += 1
        return self.settings.stop_after is None or self._epochs_this_call < self.settings.stop_after

    def _non_finite(self, epoch: int, train_loss: float, val_scores: torch.Tensor, seconds: float) -> bool:
        """Stop the phase at an epoch whose training loss or validation scores are NaN or inf: the best finite epoch
        is kept (restored and exported as usual, ``stopped_early`` saying why); without one the phase fails."""
        acc = self.accelerator
        what = (f"the training loss is {train_loss}" if not math.isfinite(train_loss) else
                f"{int((~torch.isfinite(val_scores)).sum())} validation score(s) are NaN or inf")
        best = self.tracker.best_epoch
        self.tracker.epochs_done = self.epochs_done = self.non_finite_epoch = int(epoch)
        if best is None:
            self.failure = (f"[{self.phase.name}] training diverged at epoch {epoch} of {self.phase.output_dir} "
                            f"(lr {self.phase.lr}): {what}, and no earlier epoch had finite values; {NON_FINITE_HINT}")
            self.stop_reason = self.failure
        else:
            self.stop_reason = (f"non-finite values at epoch {epoch} ({what}): training stopped early; the last "
                                f"good epoch is {epoch - 1}, the best {best} (val mAP {self.tracker.best_val_map:.2f}) "
                                f"is kept; to train further, {NON_FINITE_HINT}")
        record = {"epoch": epoch, "train_loss": train_loss if math.isfinite(train_loss) else None, "val_map": None,
                  "val_map_skip_empty": None, "best_epoch": best, "seconds": round(seconds, 3),
                  "non_finite": what}
        if acc.is_main_process:
            self.log.append(record)
        if best is not None:  # the stop is checkpointed (a resume finishes it); the best weights are those saved
            self._state = self.checkpoints.save(epoch, {"tracker": self.tracker.state_dict(),
                                                        "stop_reason": self.stop_reason,
                                                        "non_finite_epoch": epoch}, self.module, False)
        acc.print(f"[{self.phase.name}] {self.failure or self.stop_reason}")
        return False

    @property
    def finished(self) -> bool:
        """Whether the phase trained all its epochs (or stopped early)."""
        return self.stop_reason is not None or self.epochs_done >= self.phase.epochs

    def restore_best(self) -> None:
        """Load the best epoch's weights into the module (on every process)."""
        self.checkpoints.load_best(self.module)

    def results(self, test_scores: torch.Tensor, test_labels: torch.Tensor, extra: Dict[str, Any]) -> Dict[str, Any]:
        """The phase's results: best epoch (1-based), validation and test metrics.

        Args:
            test_scores: (N_test, C) test logits of the best epoch's model.
            test_labels: (N_test, C) full test labels, or None (no clean test: the test metrics are None).
            extra: Run facts to record (dataset, model, loss, ...).
        """
        test = compute_metrics(test_scores, test_labels) if test_labels is not None else None
        records = {r["epoch"]: r for r in self.log.records()} if self.accelerator.is_main_process else {}
        best = records.get(self.tracker.best_epoch, {})
        return {"best_epoch": self.tracker.best_epoch, "val_map": self.tracker.best_val_map,
                "val_map_skip_empty": best.get("val_map_skip_empty"), "test_map": test and test["map"],
                "test_map_skip_empty": test and test["map_skip_empty"], "test_metrics": test,
                "epochs": self.epochs_done, "stopped_early": self.stop_reason,
                "non_finite_epoch": self.non_finite_epoch,
                "lr": self.phase.lr, "batch_size": self.phase.batch_size, **extra}
