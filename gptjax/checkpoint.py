"""Checkpoints: orbax CheckpointManager over the train state plus run metadata.

Orbax writes each step into a temporary directory and renames it when complete
(on GCS, which cannot rename, it writes a commit_success file last instead), so
a `kill -9` at any moment leaves only whole checkpoints behind. The data
position is the step itself (batches are a pure function of data, seed and step);
the data package's state, saved beside it, makes sure it is the same data.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from gptjax import rundir

# Settings that change the shape or layout of the saved state, or the data order
# a resumed run continues: resuming across a change in any of them is refused with
# the difference spelled out. (Data identity and seed are checked by the data package.)
RESUME_FIELDS = tuple(f"model.{name}" for name in (
    "architecture", "n_layer", "d_model", "n_head", "d_ff", "vocab_size", "pad_vocab_multiple",
    "seq_len", "scan_layers", "param_dtype")) + ("train.batch_size",)


def resume_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {field: config[field.split(".")[0]][field.split(".")[1]] for field in RESUME_FIELDS}


def manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Orbax's manager of WORKDIR/checkpoints; a gs:// URL goes to orbax as it is."""
  directory = workdir if rundir.is_remote(workdir) else os.path.abspath(workdir)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints, create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(directory, "checkpoints"),
                               options=options, item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict, data_state: dict[str, Any]) -> None:
  """Starts an async save of the state with its settings and data position."""
  meta = {"step": step, "settings": resume_settings(config), "data": data_state}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def latest(mngr: ocp.CheckpointManager, config: ml_collections.ConfigDict
           ) -> tuple[int, dict[str, Any]] | None:
  """The newest step and its metadata, after checking the config can resume it."""
  step = mngr.latest_step()
  if step is None:
    return None
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  saved = meta["settings"]
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {v!r}"
           for k, v in resume_settings(config).items() if saved.get(k) != v]
  if diffs:
    raise ValueError(
        f"checkpoint {mngr.directory}/{step} was written with other settings:\n  "
        + "\n  ".join(diffs)
        + "\nuse the original settings to resume, or a fresh --workdir to start over")
  return step, meta


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """The state at `step`, laid out as `abstract_state`'s shardings say (any mesh)."""
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]
