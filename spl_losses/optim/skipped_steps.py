"""The parameter updates Adam makes to a row while the row's gradient is zero, in closed form.

For a row whose gradient is zero from step ``s0 + 1`` on, Adam's moments decay geometrically
(``m <- beta1·m``, ``v <- beta2·v``) and its update at step ``j = s0 + k`` is::

    lr_j / (1 - beta1^j) · beta1^k·m / (sqrt(beta2^k·v / (1 - beta2^j)) + eps)
        = m · w_k / (e_k·s + eps)      with  w_k = lr_j·beta1^k / (1 - beta1^j),
                                              e_k = beta2^(k/2) / sqrt(1 - beta2^j),  s = sqrt(v)

where ``m``, ``v`` are the row's moments after step ``s0``. ``w_k`` and ``e_k`` are shared by the
row's entries; only ``s`` and ``m`` are per entry. Without ``eps`` the sum over ``k`` factors into
``m/s · sum_k w_k/e_k``; with it, this module evaluates ``S(s) = sum_k w_k / (e_k·s + eps)`` as::

    S = 1/(c·s + eps) · sum_k w_k / (1 + t·x_k),   c = the w-weighted mean of e_k,
                                                   x_k = e_k/c - 1,  t = c·s/(c·s + eps) in [0, 1]

and expands ``1/(1 + t·x_k)`` as a polynomial of degree ``P - 1`` in ``t`` (coefficients per row,
``O(K)`` once per row; ``O(P)`` per entry). The remainder of that expansion is exactly
``(-t·x_k)^P / (1 + t·x_k)``, so for every ``t`` in [0, 1] the relative error is at most
``sum_k w_k·|x_k|^P / min(1, e_k/c)`` over ``sum_k w_k / max(1, e_k/c)``; a row whose bound exceeds
the tolerance (a row last touched early in training, when the bias corrections make ``e_k`` vary
fast) is summed term by term instead (``O(K)`` per entry). Either way the result is within the
tolerance of the exact sum, whatever ``eps`` and ``v``.

Only the first ``K`` skipped steps are summed: the terms are at most ``|m|/s · w_k/e_k`` and, for
Adam's moments, ``|m|/s <= G = (1 - beta1) / sqrt((1 - beta2)(1 - beta1^2/beta2))``, so the steps
after the ``K``-th add at most ``G·lr_max·rho^(K+1)/(1 - rho)`` with ``rho = beta1/sqrt(beta2)``,
which :func:`window_length` makes negligible (it needs ``beta1^2 < beta2``; Adam's defaults give
``rho = 0.9005`` and ``K = 307`` for a bound of 1e-13 times one step of size ``G·lr_max``, the
bound used for float64 parameters, and ``K = 241`` for 1e-10, the one used for the others).

Rows that share their last step share ``w_k``, ``e_k`` and the polynomial's coefficients: they are
computed once per group of rows (:class:`StepFactors`), and, for rows all last stepped together,
taken from a table kept between calls (:mod:`spl_losses.optim.shared_steps`).
"""
import functools
import math
from typing import NamedTuple, Optional, Tuple

import torch

__all__ = ["SkippedSteps", "StepFactors", "window_length", "lr_at_steps", "skipped_step_weights", "step_factors",
           "skipped_step_updates"]

#: Numbers of terms tried for the polynomial in ``t`` (its per-entry cost), each twice the last.
#: With Adam's defaults and a 1e-12 tolerance, 8 terms do for rows last touched after step ~1,000,
#: 16 after step ~100, 32 after step ~20; with 1e-9, after steps ~200, ~40 and ~5.
SERIES_TERMS = (8, 16, 32)
#: Relative error allowed to the polynomial (rows above it are summed term by term) and bound on
#: the neglected steps after the window (in steps of size ``G·lr_max``): for float64 parameters,
#: and for the others (1e-9 is far under float32's rounding, 6e-8).
SERIES_TOL, TAIL_TOL = 1e-12, 1e-13
SERIES_TOL_FLOAT32, TAIL_TOL_FLOAT32 = 1e-9, 1e-10
#: Entries summed term by term per chunk (float64 ``rows x C x K``).
_EXACT_CHUNK = 1 << 21
#: Above this many rows, rows sharing a last step share their per-row factors.
_GROUP_ROWS_ABOVE = 256


@functools.lru_cache(maxsize=64)
def window_length(beta1: float, beta2: float, tol: float = TAIL_TOL) -> int:
    """Number K of skipped steps to sum: the later ones add under ``tol`` steps of size ``G·lr_max``.

    Args:
        beta1: Adam's first-moment decay, with ``beta1**2 < beta2``.
        beta2: Adam's second-moment decay.
        tol: Bound on the neglected steps (see the module docstring).
    """
    if not 0.0 <= beta1 ** 2 < beta2 < 1.0:
        raise ValueError(f"the closed form needs 0 <= beta1**2 < beta2 < 1, got betas ({beta1}, {beta2})")
    rho = beta1 / math.sqrt(beta2)
    if rho == 0.0:
        return 1
    return max(1, math.ceil(math.log(tol * (1.0 - rho)) / math.log(rho)) - 1)


def lr_at_steps(steps: torch.Tensor, lr_starts: torch.Tensor, lr_values: torch.Tensor):
    """The learning rate of each step from a piecewise-constant history (a float if it has one entry).

    Args:
        steps: Step numbers (any shape; float64 or int64).
        lr_starts: (H,) int64 increasing first steps of each learning rate.
        lr_values: (H,) float64 learning rates; ``lr_values[i]`` holds from ``lr_starts[i]`` on.
    """
    if lr_values.numel() == 1:
        return float(lr_values[0])
    starts = lr_starts.to(device=steps.device, dtype=steps.dtype)
    where = torch.searchsorted(starts, steps, right=True).sub_(1).clamp_(min=0)
    return lr_values.to(steps.device)[where]


@functools.lru_cache(maxsize=16)
def _step_powers(beta1: float, beta2: float, window: int, device: torch.device):
    """``k``, ``beta1^k``, ``beta2^k`` and ``beta2^(k/2)`` for ``k = 1..window`` (float64)."""
    k = torch.arange(1, window + 1, dtype=torch.float64, device=device)
    return k, torch.pow(beta1, k), torch.pow(beta2, k), torch.pow(beta2, k / 2)


class SkippedSteps(NamedTuple):
    """The zero-gradient Adam steps rows owe: those up to step ``upto``, and what they ran under.

    Attributes:
        upto: The step to catch up to.
        lr_starts: (H,) int64 learning-rate history (see :func:`lr_at_steps`) covering the steps.
        lr_values: (H,) float64 learning rates.
        beta1: Adam's first-moment decay.
        beta2: Adam's second-moment decay.
        eps: Adam's epsilon (>= 0).
        window: K, the number of skipped steps summed (:func:`window_length`).
        tol: Relative error allowed to the polynomial in ``t``.
    """

    upto: int
    lr_starts: torch.Tensor
    lr_values: torch.Tensor
    beta1: float
    beta2: float
    eps: float
    window: int
    tol: float = SERIES_TOL

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, upto: int, lr_starts: torch.Tensor, lr_values: torch.Tensor,
                  beta1: float, beta2: float, eps: float) -> "SkippedSteps":
        """The steps owed by a parameter of ``dtype``, with tolerances far under its rounding.

        Args:
            dtype: The parameter's dtype (float64: 1e-12 / 1e-13; others: 1e-9 / 1e-10).
            upto: The step to catch up to.
            lr_starts: Learning-rate history steps.
            lr_values: Learning-rate history values.
            beta1: Adam's first-moment decay.
            beta2: Adam's second-moment decay.
            eps: Adam's epsilon.
        """
        series_tol, tail_tol = (SERIES_TOL, TAIL_TOL) if dtype == torch.float64 else \
            (SERIES_TOL_FLOAT32, TAIL_TOL_FLOAT32)
        return cls(upto, lr_starts, lr_values, beta1, beta2, eps, window_length(beta1, beta2, tail_tol), series_tol)


def skipped_step_weights(last_step: torch.Tensor, steps: SkippedSteps, window: int):
    """The per-row factors ``w_k`` and ``e_k`` of the skipped steps ``last_step + k <= upto``, ``k <= window``.

    Args:
        last_step: (R,) int64, the step each row is current at.
        steps: The steps owed.
        window: K, the number of skipped steps summed (at most ``steps.window``).

    Returns:
        ``(w, e)``, both (R, K) float64; steps past ``upto`` have ``w = 0`` and ``e = 1``.
    """
    upto, lr_starts, lr_values, beta1, beta2 = steps.upto, steps.lr_starts, steps.lr_values, steps.beta1, steps.beta2
    k, beta1_k, beta2_k, beta2_half_k = _step_powers(beta1, beta2, window, last_step.device)
    first = last_step.double()[:, None]
    # bias corrections 1 - beta^j with j = last_step + k, as 1 - beta^last_step·beta^k
    one = first.new_ones(())
    correction1 = torch.addcmul(one, torch.pow(beta1, first), beta1_k, value=-1.0)
    correction2 = torch.addcmul(one, torch.pow(beta2, first), beta2_k, value=-1.0)
    if lr_values.numel() == 1:
        w = torch.div(beta1_k * float(lr_values[0]), correction1)
    else:
        w = torch.div(beta1_k, correction1).mul_(lr_at_steps(first + k, lr_starts, lr_values))
    e = torch.rsqrt(correction2).mul_(beta2_half_k)
    if int(last_step.max()) + window > upto:
        skipped = k > (upto - first)
        w.masked_fill_(skipped, 0.0)
        e.masked_fill_(skipped, 1.0)
    return w, e


def _series_coefficients(w: torch.Tensor, e: torch.Tensor, tol: float):
    """Centre ``c``, coefficients of the polynomial in ``t``, and each row's number of terms.

    A row's number of terms is the smallest of :data:`SERIES_TERMS` whose bound is under ``tol``
    (0 where none is: those rows are summed term by term); every row has as many coefficients as
    the largest, those past its own number of terms set to 0.
    """
    wsum = w.sum(1)
    centre = (w * e).sum(1).div_(wsum).nan_to_num_(nan=1.0)  # rows with no weight: any centre
    ratio = e / centre[:, None]
    x = ratio - 1.0
    weight = w / ratio.clamp(max=1.0)
    lower = (w / ratio.clamp(min=1.0)).sum(1).mul_(tol)
    terms = torch.zeros(w.shape[0], dtype=torch.int64, device=w.device)
    power, degree = x.abs(), 1
    for candidate in SERIES_TERMS:  # |x|^candidate by repeated squaring (each twice the last)
        while degree < candidate:
            power, degree = power * power, degree * 2
        passes = (weight * power).sum(1) <= lower
        terms = torch.where((terms == 0) & passes, candidate, terms)
        if bool(terms.all()):
            break
    most = max(1, int(terms.max()))
    if not bool((terms != most).any()):
        return centre, _moments(w, x, most), terms
    coefficients = w.new_zeros(w.shape[0], most)
    for degree in terms.unique().tolist():  # each row with its own number of terms (0: none)
        rows = (terms == degree).nonzero().squeeze(1)
        coefficients[rows, :degree] = _moments(w[rows], x[rows], degree)
    return centre, coefficients, terms


def _moments(w: torch.Tensor, x: torch.Tensor, count: int) -> torch.Tensor:
    """``sum_k w_k·(-x_k)^p`` for ``p = 0..count-1``, per row."""
    if count <= 1:
        return w.sum(1, keepdim=True)[:, :count]
    powers = torch.cumprod((-x)[:, :, None].expand(-1, -1, count - 1), dim=2)
    return torch.cat([w.sum(1, keepdim=True), (w[:, :, None] * powers).sum(1)], 1)


def _columns(centre: torch.Tensor, coefficients: torch.Tensor):
    """The centre and each coefficient as (F, 1) columns, as :func:`_series_sum` takes them."""
    return centre[:, None], coefficients.unsqueeze(2).unbind(1)


def _series_sum(s: torch.Tensor, eps: float, centre: torch.Tensor, columns) -> torch.Tensor:
    """``S(s)`` from the polynomial in ``t`` (``centre`` and ``columns`` from :func:`_columns`, rows matching
    ``s``'s or one row; ``eps > 0``)."""
    cs = centre * s
    denom = cs + eps
    t = cs.div_(denom)
    acc = columns[-1].expand_as(s)
    for column in columns[-2::-1]:
        acc = torch.addcmul(column, acc, t)
    return acc.div_(denom) if len(columns) > 1 else acc / denom


def _exact_sum(s: torch.Tensor, eps: float, w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``S(s)`` summed term by term, in chunks of rows (``eps > 0``)."""
    out = torch.empty_like(s)
    step = max(1, _EXACT_CHUNK // max(1, s.shape[1] * w.shape[1]))
    for lo in range(0, s.shape[0], step):
        sl = slice(lo, lo + step)
        denom = torch.mul(e[sl, None, :], s[sl, :, None]).add_(eps)
        out[sl] = torch.div(w[sl, None, :], denom).sum(-1)
    return out


class StepFactors(NamedTuple):
    """The per-row factors of the skipped steps of rows (one row of factors per last step).

    Attributes:
        w: (F, K) float64 weights ``w_k`` (0 past a row's skipped steps).
        e: (F, K) float64 factors ``e_k`` (1 past a row's skipped steps).
        centre: (F,) float64 centre ``c`` of the polynomial in ``t`` (None when ``eps == 0``).
        coefficients: (F, P) float64 coefficients of the polynomial (None when ``eps == 0``).
        terms: (F,) int64 number of terms each row needs; 0: summed term by term (None when ``eps == 0``).
        exact: Whether any row is summed term by term.
        columns: ``centre`` and the coefficients as (F, 1) columns (:func:`_columns`), or None.
    """

    w: torch.Tensor
    e: torch.Tensor
    centre: Optional[torch.Tensor]
    coefficients: Optional[torch.Tensor]
    terms: Optional[torch.Tensor]
    exact: bool
    columns: Optional[tuple] = None


def step_factors(firsts: torch.Tensor, steps: SkippedSteps, window: int) -> StepFactors:
    """The factors of the skipped steps of rows last stepped at ``firsts``.

    Args:
        firsts: (F,) int64 last steps.
        steps: The steps owed.
        window: Skipped steps summed (at most ``steps.window``).
    """
    w, e = skipped_step_weights(firsts, steps, window)
    if steps.eps == 0.0:
        return StepFactors(w, e, None, None, None, False)
    centre, coefficients, terms = _series_coefficients(w, e, steps.tol)
    return StepFactors(w, e, centre, coefficients, terms, not bool(terms.all()), _columns(centre, coefficients))


def skipped_step_updates(
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        last_step: torch.Tensor,
        steps: SkippedSteps,
        cache=None,
        bounds: Optional[Tuple[int, int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What Adam does to rows with zero gradient from ``last_step + 1`` to ``steps.upto``.

    Args:
        exp_avg: (R, C) first moments after each row's ``last_step``.
        exp_avg_sq: (R, C) second moments after each row's ``last_step``.
        last_step: (R,) int64, the step each row is current at (``<= steps.upto``).
        steps: The steps owed.
        cache: Optional :class:`~spl_losses.optim.shared_steps.SharedStepFactors` (owned by the caller,
            kept between calls) giving the factors when every row shares its last step.
        bounds: ``(min, max)`` of ``last_step`` when the caller knows them.

    Returns:
        ``(update, exp_avg, exp_avg_sq)``: the sum of the skipped steps' updates in float64 (to be
        subtracted from the parameter) and the moments after step ``upto`` (float64, or the moments'
        dtype when every row shares its last step).
    """
    m = exp_avg
    if not m.numel():
        return torch.zeros_like(m, dtype=torch.float64), exp_avg, exp_avg_sq
    low, high = bounds if bounds is not None else (int(x) for x in torch.aminmax(last_step))
    window = min(steps.window, steps.upto - low)
    if low == high:  # one last step for every row: one row of factors, broadcast
        skipped = steps.upto - low
        m_after, v_after = m * steps.beta1 ** skipped, exp_avg_sq * steps.beta2 ** skipped
        if window <= 0:
            return torch.zeros_like(m, dtype=torch.float64), m_after, v_after
        factors = cache.factors(low, window, steps, last_step.device) if cache is not None else \
            step_factors(last_step[:1], steps, window)
        s = exp_avg_sq.to(torch.float64, copy=True).sqrt_()
        return _updates(m, s, steps.eps, factors, None, shared=True), m_after, v_after
    m, v = exp_avg.double(), exp_avg_sq.double()
    skipped = (steps.upto - last_step).double()[:, None]
    m_after, v_after = m * torch.pow(steps.beta1, skipped), v * torch.pow(steps.beta2, skipped)
    inverse = None
    if last_step.shape[0] > _GROUP_ROWS_ABOVE:
        firsts, inverse = torch.unique(last_step, return_inverse=True)
    else:
        firsts = last_step
    factors = step_factors(firsts, steps, window)
    return _updates(m, v.sqrt(), steps.eps, factors, inverse), m_after, v_after


def _updates(m, s, eps: float, factors: StepFactors, inverse, shared: bool = False) -> torch.Tensor:
    """``m·S(s)`` in float64, the sum of the skipped steps' updates, from the factors of row ``inverse[i]``
    for row i (``inverse`` None: row i's own; ``shared``: the one row of factors for every row)."""
    if eps == 0.0:
        total = (factors.w / factors.e).sum(1)
        total = (total if inverse is None else total[inverse])[:, None] / s
        return total.nan_to_num_(nan=0.0, posinf=0.0).mul_(m)
    terms = factors.terms
    if shared or inverse is None:
        total = _series_sum(s, eps, *factors.columns)
    else:
        centre, coefficients, terms = factors.centre[inverse], factors.coefficients[inverse], terms[inverse]
        if coefficients.shape[1] <= min(SERIES_TERMS):
            total = _series_sum(s, eps, *_columns(centre, coefficients))
        else:  # many rows: each group of rows with as many terms as it needs
            total = torch.empty_like(s)
            for degree in terms.unique().tolist():
                rows = (terms == degree).nonzero().squeeze(1)
                total[rows] = _series_sum(s[rows], eps, *_columns(centre[rows], coefficients[rows, :max(degree, 1)]))
    if factors.exact:
        exact = ((terms == 0) & (m != 0).any(1)).nonzero().squeeze(1)  # rows never stepped move by 0
        if exact.numel():
            w, e = factors.w, factors.e
            if shared:
                w, e = w.expand(m.shape[0], -1), e.expand(m.shape[0], -1)
            group = exact if inverse is None else inverse[exact]
            total[exact] = _exact_sum(s[exact], eps, w[group], e[group])
    return total.mul_(m)
