"""Best-epoch bookkeeping and early stopping, decided on the validation mAP.

Epochs are counted from 1 here, as the papers and every file a person reads do. The state is plain
JSON (saved in the recipe's checkpoints, never pickled).
"""
import math
from typing import Any, Dict, Optional

__all__ = ["BestEpochTracker", "EarlyStopping"]


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
