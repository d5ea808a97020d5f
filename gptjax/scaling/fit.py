"""Fitting scaling laws to (N, D, loss) points: Chinchilla Approach 3 and L(N).

Approach 3 (Hoffmann et al., 2022, §3.3 and D.2): minimise the Huber(1e-3) loss
of log L_pred - log L, summed over points, with L-BFGS from a 4,500-point grid of
starts, parametrised as E = exp(e), A = exp(a), B = exp(b) so the constants stay
positive and comparable in scale. The objective is summed, not averaged: a mean
shrinks gradients by the number of points and the optimiser's tolerance then
stops it early, the flaw Besiroglu et al. (2024) found in the original fit.

All starts are screened in float32 for a few L-BFGS steps (4,500 x points
evaluations per step make float64 four times slower on CPU); the best `keep`
are then run to convergence in float64, where the sub-1e-3 Huber regime and
exponents near 0.3 need the precision. Runs converge to the same optimum from
many starts, so screening loses nothing in the tested regimes; raise `keep` to check.

How closely E comes back depends on the points more than on the optimiser: E
is an extrapolation to where both reducible terms vanish. With 1% noise on
Chinchilla's own range (N to 1.6e10, D to 5e11, 256 points) E misses by over
1% on ~40% of noise draws although the fit reaches the same optimum as a run
started at the true constants; points reaching N 1e12 and D 1e13 bring that
to ~3%. Read E's bootstrap interval, not its point value.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.scaling import lbfgs, noise
from gptjax.scaling.laws import ParametricLaw, kaplan_loss, saturating_loss

# Hoffmann et al.'s initialisation grid, columns (e, a, b, alpha, beta).
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


def hoffmann_grid() -> np.ndarray:
  """The 5 * 5 * 5 * 6 * 6 = 4,500 starts, rows of (e, a, b, alpha, beta)."""
  return np.array(
    [
      (e, a, b, al, be)
      for al, be, e, a, b in itertools.product(GRID_ALPHA, GRID_BETA, GRID_E, GRID_A, GRID_B)
    ]
  )


def _parametric_log_loss(theta: jax.Array, features: jax.Array) -> jax.Array:
  """log(exp(e) + exp(a - alpha log N) + exp(b - beta log D)), stable for any start."""
  log_n, log_d = features[:, 0], features[:, 1]
  terms = [
    jnp.broadcast_to(theta[0], log_n.shape),
    theta[1] - theta[3] * log_n,
    theta[2] - theta[4] * log_d,
  ]
  return jax.nn.logsumexp(jnp.stack(terms), axis=0)


def _saturating_log_loss(theta: jax.Array, features: jax.Array) -> jax.Array:
  """log(exp(e) + exp(a - alpha log N)): L(N) = E + A N^-alpha."""
  log_n = features[:, 0]
  return jnp.logaddexp(theta[0], theta[1] - theta[2] * log_n)


@dataclass(frozen=True)
class ParametricFit:
  law: ParametricLaw
  objective: float  # summed Huber at the optimum
  theta: np.ndarray  # (e, a, b, alpha, beta), the start for bootstrap refits
  n_points: int


@dataclass(frozen=True)
class SaturatingFit:
  """L(N) = E + A N^-alpha."""

  E: float
  A: float
  alpha: float
  objective: float
  theta: np.ndarray  # (e, a, alpha), the start for bootstrap refits


def drop_highest_loss(k: int, loss: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
  """Remove the k highest-loss points: the smallest, least-trained runs bend the law most."""
  loss = np.asarray(loss, float)
  if not 0 <= k < loss.size:
    raise ValueError(f"exclude_highest={k}: must be in [0, {loss.size - 1}] for {loss.size} points")
  keep = np.sort(np.argsort(loss, kind="stable")[: loss.size - k])
  return (loss[keep],) + tuple(np.asarray(c, float)[keep] for c in columns)


def _check_points(**columns: np.ndarray) -> None:
  for name, values in columns.items():
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
      raise ValueError(
        f"{name}: every value must be finite and > 0 (a log is taken); "
        f"got min {np.nanmin(values):g}"
      )


def fit_parametric(
  n: np.ndarray,
  d: np.ndarray,
  loss: np.ndarray,
  *,
  keep: int = 32,
  screen_steps: int = 30,
  starts: np.ndarray | None = None,
) -> ParametricFit:
  """Fit L(N, D) = E + A/N^alpha + B/D^beta (Approach 3) from `starts` (default: the grid)."""
  n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
  _check_points(N=n, D=d, loss=loss)
  starts = hoffmann_grid() if starts is None else np.asarray(starts, float)
  features = np.stack([np.log(n), np.log(d)], axis=1)
  screened, values, _ = lbfgs.minimise(
    _parametric_log_loss,
    jnp.asarray(starts, jnp.float32),
    jnp.asarray(features, jnp.float32),
    jnp.log(jnp.asarray(loss, jnp.float32)),
    jnp.ones(loss.size, jnp.float32),
    max_steps=screen_steps,
    grad_tol=0.0,
    linesearch_steps=5,
  )
  values = np.where(np.isfinite(values), values, np.inf)
  best = np.asarray(screened)[np.argsort(values, kind="stable")[:keep]]
  theta, value = _polish(_parametric_log_loss, best, features, loss, np.ones(loss.size))
  law = ParametricLaw(
    E=float(np.exp(theta[0])),
    A=float(np.exp(theta[1])),
    B=float(np.exp(theta[2])),
    alpha=float(theta[3]),
    beta=float(theta[4]),
  )
  return ParametricFit(law=law, objective=value, theta=theta, n_points=loss.size)


def _polish(
  predict: lbfgs.LogPredict,
  starts: np.ndarray,
  features: np.ndarray,
  loss: np.ndarray,
  weights: np.ndarray,
) -> tuple[np.ndarray, float]:
  """Float64 L-BFGS to convergence from each start; the lowest objective wins."""
  with jax.enable_x64(True):
    theta, values, _ = lbfgs.minimise(
      predict,
      jnp.asarray(starts, jnp.float64),
      jnp.asarray(features, jnp.float64),
      jnp.log(jnp.asarray(loss, jnp.float64)),
      jnp.asarray(weights, jnp.float64),
      max_steps=1000,
      grad_tol=1e-10,
    )
    values = np.where(np.isfinite(values), np.asarray(values), np.inf)
    best = int(np.argmin(values))
    return np.asarray(theta[best]), float(values[best])


def bootstrap_parametric(
  n: np.ndarray, d: np.ndarray, loss: np.ndarray, fit: ParametricFit, resamples: int, seed: int
) -> np.ndarray:
  """Refit on `resamples` resamples of the points, drawn with replacement.

  A resample is a vector of counts over the points, used as Huber weights, so
  every refit runs in one vmapped float64 L-BFGS from the full fit's optimum.
  Returns rows of (E, A, B, alpha, beta).
  """
  if resamples < 1:
    raise ValueError(f"bootstrap={resamples}: need >= 1 resample (or skip the bootstrap)")
  n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(loss.size, np.full(loss.size, 1.0 / loss.size), size=resamples)
  features = np.stack([np.log(n), np.log(d)], axis=1)
  with jax.enable_x64(True):
    theta, _, _ = lbfgs.minimise(
      _parametric_log_loss,
      jnp.asarray(np.tile(fit.theta, (resamples, 1)), jnp.float64),
      jnp.asarray(features, jnp.float64),
      jnp.log(jnp.asarray(loss, jnp.float64)),
      jnp.asarray(counts, jnp.float64),
      max_steps=1000,
      grad_tol=1e-10,
    )
    theta = np.asarray(theta)
  return np.column_stack([np.exp(theta[:, :3]), theta[:, 3:]])


def fit_saturating_power_law(n: np.ndarray, loss: np.ndarray) -> SaturatingFit:
  """Fit L(N) = E + A N^-alpha with the same log-Huber objective from a 150-start grid."""
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  _check_points(N=n, loss=loss)
  starts = np.array(list(itertools.product(GRID_E, GRID_A, GRID_ALPHA)))
  theta, value = _polish(_saturating_log_loss, starts, np.log(n)[:, None], loss, np.ones(loss.size))
  return SaturatingFit(
    E=float(np.exp(theta[0])),
    A=float(np.exp(theta[1])),
    alpha=float(theta[2]),
    objective=value,
    theta=theta,
  )


def bootstrap_saturating(
  n: np.ndarray,
  loss: np.ndarray,
  fit: SaturatingFit,
  resamples: int,
  seed: int,
  loss_sem: np.ndarray | None = None,
) -> np.ndarray:
  """Refit L(N) = E + A N^-alpha on `resamples` noisy copies of the fitted curve.

  A parametric bootstrap, because a sweep of 5 sizes cannot be case-resampled:
  many resamples keep fewer than 3 distinct sizes for 3 constants. Copy r is
  L_fit(N_i) exp(eps_ri), eps_ri ~ Normal(0, sigma_i), with sigma_i from
  loss_sem (each loss's standard error, in loss units) and the fit's residual
  scatter (gptjax.scaling.noise). The copies centre on the fit, not on the
  measured losses, which already carry one draw of the noise. Every refit runs
  in one vmapped float64 L-BFGS from the fit's optimum. Returns rows of (E, A, alpha).
  """
  if resamples < 1:
    raise ValueError(f"bootstrap={resamples}: need >= 1 resample (or skip the bootstrap)")
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  _check_points(N=n, loss=loss)
  centre = np.log(saturating_loss(n, fit.E, fit.A, fit.alpha))
  sigma = noise.relative_sigma(centre - np.log(loss), loss.size - 3, loss, loss_sem)
  eps = np.random.default_rng(seed).standard_normal((resamples, loss.size)) * sigma
  with jax.enable_x64(True):
    theta, _, _ = lbfgs.minimise(
      _saturating_log_loss,
      jnp.asarray(np.tile(fit.theta, (resamples, 1)), jnp.float64),
      jnp.asarray(np.log(n)[:, None], jnp.float64),
      jnp.asarray(centre + eps, jnp.float64),
      jnp.ones(loss.size, jnp.float64),
      max_steps=1000,
      grad_tol=1e-10,
    )
    theta = np.asarray(theta)
  return np.column_stack([np.exp(theta[:, :2]), theta[:, 2]])


def fit_kaplan_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
  """Fit L = (N_c / N)^alpha_N by least squares in log space; returns (N_c, alpha_N).

  log L = alpha_N log N_c - alpha_N log N is a straight line, so no optimiser is needed.
  """
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  _check_points(N=n, loss=loss)
  slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
  alpha_n = -slope
  return float(np.exp(intercept / alpha_n)), float(alpha_n)


def bootstrap_kaplan(
  n: np.ndarray, loss: np.ndarray, resamples: int, seed: int, loss_sem: np.ndarray | None = None
) -> np.ndarray:
  """Rows of (N_c, alpha_N) refitted on noisy copies of the fitted L = (N_c / N)^alpha_N.

  The same parametric bootstrap as bootstrap_saturating (noise from loss_sem and
  the residuals, gptjax.scaling.noise), for the 2-constant law: it stays
  determined when a sweep's sizes cannot pin the irreducible loss E down.
  """
  if resamples < 1:
    raise ValueError(f"bootstrap={resamples}: need >= 1 resample (or skip the bootstrap)")
  n, loss = np.asarray(n, float), np.asarray(loss, float)
  n_c, alpha_n = fit_kaplan_power_law(n, loss)
  centre = np.log(kaplan_loss(n, n_c, alpha_n))
  sigma = noise.relative_sigma(centre - np.log(loss), loss.size - 2, loss, loss_sem)
  eps = np.random.default_rng(seed).standard_normal((loss.size, resamples)) * sigma[:, None]
  slope, intercept = np.polyfit(np.log(n), centre[:, None] + eps, 1)
  return np.column_stack([np.exp(intercept / -slope), -slope])
