"""Best-epoch bookkeeping that is saved in accelerate checkpoints (``register_for_checkpointing``)."""
from typing import Any, Dict, Optional

__all__ = ["BestEpochTracker"]


class BestEpochTracker:
    """Remembers the epochs done and the best epoch by validation mAP (first best wins ties).

    Args:
        None.
    """

    def __init__(self):
        self.epochs_done = 0
        self.best_epoch: Optional[int] = None
        self.best_val_map = float("-inf")

    def update(self, epoch: int, val_map: float) -> bool:
        """Record a finished epoch; return whether it is the new best.

        Args:
            epoch: 0-based epoch just finished.
            val_map: Its validation mAP (NaN never wins).
        """
        self.epochs_done = epoch + 1
        if val_map == val_map and val_map > self.best_val_map:
            self.best_val_map = float(val_map)
            self.best_epoch = int(epoch)
            return True
        return False

    def state_dict(self) -> Dict[str, Any]:
        """Checkpointable state."""
        return {"epochs_done": self.epochs_done, "best_epoch": self.best_epoch, "best_val_map": self.best_val_map}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Args:
            state: The saved state.
        """
        self.epochs_done = int(state["epochs_done"])
        self.best_epoch = state["best_epoch"]
        self.best_val_map = float(state["best_val_map"])
