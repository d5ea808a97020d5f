"""The loss-compute envelope of learning curves (Chinchilla Approach 1).

At each compute C, the lowest loss any run reached with C FLOPs is the
frontier, and the run that reached it is the compute-optimal size there.
Each curve is interpolated linearly in (log C, log L) between its evals, and
only inside its own range: nothing says how a run would continue.

The exponents a (N_opt ~ C^a) and b (D_opt ~ C^b) are fitted through the
points where two runs' curves cross on the envelope, not through every grid
point. The argmin over a few runs is a staircase: its grid points are not
independent (their least-squares standard error would be far too small), and
its first and last steps end wherever runs happen to start and stop (on
curves drawn from Chinchilla's law, a line through every grid point gives
a = 0.35-0.39 against a true 0.45; through the crossings, 0.4515). A
crossing of runs N1 and N2 instead marks the C at which the optimum lies
between them; for log-spaced sizes it sits at a fixed offset from
sqrt(N1 N2) in log N, because under L = E + A/N^alpha + B/D^beta the loss
profile at fixed C keeps its shape in log N / N_opt(C), so the slope is
unbiased. Handovers where one run simply ends (or starts) are not crossings
and are skipped; repeated crossings of one pair (noisy curves) count once.

Caveat: a point inside a run's schedule is not the loss a run that stopped
there would reach, because its learning rate has not decayed yet (mid-cosine
losses are too high). Hoffmann et al. (2022) therefore trained each size with
several schedule lengths and name the fixed schedule as one reason Kaplan et
al.'s (2020) exponent came out larger; Kaplan et al. used single runs and
accepted the bias. Curves from one schedule per size, as a sweep here
produces, carry it, so read a and b from them as approximate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from gptjax.scaling import fit


@dataclass(frozen=True)
class Curve:
  """One run's learning curve at its evals (metrics.jsonl eval rows)."""

  n: float  # non-embedding parameters
  flops: np.ndarray  # cumulative training FLOPs at each eval
  tokens: np.ndarray  # cumulative training tokens at each eval
  loss: np.ndarray  # eval loss


@dataclass(frozen=True)
class Envelope:
  """The envelope on a log grid of C, its crossings and the laws fitted to them.

  a, b, their intervals and the L(C) constants are nan when the envelope has
  fewer than 2 crossings (the intervals: fewer than 3), e.g. when every
  handover is a run ending.
  """

  flops: np.ndarray  # grid of C that some run reaches
  loss: np.ndarray  # lowest loss at each C
  n: np.ndarray  # N of the run that reaches it
  tokens: np.ndarray  # that run's tokens at C
  crossing_flops: np.ndarray  # C where two runs' curves cross on the envelope
  crossing_n: np.ndarray  # sqrt(N1 N2) of the two runs
  crossing_tokens: np.ndarray  # geometric mean of their tokens at the crossing
  a: float  # N_opt = k_n C^a, least squares in log-log through the crossings
  a_ci95: tuple[float, float]  # t interval with (crossings - 2) degrees of freedom
  k_n: float
  b: float  # D_opt = k_d C^b
  b_ci95: tuple[float, float]
  k_d: float
  E: float  # L(C) = E + K C^-gamma, fitted where runs compete (see compute_envelope)
  K: float
  gamma: float


def _checked(curve: Curve, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """log FLOPs, log tokens, log loss of a curve's evals after training started."""
  flops, tokens, loss = (np.asarray(x, float) for x in (curve.flops, curve.tokens, curve.loss))
  if not flops.shape == tokens.shape == loss.shape or flops.ndim != 1:
    raise ValueError(
      f"curves[{index}]: flops, tokens and loss must be 1-d and equally long; got "
      f"shapes {flops.shape}, {tokens.shape}, {loss.shape}"
    )
  trained = flops > 0  # an eval before the first step has no place on a log axis
  flops, tokens, loss = flops[trained], tokens[trained], loss[trained]
  if flops.size < 2 or np.any(np.diff(flops) <= 0):
    raise ValueError(
      f"curves[{index}]: need >= 2 evals with FLOPs > 0, strictly increasing; got "
      f"{flops.size} with FLOPs {flops.tolist()[:6]}"
    )
  for name, values in (("tokens", tokens), ("loss", loss)):
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
      raise ValueError(
        f"curves[{index}].{name}: every value after the first step must be finite "
        f"and > 0; got min {np.nanmin(values):g}"
      )
  if not curve.n > 0:
    raise ValueError(f"curves[{index}].n={curve.n}: must be > 0 (non-embedding parameters)")
  return np.log(flops), np.log(tokens), np.log(loss)


def _on_grid(log_grid: np.ndarray, log_x: np.ndarray, log_y: np.ndarray) -> np.ndarray:
  """Linear interpolation in log-log, nan outside the curve's own range."""
  inside = (log_grid >= log_x[0]) & (log_grid <= log_x[-1])
  return np.where(inside, np.interp(log_grid, log_x, log_y), np.nan)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, tuple[float, float], float]:
  """Slope, its 95% t interval and intercept of a least-squares line; nan where underdetermined."""
  if x.size < 2:
    return np.nan, (np.nan, np.nan), np.nan
  slope, intercept = np.polyfit(x, y, 1)
  if x.size < 3:
    return float(slope), (np.nan, np.nan), float(intercept)
  residual = y - (slope * x + intercept)
  se = np.sqrt(np.sum(residual**2) / (x.size - 2) / np.sum((x - x.mean()) ** 2))
  half = stats.t.ppf(0.975, x.size - 2) * se
  return float(slope), (float(slope - half), float(slope + half)), float(intercept)


def _loss_law(
  log_grid: np.ndarray, log_loss: np.ndarray, log_crossings: np.ndarray
) -> tuple[float, float, float]:
  """(E, K, gamma) of L(C) = E + K C^-gamma between the first and last crossing.

  Only there is the envelope a frontier: before the first crossing and after
  the last it is one run's own curve, which levels off towards that run's
  size-limited loss. A saturating law, not Kaplan's pure power law, because
  an envelope spanning several decades bends towards the irreducible loss.
  """
  between = (
    (log_grid >= log_crossings[0]) & (log_grid <= log_crossings[-1])
    if (log_crossings.size >= 2)
    else np.zeros(log_grid.size, bool)
  )
  if np.count_nonzero(between) < 3:
    return np.nan, np.nan, np.nan
  law = fit.fit_saturating_power_law(np.exp(log_grid[between]), np.exp(log_loss[between]))
  return law.E, law.A, law.alpha


def compute_envelope(curves: Sequence[Curve], points: int = 50) -> Envelope:
  """The envelope of `curves` on `points` log-spaced values of C, and its frontier laws."""
  if len(curves) < 2:
    raise ValueError(
      f"curves: {len(curves)} run(s); an envelope needs >= 2 runs of different sizes"
    )
  if points < 2:
    raise ValueError(f"points={points}: need >= 2 grid values of C")
  logs = [_checked(curve, i) for i, curve in enumerate(curves)]
  n = np.array([float(curve.n) for curve in curves])
  log_grid = np.linspace(min(f[0] for f, _, _ in logs), max(f[-1] for f, _, _ in logs), points)
  log_loss = np.array([_on_grid(log_grid, f, y) for f, _, y in logs])  # (runs, points)
  log_tokens = np.array([_on_grid(log_grid, f, t) for f, t, _ in logs])
  reached = np.any(np.isfinite(log_loss), axis=0)
  log_grid, log_loss, log_tokens = log_grid[reached], log_loss[:, reached], log_tokens[:, reached]
  best = np.argmin(np.where(np.isfinite(log_loss), log_loss, np.inf), axis=0)
  columns = np.arange(log_grid.size)

  crossings: dict[tuple[int, int], list[tuple[float, float]]] = {}
  for j in np.flatnonzero(best[:-1] != best[1:]):
    old, new = best[j], best[j + 1]
    gap = log_loss[new, j : j + 2] - log_loss[old, j : j + 2]  # >= 0 at j, <= 0 at j + 1
    if not np.all(np.isfinite(gap)):
      continue  # one run ends or starts here: a handover, not a crossing
    t = gap[0] / (gap[0] - gap[1]) if gap[0] != gap[1] else 0.5
    log_c = log_grid[j] + t * (log_grid[j + 1] - log_grid[j])
    log_d = 0.5 * sum(
      np.interp(log_c, log_grid[j : j + 2], log_tokens[r, j : j + 2]) for r in (old, new)
    )
    crossings.setdefault((min(old, new), max(old, new)), []).append((log_c, log_d))
  pairs = sorted(crossings)
  log_cx = np.array([np.mean([c for c, _ in crossings[p]]) for p in pairs])
  log_dx = np.array([np.mean([d for _, d in crossings[p]]) for p in pairs])
  log_nx = np.array([0.5 * np.log(n[i] * n[k]) for i, k in pairs])
  order = np.argsort(log_cx)
  log_cx, log_dx, log_nx = log_cx[order], log_dx[order], log_nx[order]

  a, a_ci, log_kn = _line(log_cx, log_nx)
  b, b_ci, log_kd = _line(log_cx, log_dx)
  envelope_loss = log_loss[best, columns]
  loss_law = _loss_law(log_grid, envelope_loss, log_cx)
  return Envelope(
    flops=np.exp(log_grid),
    loss=np.exp(envelope_loss),
    n=n[best],
    tokens=np.exp(log_tokens[best, columns]),
    crossing_flops=np.exp(log_cx),
    crossing_n=np.exp(log_nx),
    crossing_tokens=np.exp(log_dx),
    a=a,
    a_ci95=a_ci,
    k_n=float(np.exp(log_kn)),
    b=b,
    b_ci95=b_ci,
    k_d=float(np.exp(log_kd)),
    E=loss_law[0],
    K=loss_law[1],
    gamma=loss_law[2],
  )
