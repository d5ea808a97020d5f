"""A run's record: train and eval rows, and where they go (the console,
WORKDIR/metrics.jsonl, TensorBoard), plus summary.json and config.json.

rundir.py stores files; this module decides what goes in them. It holds all of
training's bookkeeping, so the loop in train.py only dispatches steps. Only
process 0 writes. On resume rows past the restored step (written before a
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
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from gptjax import batch_shape, flops, rundir


def _summary_writer_class() -> type:
  """tensorboardX's SummaryWriter, imported without the optional libraries it would load.

  tensorboardX imports torch (to accept torch tensors), google-cloud-storage and boto3
  (to write to buckets itself) whenever they are installed: seconds of every run's start
  on a CPU. gptjax hands it Python floats and writes locally (copying to gs:// itself),
  so while it loads, those imports fail as if the libraries were absent, which
  tensorboardX handles. Libraries something else already imported stay as they are.
  """
  masked = [m for m in ("torch", "boto3", "google.cloud.storage") if m not in sys.modules]
  sys.modules.update(dict.fromkeys(masked))
  try:
    from tensorboardX import SummaryWriter
  finally:
    for m in masked:
      if sys.modules.get(m, 0) is None:
        del sys.modules[m]
  return SummaryWriter


SummaryWriter = _summary_writer_class()

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


def task_eval_line(values: dict[str, Any]) -> str:
  """A task eval's values for the console, each with its standard error as '± SE'
  ('eval_accuracy' with 'eval_accuracy_se', 'eval_loss' with 'eval_loss_sem')."""
  errors = {f"{k}{suffix}" for k in values for suffix in ("_se", "_sem")} & set(values)
  fields = []
  for key, value in values.items():
    if key in errors:
      continue
    text = f"{value:.4f}" if isinstance(value, float) else f"{value}"
    error = values.get(f"{key}_se", values.get(f"{key}_sem"))
    if error is not None:
      text += f" ± {error:.4f}" if math.isfinite(error) else " (SE n/a)"
    fields.append(f"{key.removeprefix('eval_')} {text}")
  return " | ".join(fields)


def console_line(row: dict[str, Any], total_steps: int, eta_s: float) -> str:
  """The train row as the console shows it; the loss and grad norm are window means."""
  mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
  if row.get("mfu_with_teacher") is not None:
    mfu += f" (student; {100 * row['mfu_with_teacher']:.1f}% with teacher forward)"
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


def write_json(path: epath.Path, obj: dict[str, Any]) -> None:
  """Atomically (rundir.write_atomic), so a kill never leaves half a file."""
  if jax.process_index() == 0:
    rundir.write_json(path, obj)


def position(
  config: ml_collections.ConfigDict, step: int, teacher_flops_per_token: int = 0
) -> dict[str, int]:
  """Where a run is after `step` updates: tokens seen and training FLOPs spent.

  Tokens are what the stage table says was trained on (gptjax.batch_shape), never
  steps x final batch, and FLOPs are summed stage by stage at each stage's context. `flops` is the student's own training compute, comparable with
  any run's; a distillation teacher's forward passes are counted apart, as `teacher_flops`.
  """
  stages = batch_shape.table(config.train, config.model.seq_len)
  tokens = batch_shape.tokens_before(stages, step)
  spent = sum(
    (batch_shape.tokens_before(stages, min(step, end)) - stage.first_token)
    * flops.flops_per_token(config.model, stage.seq_len)
    for stage, end in zip(stages, [s.first_step for s in stages[1:]] + [step])
    if stage.first_step < step
  )
  out = {"step": step, "tokens": tokens, "flops": spent}
  if teacher_flops_per_token:
    out["teacher_flops"] = tokens * teacher_flops_per_token
  return out


class RunRecord:
  """Turns device metrics into rows; `start_step` is where this process began or resumed."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    start_step: int,
    total_steps: int,
    peak_tflops: float,
    teacher_flops_per_token: int = 0,
  ):
    """`peak_tflops` is the whole job's peak, all devices together (0: MFU not reported);
    `teacher_flops_per_token` a distillation teacher's forward FLOPs (0: none)."""
    self._config = config
    self._total_steps = total_steps
    self._stages = batch_shape.table(config.train, config.model.seq_len)
    self._teacher_flops_per_token = teacher_flops_per_token
    self._peak_flops = peak_tflops * 1e12
    self._writer = MetricsWriter(workdir, start_step)
    self._summary_path = epath.Path(workdir) / "summary.json"
    self._wall_start = time.time()
    self._previous_wall = 0.0
    if start_step and self._summary_path.exists():
      self._previous_wall = json.loads(self._summary_path.read_text()).get("wall_s", 0.0)
    self._last_row = (start_step, time.perf_counter())
    self.last_eval_step: int | None = None
    counts = flops.param_counts(config.model)
    if config.train.objective in ("classify", "choice"):  # GPT-1's linear head: kernel and bias
      outputs = config.finetune.num_classes if config.train.objective == "classify" else 1
      counts["n_params_task_head"] = (config.model.d_model + 1) * outputs
      counts["n_params"] += counts["n_params_task_head"]
    self.summary = {
      **counts,
      **{k: config.model[k] for k in ("n_layer", "d_model", "n_head", "seq_len", "vocab_size")},
      "init_from": config.train.init_from,
      "branch_from": config.train.branch_from,
      "teacher": config.distill.teacher,
      **self.position(start_step),
      "final_train_loss": None,
      "final_eval_loss": None,
      "wall_s": self._previous_wall,
      "status": "running",
    }
    write_json(self._summary_path, self.summary)

  def position(self, step: int) -> dict[str, int]:
    return position(self._config, step, self._teacher_flops_per_token)

  def sync(self) -> None:
    """Stores the rows written so far; training calls it before each checkpoint."""
    self._writer.sync()

  def restart_clock(self) -> None:
    """Starts the first row's step time now, after compilation."""
    self._last_row = (self._last_row[0], time.perf_counter())

  def train_row(self, step: int, window: Any) -> None:
    """Writes the row for the steps since the last one, from their window sums
    (train.Window, fetched from the device): loss and grad norm are window means."""
    now = time.perf_counter()
    first = self._last_row[0]
    step_time = (now - self._last_row[1]) / max(step - first, 1)
    self._last_row = (step, now)
    tokens = self.position(step)["tokens"] - self.position(first)["tokens"]
    tokens_per_s = tokens / max(step - first, 1) / step_time
    steps = max(int(window.steps), 1)
    stage = batch_shape.stage_at(self._stages, max(step - 1, 0))  # rows never straddle one
    flops_per_token = flops.flops_per_token(self._config.model, stage.seq_len)
    row = {
      **self.position(step),
      "train_loss": float(window.loss_sum) / steps,
      "lr": float(window.lr),
      "grad_norm": float(window.grad_norm_sum) / steps,
      "step_time_s": step_time,
      "tokens_per_s": tokens_per_s,
      "mfu": (flops_per_token * tokens_per_s / self._peak_flops if self._peak_flops else None),
    }
    if len(self._stages) > 1:  # a batch ramp or a sequence-length warmup
      row.update(batch_size=stage.batch_size, seq_len=stage.seq_len)
    if self._teacher_flops_per_token:
      row["mfu_with_teacher"] = (
        (flops_per_token + self._teacher_flops_per_token) * tokens_per_s / self._peak_flops
        if self._peak_flops
        else None
      )
    if window.nonfinite_steps:
      row.update(
        nonfinite_steps=int(window.nonfinite_steps),
        first_nonfinite_step=int(window.first_nonfinite_step),
      )
    self._writer.write(row)
    self.summary["final_train_loss"] = finite_or_none(row["train_loss"])
    logging.info(console_line(row, self._total_steps, step_time * (self._total_steps - step)))

  def eval_row(self, step: int, values: dict[str, float], seconds: float) -> None:
    """Records an eval that took `seconds`, which are kept out of the next step time."""
    self._writer.write({**self.position(step), **values})
    self.summary["final_eval_loss"] = values["eval_loss"]
    self.last_eval_step = step
    self._last_row = (self._last_row[0], self._last_row[1] + seconds)
    if "eval_ppl" in values:
      logging.info(
        "eval at step %d: loss %.4f ± %.4f | ppl %.2f | %.4f bits/byte",
        step,
        values["eval_loss"],
        values["eval_loss_sem"],
        values["eval_ppl"],
        values["eval_bits_per_byte"],
      )
      return
    # A task objective's eval (train._evaluate_task): its final metrics go to summary.json.
    self.summary.update(
      {f"final_{k}": finite_or_none(v) for k, v in values.items() if k != "eval_loss"}
    )
    logging.info("eval at step %d: %s", step, task_eval_line(values))

  def close(self, step: int, status: str) -> dict[str, Any]:
    """Writes the final summary.json (status completed, running, diverged or failed)."""
    self.summary.update(
      self.position(step),
      status=status,
      wall_s=self._previous_wall + time.time() - self._wall_start,
    )
    write_json(self._summary_path, self.summary)
    self._writer.close()
    return self.summary
