"""GPT-3's batch-size ramp: the global batch as a pure function of the update count.

GPT-3 grows the batch linearly from a small start (32k tokens) to the full batch over
the first few billion tokens. Here the ramp is `train.batch_ramp.stages` equal spans
of `train.batch_ramp.tokens` tokens; stage i trains on

    start + (full - start) * i / stages      sequences per update,

and after the ramp the full `train.batch_size`. A stage lasts until the tokens seen
first reach its span's end, so every boundary is a whole update and the table below
is exact integer arithmetic on the host. The micro-batch shape never changes
(`batch_size / grad_accum_steps` sequences): a stage accumulates fewer micro-batches,
so each distinct stage batch is one more compile of the same step, not a new shape
of the model.

Every run has a stage table; a constant batch is one stage. Rows consumed before an
update (the data order's position) and tokens seen both come from it, so resuming
mid-ramp continues the data exactly and reports count real tokens. This module
imports nothing from gptjax: config.py (a leaf) derives train steps from it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stage:
  first_step: int  # the stage's first update (0-based)
  first_row: int  # rows (sequences) consumed before it
  batch_size: int  # global batch in sequences of each of its updates


def stage_batches(train: Any, seq_len: int) -> list[int]:
  """The ramp's stage batch sizes in sequences (before the full batch); [] = no ramp.

  `train` is config.train. Each is rounded down to whole micro-batches (never below
  the start, which validation requires to be whole micro-batches itself).
  """
  ramp = train.batch_ramp
  if ramp.start_tokens <= 0 or ramp.start_tokens >= train.batch_size * seq_len:
    return []
  start, micro = ramp.start_tokens // seq_len, train.batch_size // train.grad_accum_steps
  linear = (start + (train.batch_size - start) * i // ramp.stages for i in range(ramp.stages))
  return [max(b // micro * micro, start) for b in linear]


def stages(train: Any, seq_len: int) -> tuple[Stage, ...]:
  """The run's stage table: the ramp's stages then the full batch (alone without a ramp)."""
  table: list[Stage] = []
  step = row = 0
  batches = stage_batches(train, seq_len)
  for i, batch in enumerate(batches):
    end_rows = math.ceil(train.batch_ramp.tokens * (i + 1) / len(batches) / seq_len)
    updates = max(math.ceil((end_rows - row) / batch), 0)
    if updates:
      table.append(Stage(step, row, batch))
      step, row = step + updates, row + updates * batch
  table.append(Stage(step, row, train.batch_size))
  return tuple(table)


def stage_at(table: tuple[Stage, ...], step: int) -> Stage:
  """The stage update `step` belongs to."""
  return next(s for s in reversed(table) if s.first_step <= step)


def rows_before(table: tuple[Stage, ...], step: int) -> int:
  """Sequences consumed by updates 0..step-1: the data order's position at `step`."""
  stage = stage_at(table, step)
  return stage.first_row + (step - stage.first_step) * stage.batch_size


def total_steps(table: tuple[Stage, ...], rows: int) -> int:
  """Updates until `rows` sequences have been consumed (the last update may pass it)."""
  stage = next(s for s in reversed(table) if s.first_row < rows) if rows > 0 else table[0]
  return stage.first_step + math.ceil((rows - stage.first_row) / stage.batch_size)
