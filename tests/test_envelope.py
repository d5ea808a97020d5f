"""The compute envelope (Approach 1) recovers the frontier of a known law."""

import numpy as np
import pytest

from gptjax.scaling.envelope import Curve, compute_envelope
from gptjax.scaling.laws import ParametricLaw, saturating_loss

CHINCHILLA = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _curves(
  sizes: np.ndarray,
  tokens_per_param: tuple[float, float],
  evals: int = 30,
  noise: float = 0.0,
  seed: int = 0,
) -> list[Curve]:
  """Runs whose loss after D tokens is L(N, D), as if each eval ended its own schedule."""
  rng = np.random.default_rng(seed)
  curves = []
  for n in sizes:
    d = n * np.geomspace(*tokens_per_param, evals)
    loss = CHINCHILLA.loss(n, d) * np.exp(noise * rng.standard_normal(evals))
    curves.append(Curve(n=n, flops=6 * n * d, tokens=d, loss=loss))
  return curves


@pytest.mark.slow
def test_envelope_recovers_the_chinchilla_frontier_exponents():
  curves = _curves(np.geomspace(1e8, 1e10, 8), (0.5, 2000.0))
  env = compute_envelope(curves, points=50)
  total = CHINCHILLA.alpha + CHINCHILLA.beta
  assert env.a == pytest.approx(CHINCHILLA.beta / total, abs=0.002)
  assert env.b == pytest.approx(CHINCHILLA.alpha / total, abs=0.002)
  assert env.a_ci95[0] < env.a < env.a_ci95[1] and env.a_ci95[1] - env.a_ci95[0] < 0.01
  assert env.b_ci95[0] < env.b < env.b_ci95[1]
  assert env.crossing_flops.size == 7  # each neighbouring pair of sizes crosses once
  # the envelope is the lowest curve: no run beats it anywhere inside its own range
  for curve in curves:
    inside = (env.flops >= curve.flops[0]) & (env.flops <= curve.flops[-1])
    own = np.exp(np.interp(np.log(env.flops[inside]), np.log(curve.flops), np.log(curve.loss)))
    assert np.all(env.loss[inside] <= own * (1 + 1e-12))
    assert np.all(
      env.loss[inside][env.n[inside] == curve.n] == pytest.approx(own[env.n[inside] == curve.n])
    )
  # between the crossings the envelope is the frontier E + K C^-gamma, gamma = alpha beta / total
  between = (env.flops >= env.crossing_flops[0]) & (env.flops <= env.crossing_flops[-1])
  fitted = saturating_loss(env.flops[between], env.E, env.K, env.gamma)
  assert np.max(np.abs(np.log(fitted / env.loss[between]))) < 0.005
  assert env.gamma == pytest.approx(CHINCHILLA.alpha * CHINCHILLA.beta / total, abs=0.005)
  assert env.E == pytest.approx(CHINCHILLA.E, rel=0.01)


def test_a_run_that_ends_before_being_overtaken_is_a_handover_not_a_crossing():
  # the small run stops at 2 tokens per parameter, long before the larger one catches up
  small, large = _curves(np.array([1e8]), (0.5, 2.0)) + _curves(np.array([1e9]), (1e-3, 2000.0))
  env = compute_envelope([small, large])
  assert set(env.n) == {1e8, 1e9} and env.crossing_flops.size == 0
  assert np.isnan(env.a) and np.isnan(env.a_ci95[0]) and np.isnan(env.b)


@pytest.mark.slow
def test_noisy_curves_give_an_interval_that_covers_the_truth():
  curves = _curves(np.geomspace(1e8, 1e10, 8), (0.5, 2000.0), noise=0.002, seed=0)
  env = compute_envelope(curves)
  truth = CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta)
  assert env.a_ci95[0] <= truth <= env.a_ci95[1]
  assert abs(env.a - truth) < 0.05


def test_envelope_inputs_are_checked():
  one = _curves(np.array([1e8]), (0.5, 20.0))
  with pytest.raises(ValueError, match="curves: 1 run"):
    compute_envelope(one)
  bad = Curve(n=2e8, flops=np.array([0.0, 2.0, 1.0]), tokens=np.ones(3), loss=np.ones(3))
  with pytest.raises(ValueError, match=r"curves\[1\]: need >= 2 evals with FLOPs > 0, strictly"):
    compute_envelope(one + [bad])
  zero_loss = Curve(n=2e8, flops=np.array([1.0, 2.0]), tokens=np.ones(2), loss=np.array([1.0, 0.0]))
  with pytest.raises(ValueError, match=r"curves\[1\]\.loss"):
    compute_envelope(one + [zero_loss])
