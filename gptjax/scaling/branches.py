"""Cooldown branches in the report: each branch under the stable run it continued.

A run whose summary.json names `branch_from` ('DIR@STEP', train.branch_from) is a
cooldown branch: its final loss is a point (N, D = its tokens) of a WSD schedule
decayed at D, and its tokens and FLOPs include the stable phase it shares. Its source,
the stable run, is the sweep's run whose directory is DIR (matched by name, so a sweep
copied elsewhere still groups). A stable run's loss is the peak-lr loss at a length no
budget asked for, so the size fits leave it out, as they leave task runs out; when a
sweep has branches, the fits use the branches alone. A non-branch run at a branch's N
and D (a separate cosine run of the same budget) is its twin, compared in the table.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from gptjax.config import parse_branch_from
from gptjax.scaling.runs import Run


@dataclass(frozen=True)
class Branch:
  run: Run
  step: int  # the source checkpoint it started from
  twin: Run | None  # a separate (non-branch) run at the same N and D, if the sweep has one

  @property
  def cooldown_tokens(self) -> float:
    """Tokens the branch trained itself, after its branch point (nan if steps unknown)."""
    if not self.run.steps:
      return float("nan")
    return self.run.tokens * (1 - self.step / self.run.steps)


@dataclass(frozen=True)
class Group:
  """A stable run and its branches, in order of budget."""

  source: str  # the source directory's name
  stable: Run | None  # None when the sweep does not hold it
  branches: list[Branch]

  @property
  def tokens_trained(self) -> float:
    """The scheme's cost in tokens: the stable run once, plus each branch's cooldown."""
    stable = self.stable.tokens if self.stable else float("nan")
    return stable + sum(b.cooldown_tokens for b in self.branches)

  @property
  def tokens_separate(self) -> int:
    """What one separate run per budget would train."""
    return sum(b.run.tokens for b in self.branches)


def source_name(run: Run) -> str:
  """The directory name of the stable run `run` branched from ('' for a non-branch)."""
  if not run.branch_from:
    return ""
  return posixpath.basename(parse_branch_from(run.branch_from)[0].rstrip("/"))


def groups(runs: list[Run]) -> list[Group]:
  """The branches of `runs` grouped under their sources, in the order the sources appear."""
  by_name = {r.name: r for r in runs}
  branch_runs = [r for r in runs if r.branch_from]
  stable_names = {source_name(r) for r in branch_runs}
  others = [r for r in runs if not r.branch_from and r.name not in stable_names and not r.task]
  out = []
  for source in dict.fromkeys(source_name(r) for r in branch_runs):
    members = sorted((r for r in branch_runs if source_name(r) == source), key=lambda r: r.tokens)
    out.append(
      Group(
        source=source,
        stable=by_name.get(source),
        branches=[
          Branch(
            run=r,
            step=parse_branch_from(r.branch_from)[1],
            twin=next((o for o in others if o.n == r.n and o.tokens == r.tokens), None),
          )
          for r in members
        ],
      )
    )
  return out


def stable_runs(runs: list[Run]) -> set[str]:
  """Names of the runs that some branch of `runs` continued."""
  return {source_name(r) for r in runs if r.branch_from}
