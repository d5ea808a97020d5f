"""Where metrics go: the console, WORKDIR/metrics.jsonl and TensorBoard.

Only process 0 writes. On resume rows past the restored step (written before a
crash, then recomputed) are dropped, so the file always reads like one
uninterrupted run. Locally each row is appended and flushed as it is written.
An object store cannot append, so for a gs:// workdir the whole file is
rewritten instead (rundir.write_atomic), and TensorBoard's event files are
uploaded with it: with the first row written REMOTE_SYNC_S seconds after the
last upload, and at `sync()`, which training calls before each checkpoint so
that the rows a resume keeps are stored before the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax
from absl import logging
from etils import epath
from tensorboardX import SummaryWriter

from gptjax import rundir

# Each upload rewrites the whole file: every 30 s keeps that cheap and the bucket current.
REMOTE_SYNC_S = 30.0


def _json_rows(path: epath.Path) -> list[dict[str, Any]]:
  rows = []
  with path.open() as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a row cut short by kill -9
        break
  return rows


def read_rows(workdir: str) -> list[dict[str, Any]]:
  path = epath.Path(workdir) / "metrics.jsonl"
  return _json_rows(path) if path.exists() else []


class MetricsWriter:
  """Appends metric rows; `resume_step` is the step the state was restored at."""

  def __init__(self, workdir: str, resume_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self._path = epath.Path(workdir) / "metrics.jsonl"
    self._remote = rundir.is_remote(workdir)
    self._lines = [json.dumps(r) + "\n" for r in read_rows(workdir) if r["step"] <= resume_step]
    rundir.write_atomic(self._path, "".join(self._lines))
    self._synced_at = time.monotonic()
    self._file = None if self._remote else self._path.open("a")
    # On an object store TensorBoard's event files are written locally and uploaded with
    # metrics.jsonl. tensorboardX can write gs:// itself, but it uploads the whole file at
    # every flush and again when garbage-collected, which stalls the exit for minutes when
    # GCS cannot be reached.
    self._tb_dir = epath.Path(workdir) / "tensorboard"
    self._tb_local = (
      tempfile.mkdtemp(prefix="gptjax-tensorboard-") if self._remote else os.fspath(self._tb_dir)
    )
    self._tb = SummaryWriter(self._tb_local, purge_step=resume_step + 1 if resume_step else None)
    if self._remote:
      logging.info(
        "TensorBoard events go to %s and are copied to %s with metrics.jsonl",
        self._tb_local,
        self._tb_dir,
      )

  def write(self, row: dict[str, Any]) -> None:
    """Appends `row` as strict JSON: a NaN or inf is written as null, and the row's
    `nonfinite` field lists the keys that held one."""
    if not self.enabled:
      return
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, row["step"])
    line = json.dumps(strict_row(row), allow_nan=False) + "\n"
    if self._remote:
      self._lines.append(line)
      if time.monotonic() - self._synced_at >= REMOTE_SYNC_S:
        self.sync()
    else:
      self._file.write(line)
      self._file.flush()
      self._tb.flush()

  def sync(self) -> None:
    """Stores every row written so far: uploads on an object store, nothing to do locally."""
    if not (self.enabled and self._remote):
      return
    rundir.write_atomic(self._path, "".join(self._lines))
    self._tb.flush()
    for events in epath.Path(self._tb_local).iterdir():
      (self._tb_dir / events.name).write_bytes(events.read_bytes())
    self._synced_at = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    self._tb.close()
    if self._remote:
      self.sync()
      shutil.rmtree(self._tb_local)
    else:
      self._file.close()


def finite_or_none(value: Any) -> Any:
  return None if isinstance(value, float) and not math.isfinite(value) else value


def strict_row(row: dict[str, Any]) -> dict[str, Any]:
  """`row` with non-finite floats as None and their keys listed under `nonfinite`."""
  bad = [k for k, v in row.items() if finite_or_none(v) is None and v is not None]
  if not bad:
    return row
  return {**{k: finite_or_none(v) for k, v in row.items()}, "nonfinite": bad}


def console_line(row: dict[str, Any], total_steps: int, eta_s: float) -> str:
  """The train row as the console shows it; the loss and grad norm are window means."""
  mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
  return (
    f"step {row['step']}/{total_steps} | loss {row['train_loss']:.4f} | lr {row['lr']:.2e} | "
    f"grad_norm {row['grad_norm']:.3f} | {row['tokens_per_s']:,.0f} tok/s | MFU {mfu} | "
    f"ETA {format_duration(eta_s)}"
  )


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
