"""A run's record: train and eval rows, the console line, and summary.json.

Holds all of training's bookkeeping, so the loop in train.py only dispatches
steps. Only process 0 writes files.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from gptjax import flops, metrics, rundir


def write_json(path: epath.Path, obj: dict[str, Any]) -> None:
  """Atomically (rundir.write_atomic), so a kill never leaves half a file."""
  if jax.process_index() == 0:
    rundir.write_json(path, obj)


def position(config: ml_collections.ConfigDict, step: int) -> dict[str, int]:
  """Where a run is after `step` updates: tokens seen and training FLOPs spent."""
  tokens = step * config.train.batch_size * config.model.seq_len
  return {"step": step, "tokens": tokens, "flops": tokens * flops.flops_per_token(config.model)}


class RunRecord:
  """Turns device metrics into rows; `start_step` is where this process began or resumed."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    start_step: int,
    total_steps: int,
    peak_tflops: float,
  ):
    """`peak_tflops` is the whole job's peak, all devices together (0: MFU not reported)."""
    self._config = config
    self._total_steps = total_steps
    self._tokens_per_step = config.train.batch_size * config.model.seq_len
    self._flops_per_token = flops.flops_per_token(config.model)
    self._peak_flops = peak_tflops * 1e12
    self._writer = metrics.MetricsWriter(workdir, start_step)
    self._summary_path = epath.Path(workdir) / "summary.json"
    self._wall_start = time.time()
    self._previous_wall = 0.0
    if start_step and self._summary_path.exists():
      self._previous_wall = json.loads(self._summary_path.read_text()).get("wall_s", 0.0)
    self._last_row = (start_step, time.perf_counter())
    self.last_eval_step: int | None = None
    self.summary = {
      **flops.param_counts(config.model),
      **{k: config.model[k] for k in ("n_layer", "d_model", "n_head", "seq_len", "vocab_size")},
      "init_from": config.train.init_from,
      **self.position(start_step),
      "final_train_loss": None,
      "final_eval_loss": None,
      "wall_s": self._previous_wall,
      "status": "running",
    }
    write_json(self._summary_path, self.summary)

  def position(self, step: int) -> dict[str, int]:
    return position(self._config, step)

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
    step_time = (now - self._last_row[1]) / max(step - self._last_row[0], 1)
    self._last_row = (step, now)
    tokens_per_s = self._tokens_per_step / step_time
    steps = max(int(window.steps), 1)
    row = {
      **self.position(step),
      "train_loss": float(window.loss_sum) / steps,
      "lr": float(window.lr),
      "grad_norm": float(window.grad_norm_sum) / steps,
      "step_time_s": step_time,
      "tokens_per_s": tokens_per_s,
      "mfu": (
        self._flops_per_token * tokens_per_s / self._peak_flops if self._peak_flops else None
      ),
    }
    if window.nonfinite_steps:
      row.update(
        nonfinite_steps=int(window.nonfinite_steps),
        first_nonfinite_step=int(window.first_nonfinite_step),
      )
    self._writer.write(row)
    self.summary["final_train_loss"] = metrics.finite_or_none(row["train_loss"])
    logging.info(
      metrics.console_line(row, self._total_steps, step_time * (self._total_steps - step))
    )

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
    self.summary.update({f"final_{k}": v for k, v in values.items() if k != "eval_loss"})
    logging.info(
      "eval at step %d: %s",
      step,
      " | ".join(
        f"{k.removeprefix('eval_')} {v:.4f}"
        if isinstance(v, float)
        else f"{k.removeprefix('eval_')} {v}"
        for k, v in values.items()
      ),
    )

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
