"""Bookkeeping of the hyperparameter grid search: run names, skipping, the winner."""
import itertools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["REFERENCE_GRID", "grid_points", "group_key", "run_name", "select_winner"]

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
