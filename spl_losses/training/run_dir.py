"""A run folder: whose it is, whether it holds this run, and one process writing it at a time.

Rules (nothing the recipe did not write is ever modified or deleted):

- A new run goes into a missing or empty folder. A folder holding other files and no ``config.yaml``
  is not a run folder of this recipe: refused, naming some of its files.
- A folder whose ``config.yaml`` records another run (other settings) is refused, naming the settings
  that differ. Keys that do not change the result (output dir, resume, logging, ...) are ignored; a
  key missing from an older ``config.yaml`` (a flag added since) counts as its default.
- The same run, finished (``results.json``): :meth:`RunDir.state` says so; the caller reuses it (a
  search or a comparison) or refuses. Unfinished with checkpoints and no ``--resume``: refused, so
  that hours of training are not restarted by a forgotten flag.
- While a run works in its folder it holds an OS file lock on ``run.lock`` (released when the process
  dies, even by ``kill -9``): a second run into the same folder is refused at once.
"""
import contextlib
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import filelock
import yaml

__all__ = ["RunDir", "IDENTITY_IGNORED", "LOCK_FILENAME", "RunDirBusyError", "os_file_lock"]

#: config.yaml keys that do not change what a run computes.
IDENTITY_IGNORED = ("resume", "stop_after", "push_to_hub", "private", "output_dir", "log_with", "workers", "config",
                    "cache_dir", "search", "progress", "linear_phase_dir", "keep_checkpoints", "log_interval",
                    "search_storage", "search_study", "search_sampler", "search_trials", "teacher_cache_dir",
                    "image_cache", "image_cache_dir", "channels_last", "compile", "compile_mode", "debug", "rebuild_dataset")
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

    def check(self, config: Mapping[str, Any], defaults: Mapping[str, Any], resume: bool,
              ignored: Sequence[str] = IDENTITY_IGNORED) -> None:
        """Refuse a folder of other files, of another run, or an unfinished run restarted without ``--resume``.

        Args:
            config: This run's resolved settings (what ``config.yaml`` records).
            defaults: Flag defaults (a key missing from an older config.yaml counts as its default).
            resume: Whether ``--resume`` was given.
            ignored: Keys left out of the comparison.

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
        if diff:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in diff[:6])
            raise ValueError(f"--output-dir {self.path} holds a different run (config.yaml differs in {details}); "
                             "choose another --output-dir")
        if not resume and not self.finished and self.has_checkpoints:
            raise ValueError(f"--output-dir {self.path} holds an unfinished run of these settings with checkpoints: "
                             "continue it with --resume, or choose another --output-dir")

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
