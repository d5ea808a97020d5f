"""Downstream accuracy across a sweep: points, a fit against loss, and the figure.

Reads the task rows `python -m gptjax.evaluate` writes into each run's metrics.jsonl
(`task`, `settings`, `NAME/METRIC`). Per run and task the row of the latest step
counts (the last one written at that step, if evaluated twice). The metric plotted is
`acc_norm_char` where a task has it (multiple choice), else `acc` (cloze); perplexity
rows have neither and are left out.

Accuracy against final eval loss is fitted as a straight line, acc = a + b * loss,
weighted by 1 / stderr^2, once a task has FIT_MIN_POINTS runs: over the small loss
range of one sweep that is what the points can support (a sigmoid needs the chance
and saturation ends both visible).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gptjax import metrics
from gptjax.scaling.runs import Run

METRICS = ("acc_norm_char", "acc")  # the first a task has is the one plotted
FIT_MIN_POINTS = 3


@dataclasses.dataclass(frozen=True)
class Point:
  run: str
  n: int  # non-embedding parameters
  flops: float  # training FLOPs at the evaluated step
  loss: float  # the run's final eval loss
  metric: str
  value: float
  stderr: float
  chance: float


def points(runs: list[Run]) -> dict[str, list[Point]]:
  """{task name: one point per run that has it}, tasks in the order first seen."""
  out: dict[str, list[Point]] = {}
  for run in runs:
    latest: dict[str, dict[str, Any]] = {}
    for row in metrics.read_rows(run.path):
      name = row.get("task")
      if name is not None and row["step"] >= latest.get(name, {"step": -1})["step"]:
        latest[name] = row
    for name, row in latest.items():
      metric = next((m for m in METRICS if f"{name}/{m}" in row), None)
      if metric is None or row[f"{name}/{metric}"] is None:
        continue
      stderr = row.get(f"{name}/{metric}_stderr")
      out.setdefault(name, []).append(
        Point(
          run=run.name,
          n=run.n,
          flops=float(row["flops"]),
          loss=run.final_eval_loss,
          metric=metric,
          value=float(row[f"{name}/{metric}"]),
          stderr=math.nan if stderr is None else float(stderr),
          chance=float(row.get(f"{name}/chance") or 0.0),
        )
      )
  return out


def fit_vs_loss(task_points: list[Point]) -> dict[str, float] | None:
  """acc = a + b * loss, weighted least squares (module docstring); None if too few points."""
  usable = [p for p in task_points if math.isfinite(p.loss)]
  if len(usable) < FIT_MIN_POINTS:
    return None
  loss = np.array([p.loss for p in usable])
  value = np.array([p.value for p in usable])
  stderr = np.array([p.stderr for p in usable])
  weights = (
    1 / np.maximum(stderr, 1e-6)
    if np.all(np.isfinite(stderr) & (stderr > 0))
    else np.ones_like(loss)
  )
  b, a = np.polyfit(loss, value, 1, w=weights)  # polyfit's w multiplies residuals: 1 / sigma
  return {"a": float(a), "b": float(b), "points": len(usable)}


def figure(by_task: dict[str, list[Point]]) -> Any:
  """Accuracy against training FLOPs, against N and against final loss, one row per task,
  with error bars, the chance level dashed and the fit against loss where there is one."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(13, 3.8 * len(by_task)))
  axes = fig.subplots(len(by_task), 3, squeeze=False)
  for row, (name, task_points) in zip(axes, by_task.items()):
    value = [p.value for p in task_points]
    stderr = [p.stderr for p in task_points]
    label = f"{name} {task_points[0].metric}"
    for ax, x, xlabel in (
      (row[0], [p.flops for p in task_points], "training FLOPs C"),
      (row[1], [p.n for p in task_points], "non-embedding parameters N"),
      (row[2], [p.loss for p in task_points], "final eval loss (nats/token)"),
    ):
      ax.errorbar(x, value, yerr=stderr, fmt="o", capsize=3)
      ax.axhline(task_points[0].chance, color="gray", linestyle="--", label="chance")
      if ax is not row[2]:
        ax.set_xscale("log")
      ax.set_xlabel(xlabel)
      ax.set_ylabel(label)
      ax.grid(True, alpha=0.3)
    fit = fit_vs_loss(task_points)
    if fit:
      losses = np.linspace(min(p.loss for p in task_points), max(p.loss for p in task_points), 20)
      row[2].plot(
        losses,
        fit["a"] + fit["b"] * losses,
        color="C1",
        label=f"fit: {fit['a']:.3f} {fit['b']:+.3f} x loss",
      )
    row[0].legend(loc="best")
    row[2].legend(loc="best")
  fig.tight_layout()
  return fig
