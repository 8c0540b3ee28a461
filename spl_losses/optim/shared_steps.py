"""The skipped steps of rows that share their last step: one table for every number of steps, kept.

After a full catch-up every row is current at the same step ``T``; until it is read again, a row owes
the zero-gradient steps ``T + 1 .. upto``. For rows last stepped at ``T``, the factors ``w_k``, ``e_k``
(:func:`~spl_losses.optim.skipped_steps.skipped_step_weights`) depend only on ``T`` and ``k`` under a
constant learning rate, so with one centre ``c`` for every window the polynomial's coefficients for the
first ``n`` steps are cumulative sums over ``k <= n`` of ``w_k·(-x_k)^p``, and so are the numerator and
denominator of its error bound (the expansion holds for any ``c > 0``; see
:mod:`spl_losses.optim.skipped_steps`). :class:`SharedStepFactors` builds that table once per ``T`` and
reads the factors of any number of skipped steps from it: the rows a shuffled epoch reads after a
checkpoint (which catches every row up) all share ``T``, and pay O(P) per entry and nothing per row.
"""
from typing import Dict

import torch

from .skipped_steps import SERIES_TERMS, SkippedSteps, StepFactors, _columns, skipped_step_weights, step_factors

__all__ = ["SharedStepFactors"]

#: Tables kept (one per shared last step and set of constants; the oldest is dropped first).
TABLES_KEPT = 16


class _Table:
    """Factors of the first ``n`` skipped steps after step ``first``, for every ``n`` up to the window."""

    def __init__(self, first: int, steps: SkippedSteps, device):
        window = steps.window
        # every step of the window, none masked (a constant rate: the steps after upto have the same one)
        self.w, self.e = skipped_step_weights(torch.tensor([first], dtype=torch.int64, device=device),
                                              steps._replace(upto=first + window), window)
        self.eps = steps.eps
        self._by_count: Dict[int, StepFactors] = {}
        if self.eps == 0.0:
            return
        w, e = self.w[0], self.e[0]
        self.centre = ((w * e).sum() / w.sum()).nan_to_num_(nan=1.0).reshape(1)  # no weight: any centre
        ratio = e / self.centre
        x = ratio - 1.0
        most = SERIES_TERMS[-1]
        powers = torch.cumprod((-x)[:, None].expand(-1, most - 1), dim=1)
        self.table = torch.cat([w[:, None], w[:, None] * powers], dim=1).cumsum(0)  # row n-1: n steps
        # the error bound of P terms for the first n steps: cumulative sums of numerator and denominator
        weight, lower = w / ratio.clamp(max=1.0), (w / ratio.clamp(min=1.0)).cumsum(0).mul_(steps.tol)
        self.terms = torch.zeros(window, dtype=torch.int64, device=w.device)
        absolute = x.abs()
        for count in SERIES_TERMS:
            passes = (weight * absolute.pow(count)).cumsum(0) <= lower
            self.terms = torch.where((self.terms == 0) & passes, count, self.terms)
        self.terms = self.terms.tolist()

    def factors(self, count: int) -> StepFactors:
        """The factors of the first ``count`` skipped steps (1 <= count <= the window)."""
        factors = self._by_count.get(count)
        if factors is None:
            w, e = self.w[:, :count], self.e[:, :count]
            if self.eps == 0.0:
                factors = StepFactors(w, e, None, None, None, False)
            else:
                terms = self.terms[count - 1]
                coefficients = self.table[count - 1:count, :max(terms, 1)]
                factors = StepFactors(w, e, self.centre, coefficients, torch.tensor([terms], device=w.device),
                                      terms == 0, _columns(self.centre, coefficients))
            self._by_count[count] = factors
        return factors


class SharedStepFactors:
    """Factors of the skipped steps of rows that share their last step, kept between catch-ups.

    The optimizer owns one and passes it to
    :func:`~spl_losses.optim.skipped_steps.skipped_step_updates`. Under a constant learning rate the
    factors of a last step are computed once (a table for every number of skipped steps); otherwise
    they are computed for the call.
    """

    def __init__(self):
        self._tables: Dict[tuple, _Table] = {}

    def factors(self, first: int, count: int, steps: SkippedSteps, device) -> StepFactors:
        """The factors of ``count`` skipped steps of rows last stepped at ``first``.

        Args:
            first: The rows' last step.
            count: Skipped steps summed (at most ``steps.window``).
            steps: The steps owed.
            device: The rows' device.
        """
        if steps.lr_values.numel() != 1:  # a changing rate: the factors depend on upto
            return step_factors(torch.tensor([first], dtype=torch.int64, device=device), steps, count)
        key = (first, float(steps.lr_values[0]), steps.beta1, steps.beta2, steps.eps, steps.window, steps.tol,
               str(device))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= TABLES_KEPT:
                self._tables.pop(next(iter(self._tables)))
            table = self._tables[key] = _Table(first, steps, device)
        return table.factors(count)
