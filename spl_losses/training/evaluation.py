"""Prediction over a split across processes, scoring every example exactly once, and its metrics.

``accelerate``'s ``gather_for_metrics`` drops the samples a distributed sampler repeats to even out
the last batch; the rows are then placed by the dataset's ``index`` column and the result is
checked to hold every index exactly once.
"""
from typing import Callable, Dict

import torch
from torch import nn

from ..metrics import compute_metrics

__all__ = ["predict_loader", "scatter_by_index", "evaluate_scores"]


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

    Returns:
        A (N, D) float32 CPU tensor, row i for the example with ``index == i`` (identical on every process).
    """
    from tqdm.auto import tqdm

    if isinstance(model, nn.Module):
        model.eval()
    outputs, indices = [], []
    for batch in tqdm(loader, desc=description, disable=not (show_progress and accelerator.is_main_process),
                      leave=False):
        with accelerator.autocast():
            out = model(batch[input_key])
        out, index = accelerator.gather_for_metrics((out.float().contiguous(), batch["index"]))
        outputs.append(out.cpu())
        indices.append(index.cpu())
    if not outputs:
        raise ValueError("the evaluation loader is empty")
    return scatter_by_index(torch.cat(outputs), torch.cat(indices), num_examples)


def evaluate_scores(scores: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> Dict[str, float]:
    """SPEC §7 metrics of scores against multi-hot labels, keys optionally prefixed (``val_map``).

    Args:
        scores: (N, C) logits or probabilities.
        labels: (N, C) multi-hot labels (full labels, or observed positives with unobserved as 0).
        prefix: Prepended to every key.
    """
    return {prefix + k: v for k, v in compute_metrics(scores, labels).items()}
