"""How noisy each measured loss is, for the parametric bootstraps.

A sweep of 4 or 5 sizes cannot be case-resampled: most resamples keep fewer
distinct sizes than a 3-constant law has constants. The bootstraps instead
refit noisy copies of the fitted curve, which needs a noise level per point.

Two things make a final loss miss the law: the eval loss's own standard error
(a finite eval set), and scatter the SEM does not see (seed-to-seed variation,
a law that is not quite right). Summing the residuals' variance and the SEM
would count the measurement noise twice, since the residuals already contain
it. The model is instead var_i = sem_i^2 + tau^2 in relative (log) terms, with
the extra scatter tau^2 estimated by moments, max(0, sum residual^2 / dof -
mean sem^2), as random-effects meta-analysis does (DerSimonian and Laird, 1986). With 1 or 2 degrees of
freedom tau is itself rough, so intervals from a 5-point fit are approximate.
"""

from __future__ import annotations

import numpy as np


def relative_sigma(
  log_residual: np.ndarray, dof: int, loss: np.ndarray, loss_sem: np.ndarray | None
) -> np.ndarray:
  """Per-point sd of log loss: sqrt((loss_sem / loss)^2 + tau^2).

  log_residual is log(fitted / measured) per point and dof the points minus
  the fitted constants; loss_sem is each loss's standard error in loss units.
  """
  loss = np.asarray(loss, float)
  log_residual = np.asarray(log_residual, float)
  if loss_sem is None:
    sem = np.zeros_like(loss)
  else:
    loss_sem = np.asarray(loss_sem, float)
    if loss_sem.shape != loss.shape or not np.all(np.isfinite(loss_sem)) or np.any(loss_sem < 0):
      raise ValueError(
        f"loss_sem: need one finite value >= 0 per loss ({loss.size}); got shape "
        f"{loss_sem.shape}, min {np.min(loss_sem, initial=np.inf):g}"
      )
    sem = loss_sem / loss
  if dof <= 0 and not np.any(sem > 0):
    raise ValueError(
      f"loss_sem: not given, and {loss.size} points leave {dof} residual degrees "
      "of freedom to estimate the noise from; pass loss_sem or add points"
    )
  excess = np.sum(log_residual**2) / dof - np.mean(sem**2) if dof > 0 else 0.0
  return np.sqrt(sem**2 + max(excess, 0.0))
