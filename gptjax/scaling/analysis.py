"""Which scaling analyses a set of runs supports, and their results.

A sweep's design decides what can be fitted: a size ladder at one token budget
gives L(N); IsoFLOP budgets give Approach 2; runs whose D varies independently
of N support Approach 3; any learning curves give the compute envelope
(Approach 1). Each analysis runs only when its design holds, and otherwise
says why it was skipped, so a report never shows a fit its data cannot support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gptjax.scaling import envelope, fit, isoflop, laws
from gptjax.scaling.runs import Run

MIN_POINTS_LOSS_VS_N = 4  # 3 constants: a fourth point is the first that tests the law
MIN_POINTS_PARAMETRIC = 8  # 5 constants


@dataclass(frozen=True)
class LossVsN:
  """L(N) = E + A N^-alpha and Kaplan's (N_c / N)^alpha_N on final losses, plus the held-out check."""

  n: np.ndarray
  loss: np.ndarray
  sem: np.ndarray
  fit: fit.SaturatingFit
  samples: np.ndarray  # bootstrap rows (E, A, alpha)
  kaplan: tuple[float, float]  # (N_c, alpha_N)
  kaplan_samples: np.ndarray  # bootstrap rows (N_c, alpha_N)
  heldout: HeldOut | None

  @property
  def e_identified(self) -> bool:
    """Whether the sizes pin E down: its interval must stay clear of 0 (E = 0 is Kaplan's law)."""
    return float(np.percentile(self.samples[:, 0], 2.5)) > 0.01 * float(self.loss.min())


@dataclass(frozen=True)
class Prediction:
  value: float
  ci95: tuple[float, float]


@dataclass(frozen=True)
class HeldOut:
  """Fit without the largest model, then predict it: the extrapolation a sweep is run for."""

  n: float
  loss: float
  fit: fit.SaturatingFit
  saturating: Prediction
  kaplan: Prediction
  kaplan_law: tuple[float, float]  # (N_c, alpha_N) without the largest model

  def relative_error(self, p: Prediction) -> float:
    return (p.value - self.loss) / self.loss


@dataclass(frozen=True)
class Isoflop:
  n: np.ndarray
  loss: np.ndarray
  budget: np.ndarray  # each point's nominal budget
  fit: isoflop.IsoflopFit
  samples: np.ndarray  # bootstrap rows (a, b, log k_n)
  dropped: int  # resamples without a convex parabola at some budget


@dataclass(frozen=True)
class Parametric:
  n: np.ndarray
  d: np.ndarray
  loss: np.ndarray
  fit: fit.ParametricFit
  samples: np.ndarray  # bootstrap rows (E, A, B, alpha, beta)


@dataclass
class Analysis:
  runs: list[Run]
  loss_vs_n: LossVsN | None = None
  isoflop: Isoflop | None = None
  parametric: Parametric | None = None
  envelope: envelope.Envelope | None = None
  skipped: list[str] = field(default_factory=list)  # analyses not run, and why


def _ci(samples: np.ndarray) -> list[float]:
  return [float(v) for v in np.percentile(samples, [2.5, 97.5])]


def _prediction(values: np.ndarray, central: float) -> Prediction:
  lo, hi = _ci(values[np.isfinite(values)])
  return Prediction(value=float(central), ci95=(lo, hi))


def _loss_vs_n(runs: list[Run], resamples: int, seed: int) -> LossVsN:
  n = np.array([r.n for r in runs], float)
  loss = np.array([r.final_eval_loss for r in runs])
  sem = np.array([r.final_eval_sem for r in runs])
  sem_or_none = sem if np.all(np.isfinite(sem)) else None
  law = fit.fit_saturating_power_law(n, loss)
  samples = fit.bootstrap_saturating(n, loss, law, resamples, seed, loss_sem=sem_or_none)
  kaplan_samples = fit.bootstrap_kaplan(n, loss, resamples, seed, loss_sem=sem_or_none)
  heldout = None
  if n.size > MIN_POINTS_LOSS_VS_N:
    keep = n < n.max()
    part_sem = None if sem_or_none is None else sem[keep]
    largest = float(n.max())
    partial = fit.fit_saturating_power_law(n[keep], loss[keep])
    rows = fit.bootstrap_saturating(n[keep], loss[keep], partial, resamples, seed, part_sem)
    with np.errstate(over="ignore", invalid="ignore"):
      saturating = rows[:, 0] + rows[:, 1] * largest ** -rows[:, 2]
    kaplan_law = fit.fit_kaplan_power_law(n[keep], loss[keep])
    k_rows = fit.bootstrap_kaplan(n[keep], loss[keep], resamples, seed, part_sem)
    heldout = HeldOut(
      n=largest,
      loss=float(loss[~keep][0]),
      fit=partial,
      saturating=_prediction(
        saturating, laws.saturating_loss(largest, partial.E, partial.A, partial.alpha)
      ),
      kaplan=_prediction(
        laws.kaplan_loss(largest, k_rows[:, 0], k_rows[:, 1]),
        laws.kaplan_loss(largest, *kaplan_law),
      ),
      kaplan_law=kaplan_law,
    )
  return LossVsN(
    n=n,
    loss=loss,
    sem=sem,
    fit=law,
    samples=samples,
    kaplan=fit.fit_kaplan_power_law(n, loss),
    kaplan_samples=kaplan_samples,
    heldout=heldout,
  )


def analyse(runs: list[Run], resamples: int = 200, seed: int = 0) -> Analysis:
  """Every analysis the completed runs support; the reasons for the others in `skipped`."""
  done = [r for r in runs if r.completed and math.isfinite(r.final_eval_loss)]
  result = Analysis(runs=runs)
  if len(done) < len(runs):
    result.skipped.append(
      f"{len(runs) - len(done)} run(s) not completed are listed but not "
      f"fitted: {', '.join(r.name for r in runs if r not in done)}"
    )
  ns = [r.n for r in done]
  log_n = np.log([r.n for r in done])
  log_d = np.log([r.tokens for r in done])
  if len(set(ns)) == len(ns) and len(ns) >= MIN_POINTS_LOSS_VS_N and not _independent(log_n, log_d):
    result.loss_vs_n = _loss_vs_n(sorted(done, key=lambda r: r.n), resamples, seed)
  else:
    result.skipped.append(
      f"L(N): needs >= {MIN_POINTS_LOSS_VS_N} completed runs, one per N, with D fixed or a "
      f"function of N; have {len(ns)} runs with {len(set(ns))} distinct N"
      + (", D varying independently of N" if len(ns) >= 3 and _independent(log_n, log_d) else "")
    )

  if done:
    budget = isoflop.group_budgets(np.array([r.flops for r in done]))
    sizes_per_budget = {b: np.count_nonzero(budget == b) for b in np.unique(budget)}
    usable = [b for b, k in sizes_per_budget.items() if k >= 3]
    for b in list(usable):
      at = budget == b
      reason = _unbracketed(
        [r.n for r, ok in zip(done, at) if ok], [r.final_eval_loss for r, ok in zip(done, at) if ok]
      )
      if reason:
        usable.remove(b)
        result.skipped.append(f"IsoFLOP budget C={b:.3g} left out of Approach 2: {reason}")
    if len(usable) >= 2:
      at = np.isin(budget, usable)
      pick = [r for r, ok in zip(done, at) if ok]
      n = np.array([r.n for r in pick], float)
      loss = np.array([r.final_eval_loss for r in pick])
      sem = np.array([r.final_eval_sem for r in pick])
      per_token = _measured_flops_per_token(pick)
      try:
        samples, dropped = isoflop.bootstrap_isoflop(
          n,
          loss,
          budget[at],
          resamples,
          seed,
          loss_sem=sem if np.all(np.isfinite(sem)) else None,
          flops_per_token=per_token,
        )
      except ValueError as e:  # too noisy for a 95% band: said so, the other fits still run
        result.skipped.append(f"IsoFLOP profiles (Approach 2): {e}")
      else:
        result.isoflop = Isoflop(
          n=n,
          loss=loss,
          budget=budget[at],
          fit=isoflop.fit_isoflop(n, loss, budget[at], per_token),
          samples=samples,
          dropped=dropped,
        )
    else:
      result.skipped.append(
        "IsoFLOP profiles (Approach 2): need >= 2 compute budgets with >= 3 "
        f"sizes each; budgets (runs) here: {_budget_list(sizes_per_budget)}"
      )

  if len(done) >= MIN_POINTS_PARAMETRIC and _independent(log_n, log_d):
    n, d = np.exp(log_n), np.exp(log_d)
    loss = np.array([r.final_eval_loss for r in done])
    law = fit.fit_parametric(n, d, loss)
    result.parametric = Parametric(
      n=n,
      d=d,
      loss=loss,
      fit=law,
      samples=fit.bootstrap_parametric(n, d, loss, law, resamples, seed),
    )
  else:
    result.skipped.append(
      f"L(N, D) (Approach 3): needs >= {MIN_POINTS_PARAMETRIC} completed runs whose token "
      f"counts vary independently of N; have {len(done)} runs"
      + ("" if len(done) < 2 else ", with D fixed or tied to N")
    )

  curves = [
    envelope.Curve(
      n=float(r.n), flops=r.eval_curve.flops, tokens=r.eval_curve.tokens, loss=r.eval_curve.loss
    )
    for r in done
    if r.eval_curve.loss.size >= 2
  ]
  if len(curves) >= 2:
    result.envelope = envelope.compute_envelope(curves)
  else:
    result.skipped.append(
      "compute envelope (Approach 1): needs >= 2 completed runs with >= 2 "
      f"evals each; have {len(curves)}"
    )
  return result


def _independent(log_n: np.ndarray, log_d: np.ndarray) -> bool:
  """Whether log D is not (nearly) a linear function of log N: else B and beta are unidentified."""
  if log_n.size < 3 or np.ptp(log_d) < 1e-6:
    return False
  slope, intercept = np.polyfit(log_n, log_d, 1)
  return float(np.std(log_d - (slope * log_n + intercept))) > 0.05


def _measured_flops_per_token(runs: list[Run]):
  """FLOPs per token as the runs recorded them, interpolated in log-log between their N.

  D_opt = C / flops_per_token(N_opt) then counts tokens in the same convention as the
  budgets; 6 N would undercount small models, whose attention and lm head dominate.
  """
  pairs = sorted({(float(np.log(r.n)), float(np.log(r.flops / r.tokens))) for r in runs})
  log_n, log_fpt = np.array(pairs).T
  return lambda n: float(np.exp(np.interp(np.log(n), log_n, log_fpt)))


def _unbracketed(n: list[float], loss: list[float]) -> str:
  """Why a budget's sizes do not bracket its loss minimum ('' if they do).

  A vertex outside the sampled sizes is an extrapolation of the parabola, and a
  concave fit has no minimum; Approach 2 needs sizes on both sides of N*.
  """
  log_n = np.log(n)
  c2, c1, _ = np.polyfit(log_n, loss, 2)
  if c2 <= 0:
    return "loss is not convex in log N over these sizes"
  vertex = float(np.exp(-c1 / (2 * c2)))
  if not min(n) <= vertex <= max(n):
    side = "smallest" if vertex < min(n) else "largest"
    return (
      f"the parabola's minimum N = {vertex:.3g} lies beyond the {side} size trained "
      f"({min(n) if side == 'smallest' else max(n):.3g}); train sizes past it"
    )
  return ""


def _budget_list(sizes_per_budget: dict[float, int]) -> str:
  return ", ".join(f"{b:.3g} ({k})" for b, k in sorted(sizes_per_budget.items())) or "none"


def fits_json(a: Analysis) -> dict:
  """The numbers of every fit, with 95% bootstrap intervals: fits.json."""
  out: dict[str, object] = {"skipped": a.skipped}
  if a.loss_vs_n:
    s = a.loss_vs_n
    out["loss_vs_n"] = {
      "law": "L(N) = E + A N^-alpha",
      "points": int(s.n.size),
      "E": {"value": s.fit.E, "ci95": _ci(s.samples[:, 0])},
      "A": {"value": s.fit.A, "ci95": _ci(s.samples[:, 1])},
      "alpha": {"value": s.fit.alpha, "ci95": _ci(s.samples[:, 2])},
      "E_identified": s.e_identified,
      "kaplan": {
        "law": "L(N) = (N_c / N)^alpha_N",
        "N_c": {"value": s.kaplan[0], "ci95": _ci(s.kaplan_samples[:, 0])},
        "alpha_N": {"value": s.kaplan[1], "ci95": _ci(s.kaplan_samples[:, 1])},
      },
    }
    if s.heldout:
      h = s.heldout
      out["extrapolation"] = {
        "held_out_n": h.n,
        "observed_loss": h.loss,
        "saturating": {
          "predicted_loss": h.saturating.value,
          "predicted_ci95": list(h.saturating.ci95),
          "relative_error": h.relative_error(h.saturating),
          "fit_without_it": {"E": h.fit.E, "A": h.fit.A, "alpha": h.fit.alpha},
        },
        "kaplan": {
          "predicted_loss": h.kaplan.value,
          "predicted_ci95": list(h.kaplan.ci95),
          "relative_error": h.relative_error(h.kaplan),
          "fit_without_it": {"N_c": h.kaplan_law[0], "alpha_N": h.kaplan_law[1]},
        },
      }
  if a.isoflop:
    f = a.isoflop.fit
    out["isoflop"] = {
      "law": "N_opt = k_n C^a, D_opt = k_d C^b",
      "a": {"value": f.a, "ci95": _ci(a.isoflop.samples[:, 0])},
      "b": {"value": f.b, "ci95": _ci(a.isoflop.samples[:, 1])},
      "k_n": f.k_n,
      "k_d": f.k_d,
      "bootstrap_dropped": a.isoflop.dropped,
      "minima": [
        {"flops": m.flops, "n_opt": m.n_opt, "d_opt": m.d_opt, "loss": m.loss} for m in f.minima
      ],
    }
  if a.parametric:
    law = a.parametric.fit.law
    names = ("E", "A", "B", "alpha", "beta")
    out["parametric"] = {
      "law": "L(N, D) = E + A / N^alpha + B / D^beta",
      "objective": a.parametric.fit.objective,
      **{
        k: {"value": getattr(law, k), "ci95": _ci(a.parametric.samples[:, i])}
        for i, k in enumerate(names)
      },
    }
    alpha, beta = a.parametric.samples[:, 3], a.parametric.samples[:, 4]
    out["parametric"]["frontier"] = {
      "a": {"value": law.beta / (law.alpha + law.beta), "ci95": _ci(beta / (alpha + beta))},
      "b": {"value": law.alpha / (law.alpha + law.beta), "ci95": _ci(alpha / (alpha + beta))},
    }
  if a.envelope:
    e = a.envelope
    out["envelope"] = {
      "law": "N_opt = k_n C^a, D_opt = k_d C^b through the crossings of learning curves; "
      "L(C) = E + K C^-gamma",
      "a": {"value": e.a, "ci95": list(e.a_ci95)},
      "b": {"value": e.b, "ci95": list(e.b_ci95)},
      "k_n": e.k_n,
      "k_d": e.k_d,
      "crossings": int(e.crossing_flops.size),
      "L_of_C": {"E": e.E, "K": e.K, "gamma": e.gamma},
    }
  return out
