"""Distillation sweeps in the report: distilled students next to the same students from scratch.

A run whose summary.json names a `teacher` (distill.teacher, made exact as
run:DIR@STEP) is a distilled student; a run without one trained from scratch. A
student size is compared only where both exist at equal tokens, on eval
cross-entropy on the true data (the students' eval_loss). Each teacher's own eval
loss at the checkpoint the students read is read from its run directory, so the
figure can draw it as the floor the students were pulled towards.

Both runs of a pair are scored on the same eval set, so their errors are strongly
correlated and the gain's standard error is taken on the difference: scratch minus
distilled summed loss per eval part (eval/STEP/lm_losses_K.jsonl, which training
writes), a ratio over the same tokens, with gptjax.eval_stats's document-clustered
error. Where either run lacks that file, or the two files do not cover the same parts,
the gain's error treats the two evals as independent (conservative) and says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from etils import epath

from gptjax import eval_stats, metrics
from gptjax.config import parse_init_from
from gptjax.scaling.runs import Run


@dataclass(frozen=True)
class Teacher:
  spec: str  # distill.teacher as the students recorded it
  name: str  # its run directory's name
  loss: float  # its eval loss at the step the students read (nan when unknown)
  sem: float


@dataclass(frozen=True)
class Pair:
  """One student size trained both ways at the same tokens."""

  n: int
  tokens: int
  teacher: Teacher
  scratch: Run
  distilled: Run
  paired: tuple[float, float] | None = field(default=None, compare=False)  # (gain, se)

  @property
  def gain(self) -> float:
    """Scratch minus distilled eval loss: > 0 where distillation helped."""
    return self.scratch.final_eval_loss - self.distilled.final_eval_loss

  @property
  def gain_se(self) -> float:
    """The paired error where both runs' per-part losses exist (module docstring), else
    the two losses' errors treated as independent, which is conservative."""
    if self.paired is not None:
      return self.paired[1]
    return math.hypot(self.scratch.final_eval_sem, self.distilled.final_eval_sem)


def _final_parts(run: Run) -> dict[tuple[int, int, int], float] | None:
  """{(row, document, tokens): summed loss} of the run's newest eval, or None if absent."""
  evals = sorted(
    (int(p.parent.name), p)
    for p in epath.Path(run.path).glob("eval/*/lm_losses_*.jsonl")
    if p.parent.name.isdigit()
  )
  if not evals:
    return None
  lines = evals[-1][1].read_text().splitlines()
  parts = [json.loads(line) for line in lines if line.strip()]
  return {(p["row"], p["document"], p["tokens"]): p["loss_sum"] for p in parts}


def paired_gain(scratch: Run, distilled: Run) -> tuple[float, float] | None:
  """(gain, its document-clustered standard error) from the per-part losses of both final
  evals; None where either is missing or they do not cover the same parts."""
  a, b = _final_parts(scratch), _final_parts(distilled)
  if a is None or b is None or a.keys() != b.keys() or len(a) < 2:
    return None
  keys = sorted(a)
  return eval_stats.cluster_ratio_mean(
    [a[k] - b[k] for k in keys], [k[2] for k in keys], [k[1] for k in keys]
  )


def teacher(spec: str) -> Teacher:
  """The teacher `spec` names, with its eval loss at that step read from its run directory."""
  kind, directory, step = parse_init_from(spec, "distill.teacher")
  evals = [
    r
    for r in (metrics.read_rows(directory) if kind == "run" else [])
    if r.get("eval_loss") is not None and (step is None or r["step"] == step)
  ]
  loss, sem = (evals[-1]["eval_loss"], evals[-1].get("eval_loss_sem")) if evals else (None, None)
  return Teacher(
    spec,
    epath.Path(directory).name,
    math.nan if loss is None else float(loss),
    math.nan if sem is None else float(sem),
  )


def pairs(runs: list[Run]) -> list[Pair]:
  """Every completed distilled student with its completed from-scratch twin (same N and
  tokens), by teacher then N."""
  done = [r for r in runs if r.completed and math.isfinite(r.final_eval_loss)]
  scratch = {(r.n, r.tokens): r for r in done if not r.teacher}
  teachers = {spec: teacher(spec) for spec in sorted({r.teacher for r in done if r.teacher})}
  return [
    Pair(
      r.n,
      r.tokens,
      teachers[r.teacher],
      scratch[(r.n, r.tokens)],
      r,
      paired_gain(scratch[(r.n, r.tokens)], r),
    )
    for r in sorted(done, key=lambda r: (r.teacher, r.n))
    if r.teacher and (r.n, r.tokens) in scratch
  ]


def findings(found: list[Pair]) -> list[str]:
  """One line per teacher: where distillation beat scratch by more than two standard errors."""
  lines = []
  for spec in dict.fromkeys(p.teacher.spec for p in found):
    mine = [p for p in found if p.teacher.spec == spec]
    better = [p for p in mine if p.gain > 2 * p.gain_se]
    worse = [p for p in mine if p.gain < -2 * p.gain_se]
    lines.append(
      f"Teacher {mine[0].teacher.name} (eval loss {mine[0].teacher.loss:.4f}): distilled students "
      f"beat scratch by more than 2 s.e. at {len(better)} of {len(mine)} sizes"
      + (f", lose at {len(worse)}" if worse else "")
      + "; gains "
      + ", ".join(f"N={p.n:,}: {p.gain:+.4f} ± {p.gain_se:.4f}" for p in mine)
      + " nats/token."
    )
  return lines
