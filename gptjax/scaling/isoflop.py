"""IsoFLOP profiles (Chinchilla Approach 2): the loss-optimal N at each compute budget.

Per budget C, loss against log N is fitted by a parabola whose vertex is N*(C);
power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted through the vertices.
Runs are assigned to budgets by closeness of their recorded FLOPs (group_budgets),
and bootstrap_isoflop gives the spread of a and b.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gptjax.scaling import noise


@dataclass(frozen=True)
class IsoflopMinimum:
  flops: float
  n_opt: float
  d_opt: float
  loss: float  # the parabola's value at its vertex


@dataclass(frozen=True)
class IsoflopFit:
  minima: tuple[IsoflopMinimum, ...]
  a: float  # N_opt = k_n C^a
  k_n: float
  b: float  # D_opt = k_d C^b
  k_d: float


def group_budgets(flops: np.ndarray, rel_tol: float = 0.1) -> np.ndarray:
  """The nominal budget of each point: the geometric mean of its group.

  Recorded FLOPs miss the planned budget by a little (tokens are rounded to
  whole steps, the count may include attention), so equal-budget runs are
  found by closeness: sorted budgets split wherever neighbours differ by more
  than rel_tol. IsoFLOP budgets are usually 2-10x apart, far beyond that.
  """
  flops = np.asarray(flops, float)
  if flops.size == 0 or not np.all(np.isfinite(flops)) or np.any(flops <= 0):
    raise ValueError(
      f"flops: need finite values > 0 (a log is taken); got {flops.size} values, "
      f"min {np.min(flops, initial=np.inf):g}"
    )
  if not rel_tol > 0:
    raise ValueError(f"rel_tol={rel_tol}: must be > 0, e.g. 0.1 to group budgets within 10%")
  order = np.argsort(flops, kind="stable")
  log_c = np.log(flops[order])
  group = np.concatenate([[0], np.cumsum(np.diff(log_c) > np.log1p(rel_tol))])
  nominal = np.empty_like(flops)
  for g in range(group[-1] + 1):
    members = log_c[group == g]
    if members[-1] - members[0] > np.log1p(rel_tol):
      raise ValueError(
        f"flops: budgets from {np.exp(members[0]):g} to {np.exp(members[-1]):g} "
        f"chain into one group (neighbours within rel_tol={rel_tol}, ends further "
        "apart); pass a smaller rel_tol or check the recorded FLOPs"
      )
    nominal[order[group == g]] = np.exp(np.mean(members))
  return nominal


def _budgets(n: np.ndarray, flops: np.ndarray) -> list[tuple[float, np.ndarray]]:
  """(nominal budget, mask of its points) per budget, each with enough sizes for a parabola."""
  nominal = group_budgets(flops)
  groups = []
  for budget in np.unique(nominal):
    at = nominal == budget
    if np.count_nonzero(at) < 3:
      raise ValueError(
        f"IsoFLOP budget C={budget:g}: {np.count_nonzero(at)} points; a parabola "
        "needs >= 3 model sizes per budget"
      )
    groups.append((float(budget), at))
  return groups


def _parabola(log_n: np.ndarray, loss: np.ndarray, budget: float) -> np.ndarray:
  """Coefficients (c2, c1, c0) of loss ~ c2 x^2 + c1 x + c0 in x = log N, checked convex."""
  coef = np.polyfit(log_n, loss, 2)
  if coef[0] <= 0:
    raise ValueError(
      f"IsoFLOP budget C={budget:g}: loss is not convex in log N (curvature "
      f"{coef[0]:g}); the sizes do not bracket the optimum, add smaller and larger models"
    )
  return coef


def _per_token(flops_per_token: Callable[[float], float] | None) -> Callable[[float], float]:
  return flops_per_token or (lambda params: 6.0 * params)


def isoflop_minima(
  n: np.ndarray,
  loss: np.ndarray,
  flops: np.ndarray,
  flops_per_token: Callable[[float], float] | None = None,
) -> tuple[IsoflopMinimum, ...]:
  """Vertex of a parabola in log N per budget; D* = C / flops_per_token(N*).

  Budgets are grouped first (group_budgets), so recorded FLOPs that miss the
  nominal budget slightly still share a parabola. flops_per_token defaults to
  6 N (Kaplan's C = 6 N D); pass e.g. a function built on
  gptjax.flops.flops_per_token to count attention too.
  """
  n, loss, flops = (np.asarray(x, float) for x in (n, loss, flops))
  per_token = _per_token(flops_per_token)
  minima = []
  for budget, at in _budgets(n, flops):
    c2, c1, c0 = _parabola(np.log(n[at]), loss[at], budget)
    x = -c1 / (2 * c2)
    n_opt = float(np.exp(x))
    minima.append(
      IsoflopMinimum(
        flops=budget,
        n_opt=n_opt,
        d_opt=float(budget / per_token(n_opt)),
        loss=float(c0 + c1 * x + c2 * x * x),
      )
    )
  return tuple(minima)


def fit_isoflop(
  n: np.ndarray,
  loss: np.ndarray,
  flops: np.ndarray,
  flops_per_token: Callable[[float], float] | None = None,
) -> IsoflopFit:
  """Approach 2 end to end: minima per budget, then log-log lines through them."""
  minima = isoflop_minima(n, loss, flops, flops_per_token)
  if len(minima) < 2:
    raise ValueError(f"IsoFLOP fit: {len(minima)} compute budget(s); need >= 2 for an exponent")
  log_c = np.log([m.flops for m in minima])
  a, log_kn = np.polyfit(log_c, np.log([m.n_opt for m in minima]), 1)
  b, log_kd = np.polyfit(log_c, np.log([m.d_opt for m in minima]), 1)
  return IsoflopFit(
    minima=minima, a=float(a), k_n=float(np.exp(log_kn)), b=float(b), k_d=float(np.exp(log_kd))
  )


def bootstrap_isoflop(
  n: np.ndarray,
  loss: np.ndarray,
  flops: np.ndarray,
  resamples: int,
  seed: int,
  loss_sem: np.ndarray | None = None,
  flops_per_token: Callable[[float], float] | None = None,
) -> tuple[np.ndarray, int]:
  """Rows of (a, b, log k_n) refitted on `resamples` noisy copies of the per-budget parabolas.

  A parametric bootstrap, for the reason bootstrap_saturating gives: 4 sizes
  per budget cannot be case-resampled. Copy r of a point is its budget's
  fitted parabola times exp(eps), eps ~ Normal(0, sigma_i), with sigma_i from
  loss_sem (standard errors in loss units) and that parabola's residuals
  (gptjax.scaling.noise); every copy refits all parabolas, their vertices and
  both power laws. A copy in which any parabola is not convex has no minimum
  and is dropped. Returns (rows, dropped), and raises if over half are dropped.
  """
  if resamples < 1:
    raise ValueError(f"bootstrap={resamples}: need >= 1 resample (or skip the bootstrap)")
  n, loss, flops = (np.asarray(x, float) for x in (n, loss, flops))
  sem = None if loss_sem is None else np.asarray(loss_sem, float)
  if sem is not None and sem.shape != loss.shape:
    raise ValueError(f"loss_sem: shape {sem.shape}, need one value per loss {loss.shape}")
  rng = np.random.default_rng(seed)
  per_token = _per_token(flops_per_token)
  budgets, log_n_opt, convex = [], [], np.ones(resamples, bool)
  for budget, at in _budgets(n, flops):
    log_n = np.log(n[at])
    centre = np.polyval(_parabola(log_n, loss[at], budget), log_n)
    if np.any(centre <= 0):
      raise ValueError(
        f"IsoFLOP budget C={budget:g}: the parabola predicts a loss <= 0 at a "
        "measured size; the points do not look like an IsoFLOP profile"
      )
    sigma = noise.relative_sigma(
      np.log(centre / loss[at]), log_n.size - 3, loss[at], None if sem is None else sem[at]
    )
    copies = centre[:, None] * np.exp(sigma[:, None] * rng.standard_normal((log_n.size, resamples)))
    c2, c1, _ = np.polyfit(log_n, copies, 2)
    convex &= c2 > 0
    budgets.append(budget)
    log_n_opt.append(-c1 / (2 * np.where(c2 > 0, c2, 1.0)))
  if len(budgets) < 2:
    raise ValueError(
      f"IsoFLOP bootstrap: {len(budgets)} compute budget(s); need >= 2 for an exponent"
    )
  kept = int(np.count_nonzero(convex))
  if kept * 2 < resamples:
    raise ValueError(
      f"IsoFLOP bootstrap: {resamples - kept} of {resamples} resamples have a budget "
      "whose parabola is not convex; the noise swamps the curvature, so add sizes "
      "either side of each minimum or runs with less noise"
    )
  log_c = np.log(budgets)
  log_n_opt = np.array(log_n_opt)[:, convex]
  n_opt = np.exp(log_n_opt)
  d_opt = np.array([[c / per_token(float(v)) for v in row] for c, row in zip(budgets, n_opt)])
  a, log_k_n = np.polyfit(log_c, log_n_opt, 1)
  b = np.polyfit(log_c, np.log(d_opt), 1)[0]
  return np.column_stack([a, b, log_k_n]), resamples - kept
