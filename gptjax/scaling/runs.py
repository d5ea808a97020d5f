"""Reading finished runs back from their run directories (DESIGN §5), and nothing else.

Reports are built from summary.json and metrics.jsonl alone, so a run trained
anywhere (another cluster, another codebase) can be added by writing those two
files. A sweep directory is read in sweep.json's member order; without one, every
subdirectory holding a summary.json is a run. Paths go through etils.epath, as
the run directory's writers do, so a sweep on gs:// is read where it lies.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass

import numpy as np
from etils import epath

SUMMARY_FIELDS = (
  "n_params",
  "n_params_non_embedding",
  "tokens",
  "flops",
  "final_eval_loss",
  "status",
)


@dataclass(frozen=True)
class Curve:
  """Eval points of one run, in training order."""

  tokens: np.ndarray
  flops: np.ndarray
  loss: np.ndarray
  sem: np.ndarray


@dataclass(frozen=True)
class Run:
  name: str
  path: str
  n_params: int
  n: int  # Kaplan's N: non-embedding parameters, the N of every fit
  n_layer: int | None
  d_model: int | None
  tokens: int
  flops: float
  final_eval_loss: float
  final_eval_sem: float  # standard error of the final eval loss (nan if not logged)
  wall_s: float
  mfu: float  # mean over train rows (nan if not logged)
  status: str
  eval_curve: Curve
  train_curve: Curve  # train loss at log rows (sem is nan)
  teacher: str = ""  # a distilled student's distill.teacher (summary.json); '' from scratch
  init_from: str = ""  # the source of a run that started from another's parameters
  branch_from: str = ""  # a cooldown branch's source checkpoint, 'DIR@STEP' (train.branch_from)
  steps: int = 0  # optimizer updates (summary.json's step; 0 where it is not recorded)
  accuracy: float = math.nan  # a classify/choice fine-tuning run's final eval accuracy
  accuracy_se: float = math.nan  # and its binomial standard error
  sft: bool = False  # an SFT run: its eval loss is over response tokens only

  @property
  def task(self) -> bool:
    """A fine-tuning run (scored on a task, or SFT on responses): its eval loss is not the
    pretraining LM's, so it never enters the loss fits."""
    return math.isfinite(self.accuracy) or self.sft

  @property
  def completed(self) -> bool:
    return self.status == "completed"


class RunDirError(ValueError):
  """A directory that does not hold what DESIGN §5 says a run directory holds."""


def _read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise RunDirError(f"{path}: not valid JSON ({e})") from None


def _rows(path: epath.Path) -> list[dict]:
  """metrics.jsonl rows; a torn last line (the run was killed mid-write) is skipped."""
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def _curve(rows: list[dict], loss_key: str, sem_key: str) -> Curve:
  rows = [r for r in rows if loss_key in r]
  column = lambda key: np.array([_number(r.get(key)) for r in rows])  # noqa: E731
  return Curve(
    tokens=column("tokens"), flops=column("flops"), loss=column(loss_key), sem=column(sem_key)
  )


def _number(value: object) -> float:
  """A summary or row field as a float; null (a running run's not-yet-known value, or a
  diverged run's non-finite one) reads as nan."""
  return math.nan if value is None else float(value)


def read_run(path: str, name: str | None = None) -> Run:
  """One run directory: its summary.json plus the curves in metrics.jsonl."""
  summary_path = epath.Path(path) / "summary.json"
  if not summary_path.exists():
    raise RunDirError(
      f"{path}: no summary.json; is this a run directory (python -m gptjax.main "
      "--workdir=...) or a sweep directory holding them?"
    )
  summary = _read_json(summary_path)
  missing = [f for f in SUMMARY_FIELDS if f not in summary]
  if missing:
    raise RunDirError(
      f"{summary_path}: missing fields {missing}; DESIGN §5 lists what a summary holds"
    )
  rows = _rows(epath.Path(path) / "metrics.jsonl")
  evals = _curve(rows, "eval_loss", "eval_loss_sem")
  mfus = [r["mfu"] for r in rows if r.get("mfu") is not None]
  return Run(
    name=name or epath.Path(path).name,
    path=str(path),
    n_params=int(summary["n_params"]),
    n=int(summary["n_params_non_embedding"]),
    n_layer=summary.get("n_layer"),
    d_model=summary.get("d_model"),
    tokens=int(summary["tokens"]),
    flops=_number(summary["flops"]),
    final_eval_loss=_number(summary["final_eval_loss"]),
    final_eval_sem=float(evals.sem[-1]) if evals.sem.size else math.nan,
    wall_s=_number(summary.get("wall_s")),
    mfu=float(np.mean(mfus)) if mfus else math.nan,
    status=str(summary["status"]),
    eval_curve=evals,
    train_curve=_curve(rows, "train_loss", "train_loss_sem"),
    init_from=str(summary.get("init_from") or ""),
    branch_from=str(summary.get("branch_from") or ""),
    steps=int(summary.get("step") or 0),
    accuracy=_number(summary.get("final_eval_accuracy")),
    accuracy_se=_number(summary.get("final_eval_accuracy_se")),
    teacher=str(summary.get("teacher") or ""),
    sft="final_eval_targets" in summary,  # what SFT's eval records (train._evaluate_sft)
  )


@dataclass(frozen=True)
class Sweep:
  runs: list[Run]
  not_started: list[str]  # members sweep.json lists that have no summary.json yet


def read_sweep(path: str, only: str = "") -> Sweep:
  """A sweep directory's runs (in sweep.json's order), or the single run at `path`.

  `only`, a shell pattern, keeps the members whose name matches: a slice of a sweep
  (one depth, one budget) is analysed as a sweep of its own.
  """
  root = epath.Path(path)
  if not root.is_dir():
    raise RunDirError(f"{path}: no such directory; pass a sweep directory or a run directory")
  if (root / "summary.json").exists():
    return Sweep(runs=[read_run(path)], not_started=[])
  sweep_json = root / "sweep.json"
  if sweep_json.exists():
    listed = list(_read_json(sweep_json))
  else:
    listed = sorted(child.name for child in root.iterdir() if child.is_dir())
  if only:
    matched = [n for n in listed if fnmatch.fnmatchcase(n, only)]
    if not matched:
      raise RunDirError(
        f"--only={only}: matches none of the members of {path} "
        f"({', '.join(listed[:6])}{', ...' if len(listed) > 6 else ''})"
      )
    listed = matched
  names = [n for n in listed if (root / n / "summary.json").exists()]
  if not names:
    raise RunDirError(
      f"{path}: no run directories with a summary.json; point at a sweep "
      "directory whose members have started, or at one run directory"
    )
  return Sweep(
    runs=[read_run(str(root / n), n) for n in names],
    not_started=[n for n in listed if n not in names] if sweep_json.exists() else [],
  )
