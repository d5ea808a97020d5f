"""Fine-tuned accuracy against the pretraining of the model each run started from.

A fine-tuning sweep (`sizes.finetune_family`) has one member per pretrained run, and
each member's summary.json names its source (`init_from = run:DIR@STEP`). The source
is read from its own run directory: its N, its final eval loss, and its training FLOPs
at STEP (the metrics row of that step; the summary's if there is none), so a source
fine-tuned from an earlier checkpoint is placed at the compute it had then.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from absl import logging

from gptjax import metrics
from gptjax.config import parse_init_from
from gptjax.scaling.runs import Run, RunDirError, read_run


@dataclasses.dataclass(frozen=True)
class Point:
  run: str
  source: str  # the source run directory
  source_n: int  # its non-embedding parameters
  source_flops: float  # its training FLOPs at the checkpoint fine-tuned from
  source_loss: float  # its final eval loss (nats/token)
  accuracy: float
  accuracy_se: float


def points(runs: list[Run]) -> list[Point]:
  """One point per completed classify/choice run that started from a run directory that
  still reads."""
  out = []
  for run in runs:
    if not (math.isfinite(run.accuracy) and run.completed and run.init_from.startswith("run:")):
      continue
    _, directory, step = parse_init_from(run.init_from)
    try:
      source = read_run(directory)
    except RunDirError as e:  # moved or deleted since: the run stays in the runs table
      logging.warning("fine-tuned run %s left out of the accuracy plot: its source %s", run.name, e)
      continue
    at_step = [
      r["flops"] for r in metrics.read_rows(directory) if r.get("step") == step and "flops" in r
    ]
    out.append(
      Point(
        run=run.name,
        source=directory,
        source_n=source.n,
        source_flops=float(at_step[-1]) if at_step else source.flops,
        source_loss=source.final_eval_loss,
        accuracy=run.accuracy,
        accuracy_se=run.accuracy_se,
      )
    )
  return out


def figure(finetuned: list[Point]) -> Any:
  """Fine-tuned accuracy (± s.e.) against the source's pretraining FLOPs and its final
  eval loss, each point labelled with its run."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 4))
  axes = fig.subplots(1, 2)
  accuracy = [p.accuracy for p in finetuned]
  stderr = [0.0 if math.isnan(p.accuracy_se) else p.accuracy_se for p in finetuned]
  for ax, x, xlabel in (
    (axes[0], [p.source_flops for p in finetuned], "pretraining FLOPs C of the source"),
    (axes[1], [p.source_loss for p in finetuned], "source's final eval loss (nats/token)"),
  ):
    ax.errorbar(x, accuracy, yerr=stderr, fmt="o", capsize=3)
    for p, xi in zip(finetuned, x):
      ax.annotate(p.run, (xi, p.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fine-tuned eval accuracy")
    ax.grid(True, alpha=0.3)
  axes[0].set_xscale("log")
  fig.tight_layout()
  return fig
