"""Checkpoints: orbax CheckpointManager over the train state plus run metadata.

Orbax writes each step into a temporary directory and renames it when complete
(on GCS, which cannot rename, it writes a commit_success file last instead), so
a `kill -9` at any moment leaves only whole checkpoints behind. The data
position is the step itself (batches are a pure function of data, seed and step);
the data package's state, saved beside it, makes sure it is the same data.

What a resume may and may not change is decided here too: the saved state's
layout (RESUME_FIELDS) never, the learning-rate schedule (SCHEDULE_FIELDS) only
when the user says so with train.extend. A checkpoint that cannot be read is
moved aside and the next older one is used, so a damaged disk costs steps, not
the run.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ml_collections
from absl import logging
from etils import epath

from gptjax import batch_shape, rundir
from gptjax.config import train_steps

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

# Settings that change the shape or layout of the saved state, or the data order
# a resumed run continues: resuming across a change in any of them is refused with
# the difference spelled out. (Data identity and seed are checked by the data package.)
RESUME_FIELDS = tuple(
  f"model.{name}"
  for name in (
    "architecture",
    "n_layer",
    "d_model",
    "n_head",
    "d_ff",
    "vocab_size",
    "pad_vocab_multiple",
    "seq_len",
    "scan_layers",
    "param_dtype",
    "special_tokens",
  )
) + (
  "train.batch_size",
  "train.batch_ramp.start_tokens",
  "train.batch_ramp.tokens",
  "train.batch_ramp.stages",
  "train.seq_len_warmup.start",
  "train.seq_len_warmup.tokens",
  "train.seq_len_warmup.stages",
  "train.objective",
  "distill.teacher",
)
# What checkpoints written before a resume field existed were trained with.
RESUME_DEFAULTS = {
  "model.special_tokens": 0,
  "train.objective": "lm",
  "distill.teacher": "",
  "optim.warmup_tokens": 0,
  "optim.schedule": "cosine",
  "optim.decay_tokens": 0,
  "optim.decay_fraction": 0.2,
  "optim.decay_shape": "linear",
  "train.batch_ramp.start_tokens": 0,
  "train.batch_ramp.tokens": 0,
  "train.batch_ramp.stages": 4,
  "train.seq_len_warmup.start": 0,
  "train.seq_len_warmup.tokens": 0,
  "train.seq_len_warmup.stages": 4,
}
# Settings that define the learning-rate schedule and the update rule: changing them on
# resume silently bends the run (a longer train.steps restarts the cosine), so it needs
# train.extend=True.
SCHEDULE_FIELDS = ("train.steps", "train.tokens") + tuple(
  f"optim.{name}"
  for name in (
    "lr",
    "warmup_steps",
    "warmup_tokens",
    "schedule",
    "min_lr_ratio",
    "decay_tokens",
    "decay_fraction",
    "decay_shape",
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "decay_embeddings",
    "clip_norm",
  )
)
UNREADABLE_DIR = "checkpoints_unreadable"  # damaged checkpoints are moved here, never deleted


class SaveFailed(RuntimeError):
  """An asynchronous checkpoint write failed (disk full, permissions, ...)."""


def _values(config: ml_collections.ConfigDict, fields: tuple[str, ...]) -> dict[str, Any]:
  return {field: functools.reduce(getattr, field.split("."), config) for field in fields}


# Derived from the fields: the batch ramp's stage batch sizes, which train.grad_accum_steps
# rounds to whole micro-batches, so that a change of accumulation (otherwise free on resume:
# the update is the same) cannot move a ramped run's data position. Checkpoints written
# before it was saved are not checked for it.
STAGE_BATCHES = "train.batch_ramp stage batch sizes"


def resume_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {
    **_values(config, RESUME_FIELDS),
    STAGE_BATCHES: batch_shape.stage_batches(config.train, config.model.seq_len),
  }


def schedule_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return _values(config, SCHEDULE_FIELDS)


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, absolute when local (orbax wants absolute paths)."""
  directory = workdir if rundir.is_remote(workdir) else os.path.abspath(workdir)
  return os.path.join(directory, "checkpoints")


class Manager:
  """WORKDIR/checkpoints through orbax's CheckpointManager, which is made at its first use.

  A fresh run reads no checkpoint and writes its first one after training has begun, so
  orbax (0.4 s of imports on a 2-core CPU) stays out of its start-up, and a start that is
  refused leaves no checkpoints directory behind. A gs:// URL goes to orbax as it is.
  """

  def __init__(self, workdir: str, keep: int) -> None:
    self.directory = checkpoint_dir(workdir)
    self._keep = keep
    self._orbax: ocp.CheckpointManager | None = None

  @property
  def orbax(self) -> ocp.CheckpointManager:
    if self._orbax is None:
      import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

      options = ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, create=True, enable_async_checkpointing=True
      )
      self._orbax = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta")
      )
    return self._orbax

  @property
  def started(self) -> bool:
    """Whether orbax's manager exists (it alone can have saves in flight)."""
    return self._orbax is not None

  def maybe_holds_checkpoints(self) -> bool:
    """False when the directory is missing or empty, which needs no orbax to tell."""
    path = epath.Path(self.directory)
    return self.started or (path.exists() and any(path.iterdir()))

  def latest_step(self) -> int | None:
    return self.orbax.latest_step() if self.maybe_holds_checkpoints() else None

  def close(self) -> None:
    if self._orbax is not None:
      self._orbax.close()


def manager(workdir: str, config: ml_collections.ConfigDict) -> Manager:
  """The run's checkpoints, keeping `train.keep_checkpoints` of them."""
  return Manager(workdir, config.train.keep_checkpoints)


def save(
  mngr: Manager,
  step: int,
  state: Any,
  config: ml_collections.ConfigDict,
  data_state: dict[str, Any],
  window: dict[str, Any] | None = None,
) -> None:
  """Starts an async save of the state with its settings, schedule and data position,
  and `window`, the sums of the train row in progress (train.Window.to_json).

  The caller has checked that `state` is finite: no non-finite state is ever saved,
  so rotation can never push the last good checkpoint out.
  """
  check_saves(mngr)
  meta = {
    "step": step,
    "settings": resume_settings(config),
    "schedule": schedule_settings(config),
    "data": data_state,
    **({} if window is None else {"window": window}),
  }
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  try:
    mngr.orbax.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
  except Exception as e:  # save() first waits for the previous save, and raises what it hit
    raise _save_failed(mngr, e) from e


def check_saves(mngr: Manager) -> None:
  """Raises SaveFailed with the root cause if an earlier async save failed.

  Host-only (it looks at the background threads), so the loop calls it every step:
  a full disk stops training at the first step after orbax reports it (at the latest
  when the next save waits for the failed one), instead of at exit.
  """
  if not mngr.started:
    return
  if mngr.orbax.is_saving_in_progress():
    try:
      mngr.orbax.check_for_errors()
    except Exception as e:  # orbax re-raises whatever its writer threads hit
      raise _save_failed(mngr, e) from e
  else:
    wait(mngr)  # returns at once, or raises what the finished save hit


def wait(mngr: Manager) -> None:
  """Waits for the pending save; SaveFailed if it, or an earlier one, failed."""
  if not mngr.started:
    return
  try:
    mngr.orbax.wait_until_finished()
    mngr.orbax.check_for_errors()
  except Exception as e:  # orbax re-raises whatever its writer threads hit
    raise _save_failed(mngr, e) from e


def _save_failed(mngr: Manager, error: Exception) -> SaveFailed:
  cause = error
  while not isinstance(cause, OSError) and (cause.__cause__ or cause.__context__):
    cause = cause.__cause__ or cause.__context__
  return SaveFailed(
    f"a checkpoint save in {mngr.directory} failed: {type(cause).__name__}: {cause}; the "
    f"checkpoints already written are intact (steps {sorted(mngr.orbax.all_steps())}); free "
    "space or fix permissions, then rerun the same command to resume"
  )


def _settings_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  if STAGE_BATCHES not in saved:
    current = {k: v for k, v in current.items() if k != STAGE_BATCHES}
  return [
    f"{k}: checkpoint has {saved.get(k, RESUME_DEFAULTS.get(k))!r}, config has {v!r}"
    + (" (train.grad_accum_steps rounds them to whole micro-batches)" * (k == STAGE_BATCHES))
    for k, v in current.items()
    if saved.get(k, RESUME_DEFAULTS.get(k)) != v
  ]


def check_resumable(meta: dict[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
  """Raises ValueError if `config` cannot continue the state or data of the checkpoint
  described by `meta`."""
  diffs = _settings_differences(meta["settings"], resume_settings(config))
  if diffs:
    raise ValueError(
      f"checkpoint {where} was written with other settings: "
      + "; ".join(diffs)
      + "; use the original settings to resume, or a fresh --workdir to start over"
    )
  if meta["step"] > train_steps(config):
    raise ValueError(
      f"train.steps: the run already has a checkpoint at step {meta['step']} ({where}), past "
      f"the {train_steps(config)} steps asked for; a run cannot be shortened: ask for at "
      "least that many steps, or use a fresh --workdir"
    )


def check_schedule(meta: dict[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
  """Raises ValueError if `config` changes the schedule without train.extend."""
  diffs = _settings_differences(
    meta.get("schedule", schedule_settings(config)), schedule_settings(config)
  )
  if diffs and not config.train.extend:
    raise ValueError(
      f"checkpoint {where} was trained with another schedule: "
      + "; ".join(diffs)
      + "; resuming with these would change the learning rate of every later step: restore "
      "the original values, or pass --config.train.extend=True to continue on the new "
      "schedule (the log then states the learning rate before and after)"
    )


def restore_latest(
  mngr: Manager,
  workdir: str,
  config: ml_collections.ConfigDict,
  abstract_state: Any,
  check: Callable[[dict[str, Any]], None],
) -> tuple[int, dict[str, Any], Any] | None:
  """(step, meta, state) of the newest readable checkpoint, or None if there is none.

  `check(meta)` refuses (raises ValueError) a checkpoint the run cannot continue;
  that refusal is final. A checkpoint that fails to read is not: it is reported by
  step and path, moved to WORKDIR/checkpoints_unreadable, and the next older one is
  tried.
  """
  if not mngr.maybe_holds_checkpoints():
    return None
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  for step in sorted(mngr.orbax.all_steps(), reverse=True):
    where = f"{mngr.directory}/{step}"
    try:
      meta = mngr.orbax.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      if not {"step", "settings", "data"} <= set(meta):
        raise KeyError(f"metadata lacks {sorted({'step', 'settings', 'data'} - set(meta))}")
    except Exception as e:  # a damaged checkpoint fails in TensorStore, JSON or orbax
      _move_aside(mngr, workdir, step, e)
      continue
    check_resumable(meta, config, where)
    check(meta)
    check_schedule(meta, config, where)
    try:
      saved = _layout(ocp.StandardCheckpointHandler().metadata(epath.Path(where) / "state"))
    except Exception as e:
      _move_aside(mngr, workdir, step, e)
      continue
    check_layout(saved, _layout(abstract_state), where)
    try:
      state = mngr.orbax.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )["state"]
    except Exception as e:
      _move_aside(mngr, workdir, step, e)
      continue
    return step, meta, state
  return None


def _layout(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
  """{leaf path: (shape, dtype)} of a state or of a checkpoint's metadata, with the path's
  keys as plain names, so attribute, dict and index keys of the same leaf compare equal."""
  import jax  # pylint: disable=import-outside-toplevel

  def name(key: Any) -> str:
    for field in ("key", "name", "idx"):
      if hasattr(key, field):
        return str(getattr(key, field))
    return str(key)

  return {
    tuple(map(name, path)): (tuple(leaf.shape), str(leaf.dtype))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def check_layout(saved: dict, expected: dict, where: str) -> None:
  """Refuses (ValueError) a checkpoint whose arrays are not the ones this config's state has.

  RESUME_FIELDS catch the usual causes by name; this catches the rest (optim.clip_norm
  turned on or off changes the optimizer state's tree, finetune.num_classes a head's
  shape) before orbax would fail on it, which would read as a damaged checkpoint.
  """
  if saved == expected:
    return
  diffs = []
  for label, paths in (
    ("only in the checkpoint", sorted(saved.keys() - expected.keys())),
    ("only in this config's state", sorted(expected.keys() - saved.keys())),
  ):
    if paths:
      shown = ", ".join("/".join(p) for p in paths[:3])
      diffs.append(f"{len(paths)} arrays {label} ({shown}{', ...' if len(paths) > 3 else ''})")
  for path in sorted(saved.keys() & expected.keys()):
    if saved[path] != expected[path]:
      diffs.append(f"{'/'.join(path)} saved as {saved[path]}, now {expected[path]}")
      break
  raise ValueError(
    f"checkpoint {where} holds another state layout than this config makes: "
    + "; ".join(diffs)
    + "; a setting that shapes the state changed (optim.clip_norm turned on or off, "
    "finetune.num_classes, ...): restore it to resume, or use another --workdir"
  )


def _move_aside(mngr: Manager, workdir: str, step: int, error: Exception) -> None:
  stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
  target = epath.Path(workdir) / UNREADABLE_DIR / f"{step}-{stamp}"
  target.parent.mkdir(parents=True, exist_ok=True)
  (epath.Path(str(mngr.directory)) / str(step)).rename(target)
  mngr.orbax.reload()
  logging.warning(
    "checkpoint step %d at %s/%d is unreadable (%s: %s); moved it to %s and "
    "falling back to the previous checkpoint",
    step,
    mngr.directory,
    step,
    type(error).__name__,
    str(error).splitlines()[0][:200] if str(error) else "",
    target,
  )
