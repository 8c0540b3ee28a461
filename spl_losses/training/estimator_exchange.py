"""Data-parallel training of row-sparse parameters (a label estimator with sparse gradients) outside DDP.

DDP all-reduces a parameter's whole gradient every step: for ROLE's (N, C) label estimator that is N·C
floats (21 MB for COCO, 400 MB at N = 100,000, C = 1,000) although a step reads only the batch's rows.
:class:`RowSparseExchange` exchanges those rows instead, O(B·C) per step whatever N:

- before the forward pass, every process gathers the global batch's example indices (B int64 and a
  header of P counts) and catches those rows up (:func:`~spl_losses.optim.catch_up_rows`), the same rows
  in the same order on every process, so the rows stay identical bit for bit (catching rows up in other
  groupings would differ at rounding level);
- after the backward pass, each process's gradient rows (P times the global gradient's, as every input of
  a loss on a split batch gets, see :func:`spl_losses.losses.split_batches`) are gathered (padded to the
  largest share: P·max_share·C floats), summed and divided by P, which is what DDP's average would give;
  every process sets the same sparse gradient, and its optimizer (LazyAdam, SparseAdam) makes the same
  update.

Without an initialised process group, or with one process, nothing is exchanged and nothing is paid.
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from ..losses._distributed import BatchShare
from ..optim import catch_up_rows

__all__ = ["RowSparseExchange"]


class RowSparseExchange:
    """Keeps row-sparse parameters identical on every process of a data-parallel run, exchanging batch rows.

    Call :meth:`begin` with each process's batch indices before the forward pass reads the parameters
    (``TrainStep`` does), and :meth:`exchange` after the backward pass of each optimizer step (after the
    last micro-batch when gradients are accumulated), before clipping and stepping. Every process must
    make the same calls. Leave the parameters out of DDP (``_ddp_params_and_buffers_to_ignore``).

    Args:
        parameters: The parameters (rows first; sparse gradients, e.g. ``LabelEstimator(sparse=True).logits``).
        process_group: The group the batch is split over (default: the default group).
    """

    def __init__(self, parameters: Sequence[torch.nn.Parameter], process_group=None):
        self.parameters = list(parameters)
        self.process_group = process_group
        #: For each forward pass since the last exchange: every process's rows, in rank order.
        self._batches: List[List[torch.Tensor]] = []

    def _share(self) -> Optional[BatchShare]:
        if not self.parameters or not dist.is_available() or not dist.is_initialized():
            return None
        world_size = dist.get_world_size(self.process_group)
        if world_size == 1:
            return None
        return BatchShare(self.process_group, world_size, dist.get_rank(self.process_group))

    @torch.no_grad()
    def begin(self, index: torch.Tensor) -> None:
        """Gather the global batch's indices and catch those rows up on every process (one call per forward).

        Args:
            index: (B_local,) this process's example indices.
        """
        share = self._share()
        if share is None:
            return
        device = self.parameters[0].device
        rows = index.detach().to(device=device, dtype=torch.int64).reshape(-1)
        share.gather_header(rows.shape[0], None, 0, None, device, name="estimator rows (counts)")
        shares = share.gather_varying(rows, share.counts, name="estimator rows")
        global_rows = torch.cat(shares)
        for param in self.parameters:
            catch_up_rows(param, global_rows)
        self._batches.append(shares)

    @torch.no_grad()
    def exchange(self) -> None:
        """Give every process the global batch's sparse gradient: its rows' gradients summed over processes / P."""
        share = self._share()
        batches, self._batches = self._batches, []
        if share is None or not batches:
            return
        rows = [torch.cat([shares[rank] for shares in batches]).unique() for rank in range(share.world_size)]
        sizes = [r.shape[0] for r in rows]
        all_rows = torch.cat(rows)
        for param in self.parameters:
            local = _gradient_rows(param, rows[share.rank])
            width = math.prod(param.shape[1:])
            gathered = share.gather_varying(local.reshape(sizes[share.rank], width), sizes, name="estimator gradient")
            values = torch.cat(gathered).view((-1,) + tuple(param.shape[1:]))
            total = torch.sparse_coo_tensor(all_rows[None], values, tuple(param.shape)).coalesce()
            param.grad = torch.sparse_coo_tensor(total.indices(), total.values() / share.world_size,
                                                 tuple(param.shape), is_coalesced=True)


def _gradient_rows(param: torch.nn.Parameter, rows: torch.Tensor) -> torch.Tensor:
    """The (R, ...) rows ``rows`` (sorted, unique) of ``param``'s sparse gradient (zeros where it has none)."""
    out = param.new_zeros((rows.shape[0],) + tuple(param.shape[1:]))
    grad = param.grad
    if grad is None:
        return out
    if not grad.is_sparse:
        raise ValueError(f"a row-sparse parameter of shape {tuple(param.shape)} outside DDP needs sparse gradients "
                         "(build the label estimator with sparse=True), got a dense gradient")
    grad = grad.coalesce()
    index = grad.indices()[0]
    where = torch.searchsorted(rows, index)
    if index.numel() and (int(where.max()) >= rows.shape[0] or not torch.equal(rows[where], index)):
        raise RuntimeError("the gradient has rows outside the batches given to RowSparseExchange.begin (read the "
                           "estimator only through TrainStep's forward)")
    return out.index_copy_(0, where, grad.values())
