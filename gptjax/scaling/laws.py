"""Closed forms of the scaling laws the fitters estimate.

Kept apart from the fitting code so reports, tests and plots evaluate a law the
same way the fitter scored it. Conventions: N is parameters, D training tokens,
C = 6 N D training FLOPs (Kaplan et al., 2020; Hoffmann et al., 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParametricLaw:
  """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al., 2022, eq. 2)."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def loss(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (
      self.E
      + self.A / np.asarray(n, float) ** self.alpha
      + self.B / np.asarray(d, float) ** self.beta
    )

  def frontier(self, flops: np.ndarray | float) -> Frontier:
    """The compute-optimal allocation this law implies (Hoffmann et al., eq. 4)."""
    return efficient_frontier(self, flops)


@dataclass(frozen=True)
class Frontier:
  """N_opt(C) = G (C/6)^a and D_opt(C) = G^-1 (C/6)^b under C = 6 N D."""

  G: float
  a: float
  b: float
  flops: np.ndarray
  n_opt: np.ndarray
  d_opt: np.ndarray

  @property
  def tokens_per_param(self) -> np.ndarray:
    return self.d_opt / self.n_opt


def efficient_frontier(law: ParametricLaw, flops: np.ndarray | float) -> Frontier:
  """Minimise L(N, C / 6N) over N in closed form.

  G = (alpha A / (beta B))^(1 / (alpha + beta)), a = beta / (alpha + beta),
  b = alpha / (alpha + beta); a + b = 1 because N D = C / 6.
  """
  total = law.alpha + law.beta
  if law.alpha <= 0 or law.beta <= 0:
    raise ValueError(
      f"efficient frontier: alpha={law.alpha:g}, beta={law.beta:g}; both must be "
      "> 0 for a finite optimum (the fit found no trade-off between N and D)"
    )
  g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / total)
  a, b = law.beta / total, law.alpha / total
  c = np.asarray(flops, float)
  return Frontier(G=g, a=a, b=b, flops=c, n_opt=g * (c / 6.0) ** a, d_opt=(c / 6.0) ** b / g)


def kaplan_loss(n: np.ndarray, n_c: float, alpha_n: float) -> np.ndarray:
  """L(N) = (N_c / N)^alpha_N, Kaplan et al. (2020) eq. 1.1 (no irreducible term)."""
  return (n_c / np.asarray(n, float)) ** alpha_n


def saturating_loss(n: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
  """L(N) = E + A N^-alpha: a power law that levels off at the irreducible loss E."""
  return e + a * np.asarray(n, float) ** -alpha
