"""Times the Approach 3 fit on synthetic Chinchilla-law data and prints the recovery.

  python benchmarks/scaling_fit.py [points] [resamples]

A figure for the README, not a test: it prints seconds for the full 4,500-start
fit (first call includes compilation, second is warm) and the bootstrap.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from gptjax.scaling import fit
from gptjax.scaling.laws import ParametricLaw

CHINCHILLA = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic_points(points: int, noise: float, seed: int) -> tuple[np.ndarray, ...]:
  """N log-uniform in [1e7, 1e10], D in [1e8, 1e11], loss times (1 + noise * normal)."""
  rng = np.random.default_rng(seed)
  n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), points))
  d = np.exp(rng.uniform(np.log(1e8), np.log(1e11), points))
  return n, d, CHINCHILLA.loss(n, d) * (1 + noise * rng.standard_normal(points))


def main(argv: list[str]) -> None:
  points = int(argv[1]) if len(argv) > 1 else 250
  resamples = int(argv[2]) if len(argv) > 2 else 100
  n, d, loss = synthetic_points(points, noise=0.01, seed=0)
  for label in ("cold (with compilation)", "warm"):
    start = time.perf_counter()
    result = fit.fit_parametric(n, d, loss)
    print(
      f"fit, {len(fit.hoffmann_grid())} starts, {points} points, {label}: "
      f"{time.perf_counter() - start:.1f} s"
    )
  start = time.perf_counter()
  fit.bootstrap_parametric(n, d, loss, result, resamples, seed=0)
  print(f"bootstrap, {resamples} resamples: {time.perf_counter() - start:.1f} s")
  for name in ("E", "A", "B", "alpha", "beta"):
    print(
      f"  {name:5s} true {getattr(CHINCHILLA, name):8.3f}  fit {getattr(result.law, name):8.3f}"
    )
  print(f"  objective (summed Huber) {result.objective:.6g}")


if __name__ == "__main__":
  main(sys.argv)
