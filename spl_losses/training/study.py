"""The hyperparameter search: its grid and points, and the Optuna study shared by any number of workers.

Bookkeeping of the hyperparameter grid search: run names, skipping, the winner.

A hyperparameter search shared by any number of workers, stored in an Optuna study.

Every worker runs the same command (``recipes/train.py ... --search``), on one machine or many, each
possibly an ``accelerate launch`` of several processes; they share one study in a real database:
an SQLite file in the search folder by default (nothing to start), any SQLAlchemy URL (PostgreSQL,
MySQL) or Optuna's journal file on a shared file system (``journal:PATH``; SQLite is not safe there)
through ``--search-storage``.

- The grid (the protocol's, or ``search_grid`` of the config) is enqueued once as WAITING trials
  (``enqueue_trial(..., skip_if_exists=True)``); each worker takes the next waiting trial (the storage
  hands each to one worker) and trains it, so every point is trained exactly once. Optuna's
  ``GridSampler`` alone may give the same point to two workers, so it only describes the grid.
- ``search_space`` in the config (``{lr: {low: 1e-5, high: 1e-2, log: true}, batch_size: [8, 16]}``)
  with ``--search-sampler tpe`` and ``--search-trials N`` asks Optuna's TPE sampler for N points.
- In ``linear_fixed_features`` mode a worker takes the next waiting point together with the waiting points
  after it that differ only in the learning rate (:meth:`SearchStudy.next_trials`), locks all their run
  folders, and trains them with one call of the recipe's run (one linear loop, one data pass per epoch); each is
  told to the study as a point trained alone would be.
- A point's training holds its run folder's OS lock, and its owner is recorded in the study: the worker's
  machine, process namespace and process id, and a heartbeat the worker renews every
  ``HEARTBEAT_INTERVAL`` seconds while it trains. A trial that is RUNNING in the study while its owner is
  gone (a dead process on this machine, or no heartbeat for ``HEARTBEAT_GRACE`` seconds from another one)
  has lost its worker (killed, crashed): the next worker marks it failed and enqueues the same point
  again, and the retry resumes the run from its last checkpoint. Ownership lives in the study, so workers
  sharing a study from different ``--output-dir`` folders or machines never take each other's points. A
  point whose run finished (``results.json``) is never trained again.
- A point whose training diverged (non-finite before any good epoch) is failed for good
  (:meth:`SearchStudy.fail`, its reason in the trial's ``failure`` user attribute): it is never retried, and
  ``search.json`` lists it with the reason.
- A study belongs to one search: it records its grid (or space) and its base config (the flags other than
  the grid's and those that do not change what a run computes); a worker with another grid or base config
  is refused, naming what differs.
- The search can be stopped and resumed at any time; ``search.json`` (every point, the winner by
  validation mAP) is written from the study.

Watch it live with ``optuna-dashboard sqlite:///SEARCH_DIR/search.db`` (``pip install optuna-dashboard``).
"""
import itertools
import json
import os
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .run_dir import os_file_lock

__all__ = ["REFERENCE_GRID", "grid_points", "group_key", "run_name", "select_winner", "SearchStudy", "default_storage",
           "worker_id", "HEARTBEAT_INTERVAL", "HEARTBEAT_GRACE"]


#: The grid of Cole et al.'s protocol: batch size {8, 16} x learning rate {1e-2, 1e-3, 1e-4, 1e-5}.
REFERENCE_GRID: Dict[str, List[Any]] = {"batch_size": [8, 16], "lr": [1e-2, 1e-3, 1e-4, 1e-5]}


def grid_points(grid: Mapping[str, Sequence[Any]], allowed: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Every combination of the grid's values, in the grid's key order.

    Args:
        grid: Flag name -> list of values.
        allowed: Flag names the grid may use (None: any).
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"search_grid must be a non-empty mapping of flag names to lists, got {grid!r}")
    for key, values in grid.items():
        if allowed is not None and key not in allowed:
            raise ValueError(f"search_grid key {key!r} is not a flag")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"search_grid[{key!r}] must be a non-empty list, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def run_name(point: Mapping[str, Any]) -> str:
    """Folder name of one grid point, e.g. ``batch_size-8_lr-0.001``.

    Args:
        point: Flag name -> value.
    """
    return "_".join(f"{k}-{v}" for k, v in point.items()).replace("/", "-")


def select_winner(runs: Sequence[Mapping[str, Any]], key: str = "val_map") -> Dict[str, Any]:
    """The run with the highest ``key`` (first one on ties; NaN never wins).

    Args:
        runs: Run summaries, each holding ``key``.
        key: Selection metric.
    """
    best = None
    for run in runs:
        value = run.get(key)
        if value is None or value != value:
            continue
        if best is None or value > best[key]:
            best = run
    if best is None:
        raise ValueError(f"no run has a finite {key!r}")
    return dict(best)


def group_key(params: Mapping[str, Any]) -> Tuple:
    """What the grid points trained by one linear loop share: a point's values other than the learning rate.

    Args:
        params: A grid point (flag name -> value).
    """
    return tuple((k, repr(v)) for k, v in sorted(params.items()) if k != "lr")


_POINT_ATTR = "point"
_LOCKED_ATTR = "locked_by"
_HEARTBEAT_ATTR = "heartbeat"
_RUN_DIR_ATTR = "run_dir"
_FAILURE_ATTR = "failure"
#: Seconds between two heartbeats of a worker's running points.
HEARTBEAT_INTERVAL = 10.0
#: Seconds without a heartbeat after which a RUNNING point of a worker on another machine counts as abandoned.
HEARTBEAT_GRACE = 120.0
#: Seconds a RUNNING trial may go without taking its run folder's lock before it counts as abandoned.
ASK_TO_LOCK_GRACE = 120.0


def default_storage(search_dir: str) -> str:
    """``sqlite:///SEARCH_DIR/search.db``.

    Args:
        search_dir: The search's output folder.
    """
    return f"sqlite:///{os.path.abspath(os.path.join(search_dir, 'search.db'))}"


def _search_lock(search_dir: str, url: Optional[str] = None):
    """The OS lock workers take to create a study (waits for the holder): next to an SQLite storage's file (workers
    of one study may have different search folders), else ``SEARCH_DIR/search.lock``."""
    if url and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = url[len("sqlite:///"):].split("?", 1)[0]
        return os_file_lock(f"{os.path.abspath(path)}.lock")
    return os_file_lock(os.path.join(search_dir, "search.lock"))


def _namespace() -> str:
    """This process's PID namespace (containers on one machine share its host name, not its process ids)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def worker_id() -> str:
    """``HOST:PID_NAMESPACE:PID`` of this process: the owner recorded on the points it trains."""
    return f"{os.uname().nodename}:{_namespace()}:{os.getpid()}"


def _owner_alive(owner: str, heartbeat: Optional[float]) -> bool:
    """Whether the worker ``owner`` (:func:`worker_id`) still trains: a live process when it runs beside this one,
    else a heartbeat younger than ``HEARTBEAT_GRACE``."""
    host, namespace, pid = (owner.split(":") + ["", "", ""])[:3] if owner.count(":") == 2 else ("", "", "")
    if host == os.uname().nodename and namespace == _namespace() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process
            return True
    return heartbeat is not None and time.time() - float(heartbeat) < HEARTBEAT_GRACE


def _canonical(value: Any) -> Any:
    """``value`` as JSON gives it back (what a study's user attribute holds)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _storage(url: str):
    """An Optuna storage for a URL: ``journal:PATH`` is a journal file, anything else an RDB URL."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = os.path.abspath(url[len("journal:"):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    # SQLite starts a transaction at its first write, so two workers may both read a trial as WAITING and both
    # take it: every transaction begins IMMEDIATE (the write lock first), so taking a trial is exclusive.
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120, "isolation_level": None}})
    event.listen(storage.engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    storage.engine.dispose()
    return storage


def _distributions(space: Mapping[str, Any]):
    """Optuna distributions of a ``search_space``: a list is categorical, a mapping a float/int range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, spec in space.items():
        if isinstance(spec, (list, tuple)) and spec:
            out[key] = CategoricalDistribution(list(spec))
        elif isinstance(spec, Mapping) and {"low", "high"} <= set(spec):
            kind = IntDistribution if isinstance(spec["low"], int) and isinstance(spec["high"], int) \
                else FloatDistribution
            out[key] = kind(spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            raise ValueError(f"search_space[{key!r}] must be a list of values or {{low, high[, log]}}, got {spec!r}")
    return out


class SearchStudy:
    """The shared study of one search folder (see the module docstring).

    Args:
        search_dir: The search's output folder (run folders ``SEARCH_DIR/<point>``).
        storage: Storage URL (default :func:`default_storage`), or ``journal:PATH``.
        study_name: Name of the study inside the storage.
        grid: Flag name -> values (the grid sampler).
        space: Flag name -> list or range (``sampler="tpe"``).
        sampler: ``"grid"`` or ``"tpe"``.
        num_trials: Points of a TPE search.
        seed: Seed of the TPE sampler.
        allowed: Flag names the grid or space may use.
        base_config: The flags every point shares (all but the grid's or space's keys and those that do not change
            what a run computes); recorded in the study, which refuses another.
    """

    def __init__(self, search_dir: str, storage: Optional[str] = None, study_name: str = "search",
                 grid: Optional[Mapping[str, List[Any]]] = None, space: Optional[Mapping[str, Any]] = None,
                 sampler: str = "grid", num_trials: Optional[int] = None, seed: int = 0,
                 allowed: Optional[List[str]] = None, base_config: Optional[Mapping[str, Any]] = None):
        import optuna

        if sampler not in ("grid", "tpe"):
            raise ValueError(f"--search-sampler must be 'grid' or 'tpe', got {sampler!r}")
        self.search_dir = search_dir
        self.sampler = sampler
        self._held: Dict[int, Any] = {}  # trial id -> trial, of the points this worker trains (heartbeats)
        self._beating: Optional[threading.Thread] = None
        self.num_trials = num_trials
        if sampler == "grid":
            self.points = grid_points(grid, allowed=allowed)
            self.distributions = _distributions({k: list(dict.fromkeys(p[k] for p in self.points))
                                                 for k in self.points[0]})
            optuna_sampler = optuna.samplers.GridSampler({k: list(v) for k, v in grid.items()}, seed=seed)
        else:
            if not space or not num_trials:
                raise ValueError("--search-sampler tpe needs search_space in the config and --search-trials N")
            unknown = sorted(set(space) - set(allowed or space))
            if unknown:
                raise ValueError(f"search_space keys {unknown} are not flags")
            self.points, self.distributions = [], _distributions(space)
            optuna_sampler = optuna.samplers.TPESampler(seed=seed)
        os.makedirs(search_dir, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = storage or default_storage(search_dir)
        with _search_lock(search_dir, url):  # workers starting together create the tables and the queue one at a time
            for attempt in range(5):
                try:
                    self.study = optuna.create_study(study_name=study_name, storage=_storage(url),
                                                     sampler=optuna_sampler, direction="maximize",
                                                     load_if_exists=True)
                    break
                except Exception as err:  # a server database: another worker created its tables at the same moment
                    if attempt == 4 or type(err).__module__.split(".")[0] != "sqlalchemy":
                        raise
                    time.sleep(1.0 + attempt)
            self._check_identity(study_name, {"sampler": sampler, "grid": grid if sampler == "grid" else None,
                                              "space": space if sampler == "tpe" else None}, base_config)
            for point in self.points:
                self.study.enqueue_trial(point, user_attrs={_POINT_ATTR: run_name(point)}, skip_if_exists=True)

    def _check_identity(self, study_name: str, search: Mapping[str, Any], base_config: Optional[Mapping[str, Any]]):
        """Record the search (sampler, grid or space) and its base config in a new study; refuse another."""
        recorded = self.study.user_attrs
        search, base = _canonical(dict(search)), None if base_config is None else _canonical(dict(base_config))
        where = f"the study {study_name!r} of {self.search_dir}"
        if "search" in recorded and recorded["search"] != search:
            old, new = recorded["search"], search
            raise ValueError(f"{where} is a search over {old.get('grid') or old.get('space')} ({old.get('sampler')} "
                             f"sampler); this command's is over {new.get('grid') or new.get('space')} "
                             f"({new.get('sampler')}): another grid needs another --output-dir (or --search-study "
                             "NAME); to continue that search, run it with its own grid")
        if base is not None and isinstance(recorded.get("base_config"), dict) and recorded["base_config"] != base:
            old = recorded["base_config"]
            diff = sorted(k for k in set(old) | set(base) if old.get(k) != base.get(k))
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {base.get(k)!r}" for k in diff[:8])
            raise ValueError(f"{where} was started with other settings ({shown}{', ...' if len(diff) > 8 else ''}); "
                             "its points would be compared with points of another configuration: rerun it with its "
                             "settings, or search the new ones in another --output-dir (or --search-study NAME)")
        if "search" not in recorded:
            self.study.set_user_attr("search", search)
        if base is not None and "base_config" not in recorded:
            self.study.set_user_attr("base_config", base)

    # ------------------------------------------------------------------ taking points
    def _recover_abandoned(self) -> None:
        """Fail RUNNING trials whose worker is gone and enqueue them again: their owner's process is dead (on this
        machine) or its heartbeat is older than ``HEARTBEAT_GRACE`` (another machine); a trial never locked is
        abandoned after ``ASK_TO_LOCK_GRACE``."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial._trial_id in self._held:
                continue  # this worker's own
            name = trial.user_attrs.get(_POINT_ATTR) or run_name(trial.params)
            owner = trial.user_attrs.get(_LOCKED_ATTR)
            if owner is None:
                started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
                if time.time() - started < ASK_TO_LOCK_GRACE:
                    continue  # taken a moment ago: its worker is about to lock the folder
            elif _owner_alive(owner, trial.user_attrs.get(_HEARTBEAT_ATTR)):
                continue  # its worker is alive and training
            self._requeue(trial, name)

    def _requeue(self, trial, name: str) -> None:
        """Close ``trial`` as failed and enqueue its point again (a retry resumes its run folder); nothing when
        another worker closed it first."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        self._held.pop(trial._trial_id, None)
        params = {k: trial.params.get(k, trial.system_attrs.get("fixed_params", {}).get(k))
                  for k in self.distributions}
        try:
            self.study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError, RuntimeError):
            return  # another worker recovered it (or it finished) in between
        self.study.enqueue_trial(params, user_attrs={_POINT_ATTR: name, "retry_of": trial.number})

    def _complete(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def next_trial(self):
        """The next point to train, as ``(trial, (params, run name))``, or ``(None, None)`` when nothing is left.

        Raises nothing for a race on the last point: a trial created by a worker that found the queue
        empty is closed as PRUNED (never trained).
        """
        from optuna.trial import TrialState

        self._recover_abandoned()
        if self.sampler == "grid":
            if not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return None, None
        elif self._complete() + len(self.failed()) + len(self.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))) >= self.num_trials:
            return None, None
        trial = self.study.ask(fixed_distributions=self.distributions)
        if self.sampler == "grid" and _POINT_ATTR not in trial.user_attrs:
            self.study.tell(trial, state=TrialState.PRUNED)  # another worker took the last waiting point
            return None, None
        params = dict(trial.params)
        name = trial.user_attrs.get(_POINT_ATTR) or run_name(params)
        trial.set_user_attr(_POINT_ATTR, name)
        return trial, (params, name)

    def next_trials(self, group_of: Callable[[Mapping[str, Any]], Any], limit: Optional[int] = None):
        """The next point and the waiting points right after it in the same group, to train together.

        Points are taken one at a time in the study's order, as :meth:`next_trial` takes them, while the oldest
        waiting point is in the first one's group (``group_of(params)`` equal) and fewer than ``limit`` are
        taken; so workers started together each take a group of the grid. A point another worker took in
        between may leave one of another group last in the list. Grid sampler only.

        Args:
            group_of: Maps a point's params to its group.
            limit: The most points to take (None: no limit).

        Returns:
            A list of ``(trial, (params, run name))``, empty when nothing is left.
        """
        from optuna.trial import TrialState

        if self.sampler != "grid":
            raise ValueError("points are taken in groups from a grid search only (--search-sampler grid)")
        trial, point = self.next_trial()
        taken = [] if trial is None else [(trial, point)]
        while taken and (limit is None or len(taken) < limit) and group_of(taken[-1][1][0]) == group_of(point[0]):
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not waiting or group_of(waiting[0].system_attrs.get("fixed_params", {})) != group_of(point[0]):
                break
            trial, other = self.next_trial()
            if trial is None:
                break
            taken.append((trial, other))
        return taken

    def mark_locked(self, trial, run_dir: Optional[str] = None) -> None:
        """Record that this worker owns the trial and holds its run folder's lock: its :func:`worker_id`, the run
        folder and a heartbeat renewed every ``HEARTBEAT_INTERVAL`` seconds until it is told.

        Args:
            trial: The trial from :meth:`next_trial`.
            run_dir: The point's run folder (recorded: ``search.json`` and the plot find the point's files there).
        """
        if run_dir is not None:
            trial.set_user_attr(_RUN_DIR_ATTR, os.path.abspath(run_dir))
        trial.set_user_attr(_HEARTBEAT_ATTR, time.time())
        trial.set_user_attr(_LOCKED_ATTR, worker_id())
        self._held[trial._trial_id] = trial
        if self._beating is None or not self._beating.is_alive():
            self._beating = threading.Thread(target=self._beat, name="search-heartbeat", daemon=True)
            self._beating.start()

    def _beat(self) -> None:
        """Renew the heartbeat of the points this worker trains, until it holds none."""
        while self._held:
            time.sleep(HEARTBEAT_INTERVAL)
            for trial_id, trial in list(self._held.items()):
                try:
                    trial.set_user_attr(_HEARTBEAT_ATTR, time.time())
                except Exception:  # told meanwhile (or the storage is briefly unreachable): the next beat retries
                    pass

    def fail(self, trial, reason: str) -> None:
        """Record a point that cannot be trained (it diverged): FAIL, with ``reason`` in its ``failure`` user
        attribute; it is never retried.

        Args:
            trial: The trial from :meth:`next_trial`.
            reason: Why (names the epoch and the hints).
        """
        from optuna.trial import TrialState

        self._held.pop(trial._trial_id, None)
        trial.set_user_attr(_FAILURE_ATTR, str(reason))
        self.study.tell(trial, state=TrialState.FAIL)

    def finish(self, trial, results: Optional[Mapping[str, Any]]) -> None:
        """Record a point: its validation mAP; or, when it failed or stopped (``--stop-after``), enqueue it again
        so that the next worker continues it from its last checkpoint.

        Args:
            trial: The trial from :meth:`next_trial`.
            results: The run's results (None: it failed or stopped).
        """
        if results is None or results.get("val_map") is None:
            self._requeue(self.study.get_trials(deepcopy=False)[trial.number], trial.user_attrs[_POINT_ATTR])
        else:
            self._held.pop(trial._trial_id, None)
            for key in ("test_map", "best_epoch", "stopped_early"):
                trial.set_user_attr(key, results.get(key))
            self.study.tell(trial, float(results["val_map"]))

    # ------------------------------------------------------------------ the outcome
    def summaries(self) -> List[Dict[str, Any]]:
        """Every finished point, in study order: name, params, validation and test mAP, best epoch."""
        from optuna.trial import TrialState

        out = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            out.append({"name": trial.user_attrs[_POINT_ATTR], "params": dict(trial.params),
                        "val_map": trial.value, "test_map": trial.user_attrs.get("test_map"),
                        "best_epoch": trial.user_attrs.get("best_epoch"), "trial": trial.number,
                        "run_dir": trial.user_attrs.get(_RUN_DIR_ATTR)})
        return out

    def failed(self) -> List[Dict[str, Any]]:
        """Every point failed for good (:meth:`fail`), in study order: name, params, reason, trial."""
        from optuna.trial import TrialState

        return [{"name": t.user_attrs.get(_POINT_ATTR), "params": {**t.system_attrs.get("fixed_params", {}),
                                                                    **t.params},
                 "reason": t.user_attrs[_FAILURE_ATTR], "trial": t.number, "run_dir": t.user_attrs.get(_RUN_DIR_ATTR)}
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if _FAILURE_ATTR in t.user_attrs]

    @property
    def done(self) -> bool:
        """Whether every point has finished or failed for good (the grid's, or ``num_trials`` of a TPE search)."""
        wanted = len(self.points) if self.sampler == "grid" else self.num_trials
        return self._complete() + len(self.failed()) >= wanted
