"""Checkpoints of a training phase: accelerate's ``save_state`` / ``load_state`` plus JSON bookkeeping.

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
"""
import hashlib
import json
import os
import re
from typing import Any, Dict, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["PhaseCheckpoints", "STATE_FILENAME"]

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
