"""Many L-BFGS runs at once on a log-space Huber objective.

Scaling-law fits are non-convex, so the answer depends on where the optimiser
starts; Hoffmann et al. (2022) run L-BFGS from a grid of starts and keep the
best. One jit-compiled while_loop, vmapped over starts (or over bootstrap
weights), runs thousands of them in one XLA program instead of a Python loop.
The caller decides the precision: run under `jax.enable_x64(True)` for float64.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax
import optax.tree

# theta (k,), features (n, f) -> predicted log loss (n,)
LogPredict = Callable[[jax.Array, jax.Array], jax.Array]

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta on log-loss residuals


def objective(
  predict: LogPredict,
  theta: jax.Array,
  features: jax.Array,
  log_loss: jax.Array,
  weights: jax.Array,
  delta: float = HUBER_DELTA,
  reduce: str = "sum",
) -> jax.Array:
  """Huber(delta) of log L_pred - log L, summed over points (weights count repeats).

  `reduce="mean"` divides by the total weight; it exists only so tests can show
  why it is not the default: it shrinks gradients by the number of points, so an
  absolute gradient tolerance stops the optimiser early.
  """
  residual = predict(theta, features) - log_loss
  total = jnp.sum(weights * optax.losses.huber_loss(residual, delta=delta))
  return total / jnp.sum(weights) if reduce == "mean" else total


@partial(jax.jit, static_argnames=("predict", "max_steps", "linesearch_steps", "reduce"))
def minimise(
  predict: LogPredict,
  starts: jax.Array,
  features: jax.Array,
  log_loss: jax.Array,
  weights: jax.Array,
  max_steps: int = 500,
  grad_tol: float = 1e-9,
  linesearch_steps: int = 20,
  reduce: str = "sum",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """L-BFGS from every row of `starts` (S, k); log_loss and weights are (n,) or one row per
  start (S, n): weight rows refit bootstrap resamples, log_loss rows perturbed copies of the data.

  Each run stops when its gradient norm falls below grad_tol or after
  max_steps; vmap keeps stepping the others until all are done. Returns the
  final parameters (S, k), objective values (S,) and step counts (S,).
  """
  solver = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(linesearch_steps))

  def run(theta0: jax.Array, y: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    def fun(theta: jax.Array) -> jax.Array:
      return objective(predict, theta, features, y, w, reduce=reduce)

    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
      theta, state = carry
      value, grad = value_and_grad(theta, state=state)
      updates, state = solver.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
      return optax.apply_updates(theta, updates), state

    def going(carry) -> jax.Array:
      _, state = carry
      count = optax.tree.get(state, "count")
      grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
      return (count == 0) | ((count < max_steps) & (grad_norm >= grad_tol))

    theta, state = jax.lax.while_loop(going, step, (theta0, solver.init(theta0)))
    return theta, fun(theta), optax.tree.get(state, "count")

  axes = tuple(0 if x.ndim == 2 else None for x in (log_loss, weights))
  return jax.vmap(run, in_axes=(0, *axes))(starts, log_loss, weights)
