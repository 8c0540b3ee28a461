"""The files of a run folder a person reads: metrics.jsonl, results.json and the validation-mAP plot.

Epochs are numbered from 1 in all of them."""
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

__all__ = ["read_jsonl", "MetricsLog", "write_json", "read_json", "plot_val_map"]


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

    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
