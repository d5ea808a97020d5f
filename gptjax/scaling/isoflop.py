"""IsoFLOP profiles (Chinchilla Approach 2): the loss-optimal N at each compute budget.

Per budget C, loss against log N is fitted by a parabola whose vertex is N*(C);
power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted through the vertices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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


def isoflop_minima(n: np.ndarray, loss: np.ndarray, flops: np.ndarray,
                   flops_per_token: Callable[[float], float] | None = None
                   ) -> tuple[IsoflopMinimum, ...]:
  """Vertex of a parabola in log N per distinct budget; D* = C / flops_per_token(N*).

  flops_per_token defaults to 6 N (Kaplan's C = 6 N D); pass e.g. a function
  built on gptjax.flops.flops_per_token to count attention too.
  """
  n, loss, flops = (np.asarray(x, float) for x in (n, loss, flops))
  per_token = flops_per_token or (lambda params: 6.0 * params)
  minima = []
  for budget in np.unique(flops):
    at = flops == budget
    if np.count_nonzero(at) < 3:
      raise ValueError(f"IsoFLOP budget C={budget:g}: {np.count_nonzero(at)} points; a parabola "
                       "needs >= 3 model sizes per budget")
    c2, c1, c0 = np.polyfit(np.log(n[at]), loss[at], 2)
    if c2 <= 0:
      raise ValueError(f"IsoFLOP budget C={budget:g}: loss is not convex in log N (curvature "
                       f"{c2:g}); the sizes do not bracket the optimum, add smaller and larger models")
    x = -c1 / (2 * c2)
    n_opt = float(np.exp(x))
    minima.append(IsoflopMinimum(flops=float(budget), n_opt=n_opt,
                                 d_opt=float(budget / per_token(n_opt)),
                                 loss=float(c0 + c1 * x + c2 * x * x)))
  return tuple(minima)


def fit_isoflop(n: np.ndarray, loss: np.ndarray, flops: np.ndarray,
                flops_per_token: Callable[[float], float] | None = None) -> IsoflopFit:
  """Approach 2 end to end: minima per budget, then log-log lines through them."""
  minima = isoflop_minima(n, loss, flops, flops_per_token)
  if len(minima) < 2:
    raise ValueError(f"IsoFLOP fit: {len(minima)} compute budget(s); need >= 2 for an exponent")
  log_c = np.log([m.flops for m in minima])
  a, log_kn = np.polyfit(log_c, np.log([m.n_opt for m in minima]), 1)
  b, log_kd = np.polyfit(log_c, np.log([m.d_opt for m in minima]), 1)
  return IsoflopFit(minima=minima, a=float(a), k_n=float(np.exp(log_kn)), b=float(b),
                    k_d=float(np.exp(log_kd)))
