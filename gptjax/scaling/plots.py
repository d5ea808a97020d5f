"""The report's figures, one function each, drawn with matplotlib's object API.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so no global
state or display backend is involved and figures can be drawn from any thread.
Colours encode model size (N) consistently across every plot of a report.
"""

from __future__ import annotations

import numpy as np

from gptjax.scaling import laws
from gptjax.scaling.analysis import Analysis

try:
  from matplotlib import cm, colors, ticker
  from matplotlib.figure import Figure
except ImportError as e:  # the `report` extra
  raise ImportError("the report's plots need matplotlib: pip install -e '.[report]'") from e

SIZE = (6.4, 4.2)


def _size_colours(ns: list[float]):
  """A colour per N on a log scale, so a 10x larger model is always the same hue step."""
  norm = colors.LogNorm(vmin=min(ns), vmax=max(ns) * 1.0001)
  return (lambda n: cm.viridis(norm(n))), cm.ScalarMappable(norm=norm, cmap=cm.viridis)


def _finish(fig: Figure, ax, title: str, xlabel: str, ylabel: str, logy: bool = True) -> Figure:
  ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if high / low < 10:  # losses: label 2.5, not 2.5 x 10^0, on the minor ticks too
      plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
      ax.yaxis.set_major_formatter(plain)
      ax.yaxis.set_minor_formatter(plain)
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, which="both", alpha=0.25)
  fig.tight_layout()
  return fig


def learning_curves(a: Analysis, x: str) -> Figure:
  """Eval loss (markers) and train loss (thin) against tokens or FLOPs, one colour per size.

  Against FLOPs, the compute envelope (the lowest loss any run reached at each
  C) is drawn on top, with the L(C) law fitted to it.
  """
  fig = Figure(figsize=SIZE)
  ax = fig.add_subplot()
  colour, mappable = _size_colours([r.n for r in a.runs])
  for r in sorted(a.runs, key=lambda r: r.n):
    train, evals = r.train_curve, r.eval_curve
    ax.plot(getattr(train, x), train.loss, color=colour(r.n), alpha=0.35, lw=0.8)
    ax.plot(
      getattr(evals, x),
      evals.loss,
      "o-",
      color=colour(r.n),
      ms=3,
      lw=1.2,
      label=f"{r.name} (N={r.n:.3g})",
    )
  if x == "flops" and a.envelope is not None:
    e = a.envelope
    ax.plot(e.flops, e.loss, color="black", lw=2.0, label="envelope (min over runs)")
    if np.isfinite(e.gamma):
      ax.plot(
        e.flops,
        e.E + e.K * e.flops**-e.gamma,
        "--",
        color="crimson",
        lw=1.2,
        label=f"L(C) = {e.E:.3f} + {e.K:.3g} C^-{e.gamma:.3f}",
      )
  fig.colorbar(mappable, ax=ax, label="non-embedding parameters N")
  ax.legend(fontsize=7, loc="upper right")
  if x == "tokens":
    return _finish(
      fig, ax, "Learning curves against tokens", "training tokens D", "loss (nats/token)"
    )
  return _finish(
    fig, ax, "Learning curves against compute", "training FLOPs C", "loss (nats/token)"
  )


def loss_vs_n(a: Analysis) -> Figure:
  """Final eval loss against N with both laws, the 95% band of each and the held-out check."""
  s = a.loss_vs_n
  fig = Figure(figsize=SIZE)
  ax = fig.add_subplot()
  grid = np.geomspace(s.n.min() / 1.5, s.n.max() * 4, 200)
  kaplan = laws.kaplan_loss(grid[None, :], s.kaplan_samples[:, :1], s.kaplan_samples[:, 1:])
  lo, hi = np.percentile(kaplan, [2.5, 97.5], axis=0)
  ax.fill_between(grid, lo, hi, color="gray", alpha=0.15)
  ax.plot(
    grid,
    laws.kaplan_loss(grid, *s.kaplan),
    color="gray",
    label=f"(N_c/N)^α_N: α_N={s.kaplan[1]:.3f}, 95% band",
  )
  if s.e_identified:
    with np.errstate(over="ignore", invalid="ignore"):
      curves = laws.saturating_loss(
        grid[None, :], s.samples[:, :1], s.samples[:, 1:2], s.samples[:, 2:3]
      )
    lo, hi = np.nanpercentile(curves, [2.5, 97.5], axis=0)
    ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.15)
  ax.plot(
    grid,
    laws.saturating_loss(grid, s.fit.E, s.fit.A, s.fit.alpha),
    color="tab:blue",
    label=f"E + A N^-α: E={s.fit.E:.3f}, α={s.fit.alpha:.3f}"
    + ("" if s.e_identified else " (E not identified)"),
  )
  ax.errorbar(
    s.n,
    s.loss,
    yerr=np.nan_to_num(s.sem),
    fmt="o",
    color="black",
    ms=4,
    capsize=2,
    label="final eval loss ± s.e.",
  )
  if s.heldout:
    h = s.heldout
    for p, colour, law, shift in (
      (h.kaplan, "tab:orange", "(N_c/N)^α_N", 0.9),
      (h.saturating, "tab:red", "E + A N^-α", 1.1),
    ):
      ax.errorbar(
        [h.n * shift],
        [p.value],
        yerr=[[max(p.value - p.ci95[0], 0.0)], [max(p.ci95[1] - p.value, 0.0)]],
        fmt="x",
        color=colour,
        ms=8,
        capsize=3,
        label=f"{law} fitted without it predicts the largest ({100 * h.relative_error(p):+.1f}%)",
      )
  ax.legend(fontsize=7)
  return _finish(
    fig, ax, "Final loss against model size", "non-embedding parameters N", "eval loss (nats/token)"
  )


def residuals(a: Analysis) -> Figure:
  """(observed - fitted) / fitted for every fit that has points, against N."""
  fig = Figure(figsize=SIZE)
  ax = fig.add_subplot()
  if a.loss_vs_n:
    s = a.loss_vs_n
    pred = laws.saturating_loss(s.n, s.fit.E, s.fit.A, s.fit.alpha)
    ax.errorbar(
      s.n,
      100 * (s.loss - pred) / pred,
      yerr=100 * np.nan_to_num(s.sem) / pred,
      fmt="o",
      capsize=2,
      label="L(N) = E + A N^-α",
    )
    pred = laws.kaplan_loss(s.n, *s.kaplan)
    ax.plot(
      s.n * 1.06,
      100 * (s.loss - pred) / pred,
      "o",
      mfc="none",
      color="gray",
      label="L(N) = (N_c/N)^α_N",
    )
  if a.parametric:
    p = a.parametric
    pred = p.fit.law.loss(p.n, p.d)
    ax.plot(p.n, 100 * (p.loss - pred) / pred, "s", ms=4, label="L(N, D) (Approach 3)")
  if a.isoflop:
    i = a.isoflop
    for budget in np.unique(i.budget):
      at = i.budget == budget
      coef = np.polyfit(np.log(i.n[at]), i.loss[at], 2)
      pred = np.polyval(coef, np.log(i.n[at]))
      ax.plot(
        i.n[at],
        100 * (i.loss[at] - pred) / pred,
        "^",
        ms=4,
        label=f"IsoFLOP parabola, C={budget:.2g}",
      )
  ax.axhline(0, color="black", lw=0.8)
  ax.legend(fontsize=7)
  return _finish(
    fig,
    ax,
    "Residuals of the fits",
    "non-embedding parameters N",
    "(observed - fitted) / fitted (%)",
    logy=False,
  )


def isoflop_profiles(a: Analysis) -> Figure:
  """Loss against N at each budget, the fitted parabola in log N and its minimum."""
  i = a.isoflop
  fig = Figure(figsize=SIZE)
  ax = fig.add_subplot()
  budgets = np.unique(i.budget)
  palette = cm.plasma(np.linspace(0.1, 0.8, budgets.size))
  for colour, budget, minimum in zip(palette, budgets, i.fit.minima):
    at = i.budget == budget
    coef = np.polyfit(np.log(i.n[at]), i.loss[at], 2)
    grid = np.geomspace(i.n[at].min() / 1.2, i.n[at].max() * 1.2, 100)
    ax.plot(i.n[at], i.loss[at], "o", color=colour)
    ax.plot(
      grid,
      np.polyval(coef, np.log(grid)),
      color=colour,
      lw=1.2,
      label=f"C = {budget:.2g} FLOPs: N* = {minimum.n_opt:.3g}",
    )
    ax.plot([minimum.n_opt], [minimum.loss], "*", color=colour, ms=12, mec="black")
  ax.legend(fontsize=7)
  return _finish(
    fig,
    ax,
    "IsoFLOP profiles (Approach 2)",
    "non-embedding parameters N",
    "final eval loss (nats/token)",
    logy=False,
  )


def frontier(a: Analysis) -> Figure:
  """N_opt(C) from each approach that ran, with the 95% band of the primary one."""
  fig = Figure(figsize=SIZE)
  ax = fig.add_subplot()
  lows, highs = [], []
  if a.isoflop:
    i = a.isoflop
    c = np.array([m.flops for m in i.fit.minima])
    lows.append(c.min())
    highs.append(c.max())
  if a.envelope:
    lows.append(a.envelope.flops.min())
    highs.append(a.envelope.flops.max())
  if not lows:  # Approach 3 alone: the compute its runs spanned
    lows.append(min(r.flops for r in a.runs))
    highs.append(max(r.flops for r in a.runs))
  grid = np.geomspace(min(lows) / 2, max(highs) * 10, 100)
  if a.isoflop:
    i = a.isoflop
    band = np.exp(i.samples[:, 2:3] + i.samples[:, 0:1] * np.log(grid)[None, :])
    lo, hi = np.percentile(band, [2.5, 97.5], axis=0)
    ax.fill_between(grid, lo, hi, color="tab:purple", alpha=0.15, label="Approach 2, 95% band")
    ax.plot(
      grid,
      i.fit.k_n * grid**i.fit.a,
      color="tab:purple",
      label=f"Approach 2: N_opt ∝ C^{i.fit.a:.2f}",
    )
    ax.plot(
      [m.flops for m in i.fit.minima],
      [m.n_opt for m in i.fit.minima],
      "*",
      color="tab:purple",
      ms=11,
      mec="black",
      label="IsoFLOP minima",
    )
  if a.envelope:
    e = a.envelope
    ax.plot(
      e.flops, e.n, ".", color="tab:green", ms=4, alpha=0.5, label="envelope's run (Approach 1)"
    )
    if e.crossing_flops.size:
      ax.plot(
        e.crossing_flops,
        e.crossing_n,
        "D",
        color="tab:green",
        ms=5,
        label="crossings of learning curves",
      )
    if np.isfinite(e.a):
      ax.plot(
        grid, e.k_n * grid**e.a, "--", color="tab:green", label=f"Approach 1: N_opt ∝ C^{e.a:.2f}"
      )
  if a.parametric:
    f = a.parametric.fit.law.frontier(grid)
    ax.plot(grid, f.n_opt, ":", color="tab:red", label=f"Approach 3: N_opt ∝ C^{f.a:.2f}")
  ax.legend(fontsize=7)
  return _finish(
    fig, ax, "Compute-optimal model size", "training FLOPs C", "N_opt (non-embedding parameters)"
  )


def distillation(pairs: list) -> Figure:
  """Student eval loss on the true data against N: from scratch (black), distilled from each
  teacher (a colour each), and each teacher's own eval loss (dashed, its colour)."""
  fig = Figure(figsize=SIZE)
  ax = fig.add_subplot()
  scratch = sorted({p.scratch.name: p.scratch for p in pairs}.values(), key=lambda r: r.n)
  ax.errorbar(
    [r.n for r in scratch],
    [r.final_eval_loss for r in scratch],
    yerr=np.nan_to_num([r.final_eval_sem for r in scratch]),
    fmt="o-",
    color="black",
    ms=4,
    capsize=2,
    label="from scratch",
  )
  teachers = list(dict.fromkeys(p.teacher for p in pairs))
  for teacher, colour in zip(teachers, cm.tab10.colors):
    mine = [p for p in pairs if p.teacher == teacher]
    ax.errorbar(
      [p.n for p in mine],
      [p.distilled.final_eval_loss for p in mine],
      yerr=np.nan_to_num([p.distilled.final_eval_sem for p in mine]),
      fmt="s-",
      color=colour,
      ms=4,
      capsize=2,
      label=f"distilled from {teacher.name}",
    )
    if np.isfinite(teacher.loss):
      ax.axhline(teacher.loss, color=colour, ls="--", lw=1, label=f"teacher {teacher.name}")
  ax.legend(fontsize=7)
  return _finish(
    fig,
    ax,
    "Distilled and from-scratch students at equal tokens",
    "student non-embedding parameters N",
    "eval loss on the data (nats/token)",
  )
