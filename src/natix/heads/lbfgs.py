"""L-BFGS for M independent problems at once, one function call evaluating all of them.

Tier-2 fits are small smooth problems over the same rows: a linear probe for each regularisation
value, each seed, each cross-fitting fold. Their losses share the expensive part (a pass over
the features), so the solver asks for all M losses and gradients in one call and keeps a
separate L-BFGS state, step and stopping decision per member. Member m's iterates are exactly
those of a single-problem L-BFGS on member m (up to the floating-point order of the caller's
batched matrix products).

numpy only (no torch): the caller supplies ``fun(x [M, P]) -> (f [M], g [M, P])``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class LBFGSResult:
    """Final iterates ``x [M, P]``, values ``f [M]``, iterations per member, total calls of fun."""

    x: np.ndarray
    f: np.ndarray
    n_iter: np.ndarray
    n_calls: int
    converged: np.ndarray  # gradient or relative-decrease test met (not stopped by callback or max_iter)


def minimize_lbfgs(fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], x0: np.ndarray, *,
                   max_iter: int = 200, memory: int = 10, gtol: float = 1e-5, ftol: float = 1e-12,
                   max_backtracks: int = 20,
                   callback: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None,
                   callback_every: int = 1) -> LBFGSResult:
    """Minimise ``f_m(x_m)`` for every member m of ``x0 [M, P]``.

    Directions come from the two-loop recursion over each member's last `memory` curvature
    pairs (a pair with ``sᵀy <= 0`` is dropped); steps from a backtracking Armijo search
    (sufficient decrease ``1e-4``) started at 1 (at ``1 / ||g||`` on the first iteration). A
    member stops when ``max|g| <= gtol``, when its relative decrease falls below `ftol`, when
    no step decreases it, or when ``callback(iteration, x, f)`` (called every `callback_every`
    iterations) returns True for it. Stopped members keep their iterate and cost nothing but
    their share of the shared call.
    """
    x = np.array(x0, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x0 must be [members, params], got shape {x.shape}")
    m_count, p = x.shape
    f, g = _call(fun, x)
    calls = 1
    S = np.zeros((memory, m_count, p))
    Y = np.zeros((memory, m_count, p))
    rho = np.zeros((memory, m_count))
    stored = 0  # pairs written so far (ring buffer index = stored % memory)
    active = np.abs(g).max(axis=1) > gtol
    converged = ~active.copy()
    n_iter = np.zeros(m_count, dtype=np.int64)
    gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-12)  # first step ~ unit length
    for it in range(1, max_iter + 1):
        if not active.any():
            break
        d, slope = _direction(g, S, Y, rho, stored, memory, gamma, active)
        x_new, f_new, g_new, stuck, n_calls = _line_search(fun, x, f, g, d, slope, active, max_backtracks)
        calls += n_calls
        moved = active & ~stuck  # a stuck member found no decrease: it is at its numerical minimum
        gamma = _store_pair(S, Y, rho, stored % memory, x_new - x, g_new - g, moved, gamma)
        stored += 1
        decrease = f - f_new
        x, f, g = x_new, f_new, g_new
        n_iter[moved] += 1
        done = moved & ((np.abs(g).max(axis=1) <= gtol) | (decrease <= ftol * np.maximum(np.abs(f), 1.0)))
        converged |= done | stuck
        active &= ~(done | stuck)
        if callback is not None and it % callback_every == 0:
            active &= ~np.asarray(callback(it, x, f), dtype=bool)
    return LBFGSResult(x, f, n_iter, calls, converged)


def _direction(g, S, Y, rho, stored, memory, gamma, active):
    """Search directions ``d [M, P]`` and slopes ``gᵀd [M]``; zero for inactive members."""
    d = -_two_loop(g, S, Y, rho, stored, memory, gamma)
    slope = np.einsum("mp,mp->m", g, d)
    bad = slope >= 0  # not a descent direction: fall back to steepest descent
    if bad.any():
        d[bad] = -g[bad] * gamma[bad, None]
        slope[bad] = np.einsum("mp,mp->m", g[bad], d[bad])
    d[~active] = 0.0
    return d, slope


def _line_search(fun, x, f, g, d, slope, active, max_backtracks):
    """Backtracking Armijo search along `d` for every active member at once.

    Returns the accepted ``x, f, g`` (unchanged for members without a decrease), the members
    that found no decrease, and the calls of `fun` made.
    """
    t = np.where(active, 1.0, 0.0)
    pending = active.copy()
    x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
    calls = 0
    for _ in range(max_backtracks):
        trial = x + t[:, None] * d
        f_try, g_try = _call(fun, trial)
        calls += 1
        ok = pending & np.isfinite(f_try) & (f_try <= f + 1e-4 * t * slope)
        x_new[ok], f_new[ok], g_new[ok] = trial[ok], f_try[ok], g_try[ok]
        pending &= ~ok
        if not pending.any():
            break
        # quadratic interpolation of f along d from f(0), f'(0) and f(t), kept in [0.1 t, 0.5 t]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            curv = f_try - f - slope * t
            t_q = np.where(np.isfinite(f_try) & (curv > 0), -slope * t * t / (2 * curv), 0.1 * t)
        t[pending] = np.clip(t_q, 0.1 * t, 0.5 * t)[pending]
    return x_new, f_new, g_new, pending, calls


def _store_pair(S, Y, rho, slot, s, y, moved, gamma):
    """Write the curvature pair ``(s, y)`` of the members that moved into ring slot `slot` (in place).

    A pair with ``sᵀy <= 0`` (relative to ``yᵀy``) is stored as zeros, a no-op in the two-loop
    recursion. Returns the updated initial Hessian scale ``gamma [M]``.
    """
    sy = np.einsum("mp,mp->m", s, y)
    yy = np.einsum("mp,mp->m", y, y)
    keep = moved & (sy > 1e-10 * np.maximum(yy, 1e-30))
    S[slot], Y[slot] = np.where(keep[:, None], s, 0.0), np.where(keep[:, None], y, 0.0)
    rho[slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
    return np.where(keep, sy / np.maximum(yy, 1e-30), gamma)


def _call(fun, x):
    f, g = fun(x)
    return np.asarray(f, dtype=np.float64), np.asarray(g, dtype=np.float64)


def _two_loop(g, S, Y, rho, stored, memory, gamma):
    """``H g`` per member from the stored pairs (zero pairs are no-ops), initial scale `gamma`."""
    q = g.copy()
    slots = [(stored - 1 - i) % memory for i in range(min(stored, memory))]  # newest first
    a = {}
    for j in slots:
        a[j] = rho[j] * np.einsum("mp,mp->m", S[j], q)
        q -= a[j][:, None] * Y[j]
    r = gamma[:, None] * q
    for j in reversed(slots):
        b = rho[j] * np.einsum("mp,mp->m", Y[j], r)
        r += S[j] * (a[j] - b)[:, None]
    return r
