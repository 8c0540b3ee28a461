"""The files of a run directory: config.yaml, metrics.jsonl, results.json and the val-mAP plot."""
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import yaml

__all__ = ["run_identity", "check_output_dir", "write_config", "read_jsonl", "MetricsLog", "write_json",
           "read_json", "plot_val_map"]


def run_identity(config: Mapping[str, Any], ignored: Sequence[str]) -> Dict[str, Any]:
    """The config entries that decide what a run computes (``ignored`` keys removed).

    Args:
        config: The resolved arguments.
        ignored: Keys that do not change the result (output dir, resume, logging, ...).
    """
    return {k: v for k, v in config.items() if k not in ignored}


def check_output_dir(output_dir: str, config: Mapping[str, Any], ignored: Sequence[str],
                     defaults: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse an output directory whose config.yaml describes a different run.

    Args:
        output_dir: The run directory.
        config: This run's resolved arguments.
        ignored: Keys left out of the comparison.
        defaults: Flag defaults: a key missing from an older config.yaml (a flag added since) counts as its
            default, so adding a flag does not orphan earlier runs.

    Raises:
        ValueError: naming the keys that differ.
    """
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = yaml.safe_load(f) or {}
    previous = {**{k: v for k, v in (defaults or {}).items() if k in config}, **previous}
    old, new = run_identity(previous, ignored), run_identity(dict(config), ignored)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise ValueError(f"output dir {output_dir} holds a different run (config.yaml differs in {details}); "
                         f"choose another --output-dir or delete it")


def write_config(output_dir: str, config: Mapping[str, Any]) -> None:
    """Write the resolved arguments to ``output_dir/config.yaml``.

    Args:
        output_dir: The run directory.
        config: Plain-data mapping.
    """
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(dict(config), f, sort_keys=True)


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Records of a JSON-lines file ([] when missing).

    Args:
        path: File.
    """
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Per-epoch metrics as JSON lines (``epoch`` is 0-based), rewritable on resume.

    Args:
        path: The ``metrics.jsonl`` file.
    """

    def __init__(self, path: str):
        self.path = path

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop records of ``epoch`` and later (a resumed run re-logs them).

        Args:
            epoch: First epoch to drop.
        """
        kept = [r for r in read_jsonl(self.path) if r.get("epoch", -1) < epoch]
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


def plot_val_map(path: str, curves: Mapping[str, Iterable[Mapping[str, Any]]], title: str = "") -> None:
    """Plot validation mAP per epoch (one line per run) to a PNG.

    Args:
        path: PNG file.
        curves: Run label -> metric records with ``epoch`` and ``val_map``.
        title: Plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in curves.items():
        records = [r for r in records if r.get("val_map") is not None]
        ax.plot([r["epoch"] + 1 for r in records], [r["val_map"] for r in records], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
