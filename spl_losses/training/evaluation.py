"""Prediction over a split across processes, scoring every example exactly once.

``accelerate``'s ``gather_for_metrics`` drops the samples a distributed sampler repeats to even out
the last batch; the rows are then placed by the dataset's ``index`` column and the result is
checked to hold every index exactly once.
"""
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["predict_loader", "scatter_by_index", "features_loader"]


def scatter_by_index(values: torch.Tensor, index: torch.Tensor, num_examples: int) -> torch.Tensor:
    """Place rows ``values[i]`` at position ``index[i]``, checking that every position appears once.

    Args:
        values: (M, D) rows.
        index: (M,) int64 positions.
        num_examples: N, the expected number of distinct positions.

    Returns:
        The (N, D) tensor.
    """
    index = index.long().cpu()
    if index.numel() != num_examples or not torch.equal(torch.sort(index).values, torch.arange(num_examples)):
        counts = torch.bincount(index, minlength=num_examples) if index.numel() else torch.zeros(num_examples)
        raise RuntimeError(
            f"evaluation must score each of the {num_examples} examples exactly once; got {index.numel()} rows, "
            f"{int((counts == 0).sum())} examples missing and {int((counts > 1).sum())} repeated")
    out = torch.empty(num_examples, *values.shape[1:], dtype=values.dtype)
    out[index] = values.cpu()
    return out


@torch.no_grad()
def predict_loader(
        model: Callable[[torch.Tensor], torch.Tensor],
        loader,
        accelerator,
        num_examples: int,
        input_key: str = "pixel_values",
        show_progress: bool = False,
        description: str = "predict",
        preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Outputs of ``model`` for every example of a (prepared) loader, gathered over processes.

    Args:
        model: Module or callable mapping a batch of inputs to (B, D) outputs (logits or features).
        loader: A DataLoader prepared by ``accelerator`` yielding dicts with ``input_key`` and ``index``.
        accelerator: The ``accelerate.Accelerator``.
        num_examples: N, the split's size.
        input_key: Batch key of the model input.
        show_progress: Show a progress bar on the main process.
        description: Progress-bar label.
        preprocess: Applied to each batch's input on the device before ``model`` (e.g. a
            ``DeviceNormalize`` of uint8 images).

    Returns:
        A (N, D) float32 CPU tensor, row i for the example with ``index == i`` (identical on every process).
    """
    from tqdm.auto import tqdm

    if isinstance(model, nn.Module):
        model.eval()
    outputs, indices = [], []
    for batch in tqdm(loader, desc=description, disable=not (show_progress and accelerator.is_main_process),
                      leave=False):
        inputs = batch[input_key] if preprocess is None else preprocess(batch[input_key])
        with accelerator.autocast():
            out = model(inputs)
        out, index = accelerator.gather_for_metrics((out.float().contiguous(), batch["index"]))
        outputs.append(out.cpu())
        indices.append(index.cpu())
    if not outputs:
        raise ValueError("the evaluation loader is empty")
    return scatter_by_index(torch.cat(outputs), torch.cat(indices), num_examples)


class _FeatureRows(torch.utils.data.Dataset):
    """Rows of a features split read whole from Arrow once; a batch is one slice (``__getitems__``)."""

    def __init__(self, split):
        from ..data.columns import feature_tensor, index_column

        self.features = feature_tensor(split, "features")
        self.index = torch.from_numpy(index_column(split, "index"))

    def __len__(self) -> int:
        return self.index.numel()

    def __getitem__(self, row: int) -> Dict[str, Any]:
        return {"features": self.features[row].clone(), "index": self.index[row]}

    def __getitems__(self, rows) -> Dict[str, Any]:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return {"features": self.features[rows], "index": self.index[rows]}


def _batch_as_is(batch: Dict[str, Any]) -> Dict[str, Any]:
    return batch


def features_loader(split, batch_size: int, workers: int = 0):
    """A DataLoader yielding ``{"features": (B, D), "index": (B,)}`` of a features split, in order.

    The ``features`` and ``index`` columns are read in bulk (:func:`spl_losses.data.columns.feature_matrix`)
    and each batch is one gather.

    Args:
        split: A split with ``features`` and ``index`` columns.
        batch_size: Batch size.
        workers: Worker processes.
    """
    from torch.utils.data import DataLoader

    return DataLoader(_FeatureRows(split), batch_size=batch_size, shuffle=False, drop_last=False,
                      num_workers=workers, collate_fn=_batch_as_is)
