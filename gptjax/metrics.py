"""Where metrics go: the console, WORKDIR/metrics.jsonl and TensorBoard.

Only process 0 writes. metrics.jsonl is flushed per row, and on resume rows
past the restored step (written before a crash, then recomputed) are dropped,
so the file always reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from tensorboardX import SummaryWriter


def _json_rows(path: str) -> list[dict[str, Any]]:
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a row cut short by kill -9
        break
  return rows


def read_rows(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  return _json_rows(path) if os.path.exists(path) else []


class MetricsWriter:
  """Appends metric rows; `resume_step` is the step the state was restored at."""

  def __init__(self, workdir: str, resume_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    kept = [r for r in read_rows(workdir) if r["step"] <= resume_step]
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)
    self._file = open(path, "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=resume_step + 1 if resume_step else None)

  def write(self, row: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, row["step"])
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def console_line(row: dict[str, Any], total_steps: int, eta_s: float) -> str:
  mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
  return (f"step {row['step']}/{total_steps} | loss {row['train_loss']:.4f} | lr {row['lr']:.2e} | "
          f"grad_norm {row['grad_norm']:.3f} | {row['tokens_per_s']:,.0f} tok/s | MFU {mfu} | "
          f"ETA {format_duration(eta_s)}")


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
