"""train.branch_from: a cooldown branch of a stable-phase checkpoint (Hägele et al. 2024).

One long run at a constant learning rate (or a WSD run over the largest budget) is
checkpointed along its stable phase; a branch continues one of those checkpoints in
its own run directory under its own schedule, typically optim.schedule='wsd' with
train.tokens = the branch's budget, so only the decay is trained again. Unlike
train.init_from (parameters only, step 0), a branch takes the whole train state
(step, parameters, optimizer moments, rng) and the data position of that step
(batches are a pure function of data, seed and step), so up to STEP it is the
source run, update for update.

`resolve` refuses, before any work, a branch that would not be that: a missing
checkpoint, another model, data or update rule, or a schedule that differs from the
source's on the updates already taken (which includes a branch point past the
branch's own decay start). `restore` reads the state when the branch first starts;
a branch resumed later restores its own checkpoints, never the source again.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gptjax import batch_shape, checkpoint, optim
from gptjax.config import parse_branch_from, train_steps
from gptjax.load import checkpoint_steps, run_config

# Fields a branch shares with its source: the saved state's layout (a resume's fields),
# the data order, and the update rule. A cooldown changes the schedule alone.
MATCH_FIELDS = checkpoint.RESUME_FIELDS + (
  "data.source",
  "data.tokenizer",
  "data.vocab_size",
  "train.seed",
  "optim.b1",
  "optim.b2",
  "optim.eps",
  "optim.weight_decay",
  "optim.decay_embeddings",
  "optim.clip_norm",
)
_PEAK_RTOL = 1e-6  # an update's lr below peak * (1 - this) is decaying


def _field(config: ml_collections.ConfigDict, name: str) -> Any:
  """A dotted field; a source written before the field existed had its default."""
  try:
    return functools.reduce(getattr, name.split("."), config)
  except AttributeError:
    return checkpoint.RESUME_DEFAULTS[name]


def learning_rates(config: ml_collections.ConfigDict, updates: int) -> np.ndarray:
  """The learning rates of a run's first `updates` updates."""
  return np.asarray(optim.schedule(config)(np.arange(updates)), np.float64)


def decay_start(config: ml_collections.ConfigDict) -> int:
  """The first update (0-based) whose learning rate is below the peak after warmup: the
  latest step a branch of this schedule may start from (its run length if it never decays).

  Every schedule of optim.SCHEDULES is non-increasing after warmup, so a bisection over
  scalar updates finds it (a few dozen evaluations, at any run length).
  """
  total = train_steps(config)
  lr = optim.schedule(config)
  full = config.train.batch_size * config.model.seq_len  # tokens per full-batch update
  warmup = optim.warmup_steps(config.optim, full)  # in full batches
  stages = batch_shape.table(config.train, config.model.seq_len)
  lo = min(batch_shape.total_steps(stages, warmup * full), total)  # its end under a ramp
  hi = total
  while lo < hi:
    mid = (lo + hi) // 2
    if float(lr(mid)) < config.optim.lr * (1 - _PEAK_RTOL):
      hi = mid
    else:
      lo = mid + 1
  return lo


def resolve(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`config` with train.branch_from made exact (absolute directory); ValueError, one line,
  if the source cannot be continued by this run.

  A branch that already has checkpoints in `workdir` resumes from them and never reads
  the source again, so then only the form is checked (the source may be gone).
  """
  spec = config.train.branch_from
  if not spec:
    return config
  field = f"train.branch_from={spec!r}"
  directory, step = parse_branch_from(spec)
  directory = directory if "://" in directory else os.path.abspath(directory)
  resolved = config.copy_and_resolve_references()
  resolved.train.branch_from = f"{directory}@{step}"
  if checkpoint_steps(workdir):
    return resolved
  try:
    source = run_config(directory)
  except ValueError:
    raise ValueError(f"{field}: no run directory (with a config.json) at {directory}") from None
  steps = checkpoint_steps(directory)
  if step not in steps:
    raise ValueError(
      f"{field}: no checkpoint at step {step} in {directory}/checkpoints (it has "
      f"{steps or 'none'}); name one of those steps"
    )
  diffs = [
    f"{name}: source {_field(source, name)!r}, branch {_field(config, name)!r}"
    for name in MATCH_FIELDS
    if _field(source, name) != _field(config, name)
  ]
  stages = [batch_shape.stage_batches(c.train, c.model.seq_len) for c in (source, config)]
  if stages[0] != stages[1]:  # the data position at the branch step would move
    diffs.append(
      f"{checkpoint.STAGE_BATCHES}: source {stages[0]}, branch {stages[1]} "
      "(train.grad_accum_steps rounds them to whole micro-batches)"
    )
  if diffs:
    raise ValueError(
      f"{field}: the branch must continue the source's model, data and update rule: "
      + "; ".join(diffs)
      + "; set these to the source's values"
    )
  start = decay_start(config)
  if step > start:
    raise ValueError(
      f"{field}: step {step} is past this branch's decay start (update {start} of "
      f"{train_steps(config)}), so the branch would start inside its own decay; branch from "
      f"a checkpoint at or before step {start}, or raise train.tokens (or train.steps)"
    )
  ours, theirs = learning_rates(config, step), learning_rates(source, step)
  differ = np.flatnonzero(~np.isclose(ours, theirs, rtol=_PEAK_RTOL, atol=0.0))
  if differ.size:
    i = int(differ[0])
    raise ValueError(
      f"{field}: the source trained update {i} at lr {theirs[i]:.4g}, this branch's schedule "
      f"gives {ours[i]:.4g}; a branch must share the source's warmup and peak (optim.lr, "
      f"optim.warmup_*) and start before the source decays"
    )
  return resolved


def restore(
  config: ml_collections.ConfigDict, abstract_state: Any, check: Callable[[dict[str, Any]], None]
) -> tuple[int, dict[str, Any], Any]:
  """(step, meta, state) of the source checkpoint train.branch_from (resolved) names.

  `check(meta)` refuses a checkpoint of other data, as on a resume.
  """
  import orbax.checkpoint as ocp

  directory, step = parse_branch_from(config.train.branch_from)
  with ocp.CheckpointManager(
    checkpoint.checkpoint_dir(directory),
    item_names=("state", "meta"),
    options=ocp.CheckpointManagerOptions(create=False),
  ) as mngr:
    where = f"{mngr.directory}/{step}"
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    checkpoint.check_resumable(meta, config, where)
    check(meta)
    state = mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )["state"]
  logging.info(
    "train.branch_from: the whole state of %s at step %d (optimizer and data position "
    "included); this run continues it under its own schedule",
    directory,
    step,
  )
  return step, meta, state
