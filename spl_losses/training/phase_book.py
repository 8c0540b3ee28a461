"""The bookkeeping of one training phase: resume, per-epoch validation, best epoch, stopping, logs, results.

A phase is validated after every epoch (1-based); the best epoch by validation mAP is kept (its
weights in one file), early stopping is decided on the gathered validation mAP (the same on every
process), each epoch is logged to ``metrics.jsonl`` and the trackers, then checkpointed. At the end the
best epoch's weights are restored and test is scored with them.
"""
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..metrics import compute_metrics
from .checkpointing import PhaseCheckpoints
from .progress import BestEpochTracker, EarlyStopping
from .run_files import MetricsLog

__all__ = ["PhaseBook", "PhaseOutcome"]


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
    """

    results: Optional[Dict[str, Any]]
    loss: Optional[nn.Module] = None
    model: Optional[nn.Module] = None
    head: Optional[nn.Linear] = None
    in_features: Optional[int] = None

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
        self.epochs_done = 0
        self.stop_reason: Optional[str] = None
        self._epochs_this_call = 0
        self._state: Dict[str, Any] = {}
        self._started = time.perf_counter()

    def resume_point(self) -> Optional[str]:
        """The checkpoint this phase continues from (``--resume`` and one exists), else None."""
        return self.checkpoints.latest() if self.phase.resume else None

    def begin(self, checkpoint: Optional[str]) -> None:
        """Start fresh, or restore ``checkpoint`` (prepared objects, best epoch, epochs done).

        Args:
            checkpoint: From :meth:`resume_point` (called after ``accelerator.prepare``).
        """
        acc = self.accelerator
        if checkpoint is not None:
            self._state = self.checkpoints.load(checkpoint)
            self.tracker.load_state_dict(self._state["tracker"])
            self.epochs_done = self.tracker.epochs_done
            self.stop_reason = self._state.get("stop_reason")
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
            test_labels: (N_test, C) full test labels.
            extra: Run facts to record (dataset, model, loss, ...).
        """
        test = compute_metrics(test_scores, test_labels)
        records = {r["epoch"]: r for r in self.log.records()} if self.accelerator.is_main_process else {}
        best = records.get(self.tracker.best_epoch, {})
        return {"best_epoch": self.tracker.best_epoch, "val_map": self.tracker.best_val_map,
                "val_map_skip_empty": best.get("val_map_skip_empty"), "test_map": test["map"],
                "test_map_skip_empty": test["map_skip_empty"], "test_metrics": test,
                "epochs": self.epochs_done, "stopped_early": self.stop_reason,
                "lr": self.phase.lr, "batch_size": self.phase.batch_size, **extra}
