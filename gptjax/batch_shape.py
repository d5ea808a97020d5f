"""Each update's batch shape as a pure function of the update count: GPT-3's batch-size
ramp and sequence-length warmup.

GPT-3 grows the batch linearly from a small start (32k tokens) to the full batch over
the first few billion tokens (`train.batch_ramp`): `stages` equal spans of `tokens`
tokens, stage i training on

    start + (full - start) * i / stages      sequences per update,

rounded down to whole micro-batches. The micro-batch shape never changes: a stage
accumulates fewer micro-batches.

Sequence-length warmup (Li et al. 2022, `train.seq_len_warmup`) instead keeps the
batch in sequences and grows the context, stage i training on

    start + (seq_len - start) * i / stages   tokens per sequence,

rounded down to a multiple of 8 (never below the start). Each sequence is the first
tokens of the row the data order has at that place, as Li et al. truncate, so rows
consumed stay `updates * batch_size` and the rest of a short stage's rows is skipped.

Either way a stage lasts until the tokens seen first reach its span's end, so every
boundary is a whole update and the table below is exact integer arithmetic on the host;
after the last stage comes the full shape. Every run has a table: a constant shape is
one stage. Rows consumed before an update (the data order's position) and tokens seen
both come from it, so resuming mid-ramp continues the data exactly and reports count
the tokens actually trained on. Each distinct stage shape is one more compile of the
same step. This module imports nothing from gptjax: config.py (a leaf) derives train
steps from it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SEQ_LEN_MULTIPLE = 8  # warmup contexts are multiples of this (Li et al.: tensor-core shapes)


@dataclasses.dataclass(frozen=True)
class Stage:
  first_step: int  # the stage's first update (0-based)
  first_row: int  # rows (sequences) of the data order consumed before it
  first_token: int  # tokens trained on before it
  batch_size: int  # global batch in sequences of each of its updates
  seq_len: int  # tokens per sequence (context) of each of its updates

  @property
  def tokens_per_update(self) -> int:
    return self.batch_size * self.seq_len


def stage_batches(train: Any, seq_len: int) -> list[int]:
  """The batch ramp's stage batch sizes in sequences (before the full batch); [] = none.

  `train` is config.train. Each is rounded down to whole micro-batches (never below
  the start, which validation requires to be whole micro-batches itself).
  """
  ramp = train.batch_ramp
  if ramp.start_tokens <= 0 or ramp.start_tokens >= train.batch_size * seq_len:
    return []
  start, micro = ramp.start_tokens // seq_len, train.batch_size // train.grad_accum_steps
  linear = (start + (train.batch_size - start) * i // ramp.stages for i in range(ramp.stages))
  return [max(b // micro * micro, start) for b in linear]


def stage_seq_lens(train: Any, seq_len: int) -> list[int]:
  """Sequence-length warmup's stage contexts (before the full `seq_len`); [] = none."""
  warmup = train.seq_len_warmup
  if warmup.start <= 0 or warmup.start >= seq_len:
    return []
  linear = (
    warmup.start + (seq_len - warmup.start) * i // warmup.stages for i in range(warmup.stages)
  )
  return [max(n // SEQ_LEN_MULTIPLE * SEQ_LEN_MULTIPLE, warmup.start) for n in linear]


def table(train: Any, seq_len: int) -> tuple[Stage, ...]:
  """The run's stage table: the ramp's or the warmup's stages, then the full shape.

  Validation allows at most one of the two, so only one list below is non-empty.
  """
  shapes = [(b, seq_len) for b in stage_batches(train, seq_len)]
  span = train.batch_ramp.tokens
  if not shapes:
    shapes = [(train.batch_size, n) for n in stage_seq_lens(train, seq_len)]
    span = train.seq_len_warmup.tokens
  stages: list[Stage] = []
  step = row = token = 0
  for i, (batch, length) in enumerate(shapes):
    end_tokens = math.ceil(span * (i + 1) / len(shapes))
    updates = max(math.ceil((end_tokens - token) / (batch * length)), 0)
    if updates:
      stages.append(Stage(step, row, token, batch, length))
      step, row, token = step + updates, row + updates * batch, token + updates * batch * length
  stages.append(Stage(step, row, token, train.batch_size, seq_len))
  return tuple(stages)


def stage_at(stages: tuple[Stage, ...], step: int) -> Stage:
  """The stage update `step` belongs to."""
  return next(s for s in reversed(stages) if s.first_step <= step)


def rows_before(stages: tuple[Stage, ...], step: int) -> int:
  """Sequences consumed by updates 0..step-1: the data order's position at `step`."""
  stage = stage_at(stages, step)
  return stage.first_row + (step - stage.first_step) * stage.batch_size


def tokens_before(stages: tuple[Stage, ...], step: int) -> int:
  """Tokens trained on by updates 0..step-1."""
  stage = stage_at(stages, step)
  return stage.first_token + (step - stage.first_step) * stage.tokens_per_update


def total_steps(stages: tuple[Stage, ...], tokens: int) -> int:
  """Updates until `tokens` tokens have been trained on (the last update may pass it)."""
  stage = next(s for s in reversed(stages) if s.first_token < tokens) if tokens > 0 else stages[0]
  return stage.first_step + math.ceil((tokens - stage.first_token) / stage.tokens_per_update)
