"""Adam for row-sparse gradients with dense Adam's result: rows catch up on skipped steps when read."""
import math
from typing import Iterable, Optional

import torch
from torch.optim import Optimizer

from .shared_steps import SharedStepFactors
from .skipped_steps import SkippedSteps, skipped_step_updates, window_length

__all__ = ["LazyAdam"]

#: Learning-rate changes kept before every row is brought up to date (which empties the history).
MAX_LR_SEGMENTS = 1024
#: Rows caught up per chunk by a full catch-up (bounds its float64 temporaries).
_CATCH_UP_CHUNK = 1 << 14
#: Keys of a parameter's state besides Adam's ``step``, ``exp_avg`` and ``exp_avg_sq``.
_ROW_KEYS = ("last_step", "lr_starts", "lr_values", "betas_eps")


class LazyAdam(Optimizer):
    """Adam (no weight decay, no AMSGrad) whose step costs O(rows with a gradient), not O(rows).

    Built for per-example parameters read by index, such as ROLE's (N, C) label estimator read with
    ``F.embedding(index, logits, sparse=True)``: a step updates only the batch's rows. The other
    rows' Adam updates (their gradient is zero, so their moments only decay) are applied in closed
    form when the row is next caught up, so every caught-up row holds what ``torch.optim.Adam`` on
    the dense gradient would hold, to float tolerance (the closed form is within 1e-12 relative of
    the skipped steps' sum, eps included, 1e-9 for other than float64 parameters; see
    :mod:`spl_losses.optim.skipped_steps`). Unlike
    ``torch.optim.SparseAdam`` (and TF Addons' ``LazyAdam``), whose moments decay only on the steps
    a row is seen, this is dense Adam. Catching up R rows costs O(R·(C·P + K)) with P = 8 terms
    (16 or 32 for rows last touched in the first ~1,000 steps) and K ~ 300 skipped steps summed per
    row, whatever the number of rows N; only a full catch-up is O(N·C).

    Rows must be caught up before they are read: call :meth:`catch_up` (every row, e.g. before
    reading all estimates, saving the parameter or handing the estimator over), or ``catch_up([param], rows)``
    with the rows a forward pass reads, before it reads them: the parameter's owner does it
    (:meth:`~spl_losses.losses.LabelEstimator.use_optimizer`). A row read
    stale gives a different gradient than dense Adam would. :meth:`state_dict` catches up every
    row first (unless told not to), so the saved optimizer state and the saved parameter agree if
    the parameter is saved after it, or through a module whose state-dict pre-hook catches it up.

    Gradients may be sparse (COO with one sparse dimension, the rows, as ``F.embedding(...,
    sparse=True)`` gives; repeated rows are summed) or dense (every row counts as touched, so this
    replaces Adam anywhere, at dense cost). Parameter groups and learning-rate changes between steps
    (schedulers) are supported: each parameter's state keeps the learning rates of the steps its
    rows may still owe, up to :data:`MAX_LR_SEGMENTS` changes, after which the next step catches up
    every row first; a change of betas or eps catches every row up under the old values first. The
    state is plain tensors: Adam's ``step``, ``exp_avg``, ``exp_avg_sq`` plus ``last_step`` (int64,
    the step each row is current at), the learning-rate history ``lr_starts`` (int64) /
    ``lr_values`` (float64) and ``betas_eps`` (float64, the constants the owed steps ran under).
    Caught up, it is also a valid ``torch.optim.Adam`` state, and an Adam state dict loads here.

    Example::

        estimator = LabelEstimator(num_examples, num_classes, sparse=True)
        optimizer = LazyAdam(estimator.parameters(), lr=10 * lr)
        estimator.use_optimizer(optimizer)  # it catches up the rows it reads, and every row before it is saved

    Args:
        params: Parameters or parameter groups; a parameter's rows are its first dimension.
        lr: Learning rate.
        betas: Adam's moment decays; the closed form needs ``betas[0]**2 < betas[1]``.
        eps: Adam's epsilon, added to the bias-corrected root of the second moment.
        weight_decay: Must be 0 (weight decay makes every row's gradient nonzero).
        amsgrad: Must be False.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        _check_group(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        #: Factors of the skipped steps of rows sharing their last step, reused between catch-ups.
        self._factor_cache = SharedStepFactors()

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group (see ``torch.optim.Optimizer.add_param_group``).

        Args:
            param_group: The group's parameters and options.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_group(group)
            for p in group["params"]:
                if p.dim() == 0:
                    raise ValueError("LazyAdam needs parameters with at least one dimension (their rows), "
                                     "got a 0-d parameter")
                if not p.is_contiguous():
                    raise ValueError(f"LazyAdam needs contiguous parameters, got one of shape "
                                     f"{tuple(p.shape)} with strides {p.stride()}")
        except ValueError:
            self.param_groups.pop()
            raise

    # ------------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step for every parameter with a gradient.

        Args:
            closure: Optional callable re-evaluating the model and returning the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    if grad.sparse_dim() != 1:
                        raise ValueError(f"LazyAdam takes sparse gradients with one sparse dimension (rows), "
                                         f"got sparse_dim={grad.sparse_dim()}")
                    grad = grad.coalesce()
                    self._step_rows(group, p, grad.indices()[0], grad.values())
                else:
                    self._step_rows(group, p, None, grad)
        return loss

    @torch.no_grad()
    def update_rows(self, param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """One Adam step of ``param`` in which only ``rows`` have a gradient.

        The other rows take the step with a zero gradient (applied when they are caught up). This
        is what :meth:`step` does with a sparse gradient; a distributed run can exchange the
        batches' rows and their gradients and call it with all of them on every process.

        Args:
            param: A parameter of this optimizer.
            rows: (R,) int64 row indices; repeated rows have their gradients summed.
            grad: (R, ...) gradient rows (the parameter's shape without its first dimension).
        """
        group = self._group_of(param)
        rows = torch.as_tensor(rows, device=param.device).long().reshape(-1)
        grad = grad.to(device=param.device, dtype=param.dtype)
        expected = (rows.shape[0],) + tuple(param.shape[1:])
        if tuple(grad.shape) != expected:
            raise ValueError(f"grad has shape {tuple(grad.shape)}, expected {expected} ({rows.shape[0]} rows of a "
                             f"parameter of shape {tuple(param.shape)})")
        unique, inverse = torch.unique(rows, return_inverse=True)
        summed = grad.new_zeros((unique.shape[0],) + tuple(param.shape[1:])).index_add_(0, inverse, grad)
        self._step_rows(group, param, unique, summed)

    def _step_rows(self, group: dict, p: torch.Tensor, rows: Optional[torch.Tensor], grad: torch.Tensor) -> None:
        """Adam step ``t`` on unique ``rows`` (None: every row) of ``p``, after catching them up to ``t - 1``."""
        state = self._state_of(p, group)
        beta1, beta2 = group["betas"]
        lr, eps = float(group["lr"]), group["eps"]
        if state["betas_eps"].tolist() != [beta1, beta2, eps]:  # owed steps keep the old values
            self._catch_up_param(p, None)
            state["betas_eps"] = _betas_eps(group)
        t = int(state["step"]) + 1
        if state["lr_starts"].numel() >= MAX_LR_SEGMENTS:
            self._catch_up_param(p, None)
        _record_lr(state, t, lr)
        flat, m_all, v_all = _as_matrices(p, state)
        if rows is None:
            rows = torch.arange(p.shape[0], device=p.device)
        grad = grad.reshape(rows.shape[0], -1)
        values, m, v = self._caught_up(state, flat, m_all, v_all, rows, t - 1)
        # step t exactly as torch.optim.Adam's single-tensor path computes it
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
        values.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
        _scatter_rows(flat, m_all, v_all, state["last_step"], rows, values, m, v, t)
        state["step"].fill_(t)

    def _caught_up(self, state, flat, m_all, v_all, rows, upto, last=None, bounds=None):
        """Rows' values and moments (copies, parameter dtype) after the skipped steps up to ``upto``.

        ``last``: the rows' last steps, with ``bounds`` their (min, max) when the caller has them.
        """
        values, m, v = flat.index_select(0, rows), m_all.index_select(0, rows), v_all.index_select(0, rows)
        if last is None:
            last = state["last_step"].index_select(0, rows)
        if bounds is None and rows.numel():
            bounds = tuple(int(x) for x in torch.aminmax(last))
        if not rows.numel() or bounds[0] >= upto:
            return values, m, v
        owed = SkippedSteps.for_dtype(flat.dtype, upto, state["lr_starts"], state["lr_values"],
                                      *state["betas_eps"].tolist())
        update, m, v = skipped_step_updates(m, v, last, owed, self._factor_cache, bounds)
        return values.sub_(update), m.to(flat.dtype), v.to(flat.dtype)  # the difference taken in float64

    # ---------------------------------------------------------------------------------- catch-up
    @torch.no_grad()
    def catch_up(self, params: Optional[Iterable[torch.Tensor]] = None, rows: Optional[torch.Tensor] = None) -> None:
        """Apply the pending updates, so the rows hold what dense Adam would hold after the last step.

        Args:
            params: Parameters to catch up (default: all of this optimizer's).
            rows: Row indices to catch up in each of them (default: every row). Catching up every
                row also empties the learning-rate history.
        """
        wanted = None if params is None else list(params)
        for group in self.param_groups:
            for p in group["params"]:
                if wanted is not None and not any(p is q for q in wanted):
                    continue
                if self.state.get(p):
                    self._catch_up_param(p, rows)

    def _catch_up_param(self, p: torch.Tensor, rows: Optional[torch.Tensor]) -> None:
        state = self.state[p]
        upto, last_step = int(state["step"]), state["last_step"]
        if rows is None:
            last_step.masked_fill_(last_step == 0, upto)  # never stepped: zero moments, nothing owed
            pending = (last_step < upto).nonzero().squeeze(1)
            pending = pending[last_step[pending].argsort()]  # chunks of rows sharing last steps
        else:  # current rows, and repeated ones, are rewritten with the values they hold
            pending = _as_rows(rows, p.device)
            if not pending.numel():
                return
            low, high = (int(x) for x in torch.aminmax(pending))
            if low < 0 or high >= p.shape[0]:
                raise ValueError(f"rows must lie in [0, {p.shape[0]}), got rows from {low} to {high}")
        last = bounds = None  # the last steps of the rows (and their bounds) when they make one chunk
        if rows is not None and pending.shape[0] <= _CATCH_UP_CHUNK:
            last = last_step.index_select(0, pending)
            bounds = tuple(int(x) for x in torch.aminmax(last))
            if bounds[0] >= upto:  # every row current (e.g. read a second time): nothing to do
                return
        flat, m_all, v_all = _as_matrices(p, state)
        for lo in range(0, pending.shape[0], _CATCH_UP_CHUNK):
            chunk = pending if pending.shape[0] <= _CATCH_UP_CHUNK else pending[lo:lo + _CATCH_UP_CHUNK]
            values, m, v = self._caught_up(state, flat, m_all, v_all, chunk, upto, last, bounds)
            _scatter_rows(flat, m_all, v_all, last_step, chunk, values, m, v, upto)
        if rows is None:
            state["lr_starts"], state["lr_values"] = _empty_lr_history()

    # ------------------------------------------------------------------------------------- state
    def _state_of(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0, dtype=torch.int64)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["last_step"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
            state["lr_starts"], state["lr_values"] = _empty_lr_history()
            state["betas_eps"] = _betas_eps(group)
        return state

    def _group_of(self, param: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(param is p for p in group["params"]):
                return group
        raise ValueError(f"the tensor of shape {tuple(param.shape)} is not a parameter of this optimizer")

    def state_dict(self, *, catch_up: bool = True) -> dict:
        """The optimizer state (see ``torch.optim.Optimizer.state_dict``).

        Args:
            catch_up: First bring every row up to date (default), so the state matches the
                parameters as saved after this call (or by a module whose state-dict pre-hook
                catches its rows up). False keeps the pending rows and their counters in the state;
                the parameters must then be saved as they are now, not caught up.
        """
        if catch_up:
            self.catch_up()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from :meth:`state_dict` (or from ``torch.optim.Adam``: every row current).

        Args:
            state_dict: The optimizer state; the row counters and learning-rate history keep their
                integer / float64 dtypes (the base class would cast them to the parameter's dtype).
        """
        for group in state_dict["param_groups"]:
            _check_group(group)
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        groups = [g for g in self.param_groups for _ in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p, group in zip(saved_ids, params, groups):
            saved = state_dict["state"].get(saved_id)
            if not saved:
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if key not in saved or tuple(saved[key].shape) != tuple(p.shape):
                    raise ValueError(f"state of parameter {saved_id}: {key!r} must have the parameter's shape "
                                     f"{tuple(p.shape)}, got {tuple(saved[key].shape) if key in saved else None}")
            state = self.state[p]
            for key in ("exp_avg", "exp_avg_sq"):  # never share the moments with a live optimizer's
                if state[key].data_ptr() == saved[key].data_ptr():
                    state[key] = state[key].clone()
            step = int(saved["step"])
            state["step"] = torch.tensor(step, dtype=torch.int64)
            if all(key in saved for key in _ROW_KEYS):
                if tuple(saved["last_step"].shape) != (p.shape[0],):
                    raise ValueError(f"state of parameter {saved_id}: 'last_step' must have shape ({p.shape[0]},), "
                                     f"got {tuple(saved['last_step'].shape)}")
                state["last_step"] = saved["last_step"].to(device=p.device, dtype=torch.int64).clone()
                state["lr_starts"] = saved["lr_starts"].to(device="cpu", dtype=torch.int64).clone()
                state["lr_values"] = saved["lr_values"].to(device="cpu", dtype=torch.float64).clone()
                state["betas_eps"] = saved["betas_eps"].to(device="cpu", dtype=torch.float64).clone()
            else:  # an Adam state: every row is current
                state["last_step"] = torch.full((p.shape[0],), step, dtype=torch.int64, device=p.device)
                state["lr_starts"], state["lr_values"] = _empty_lr_history()
                state["betas_eps"] = _betas_eps(group)


def _check_group(group: dict) -> None:
    """Refuse what would make LazyAdam differ from Adam or its closed form invalid."""
    lr, eps, betas = group["lr"], group["eps"], group["betas"]
    if group.get("weight_decay", 0.0) != 0.0:
        raise ValueError(f"LazyAdam has no weight decay (it makes every row's gradient nonzero), "
                         f"got weight_decay={group['weight_decay']}")
    for flag in ("amsgrad", "maximize"):
        if group.get(flag, False):
            raise ValueError(f"LazyAdam does not implement {flag}, got {flag}=True")
    if isinstance(lr, torch.Tensor):
        lr = float(lr)
    if not (isinstance(lr, (int, float)) and lr >= 0.0):
        raise ValueError(f"lr must be a number >= 0, got {lr!r}")
    if not (isinstance(eps, (int, float)) and eps >= 0.0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if len(tuple(betas)) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    window_length(*(float(b) for b in betas))  # raises unless 0 <= beta1**2 < beta2 < 1


def _betas_eps(group: dict) -> torch.Tensor:
    """The decays and epsilon the skipped steps are owed under (changes apply from the next step)."""
    beta1, beta2 = group["betas"]
    return torch.tensor([beta1, beta2, group["eps"]], dtype=torch.float64)


def _empty_lr_history():
    return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)


def _record_lr(state: dict, step: int, lr: float) -> None:
    """Append ``lr`` from ``step`` on to the history if it differs from the last one."""
    values = state["lr_values"]
    if values.numel() and float(values[-1]) == lr:
        return
    state["lr_starts"] = torch.cat([state["lr_starts"], torch.tensor([step], dtype=torch.int64)])
    state["lr_values"] = torch.cat([values, torch.tensor([lr], dtype=torch.float64)])


def _as_matrices(p: torch.Tensor, state: dict):
    """The parameter and its moments as (rows, everything else) matrices (views)."""
    if p.dim() == 2:
        return p, state["exp_avg"], state["exp_avg_sq"]
    flat = p.view(p.shape[0], -1)
    return flat, state["exp_avg"].view_as(flat), state["exp_avg_sq"].view_as(flat)


def _as_rows(rows, device) -> torch.Tensor:
    """``rows`` as a 1-d int64 tensor on ``device``."""
    if isinstance(rows, torch.Tensor) and rows.dtype == torch.int64 and rows.dim() == 1 and rows.device == device:
        return rows
    return torch.as_tensor(rows, device=device).long().reshape(-1)


def _scatter_rows(flat, m_all, v_all, last_step, rows, values, m, v, step: int) -> None:
    flat.index_copy_(0, rows, values)
    m_all.index_copy_(0, rows, m)
    v_all.index_copy_(0, rows, v)
    last_step.index_fill_(0, rows, step)
