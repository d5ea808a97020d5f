"""Checkpoints: orbax CheckpointManager over the train state plus run metadata.

Orbax writes each step into a temporary directory and renames it when complete,
so a `kill -9` at any moment leaves only whole checkpoints behind. The data
position is the step itself (data batches are a pure function of seed and step),
so restoring the state restores the input pipeline too.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

# Settings that change the shape or layout of the saved state: restoring across a
# change in any of them cannot work, so it is refused with the difference spelled out.
STRUCTURAL_FIELDS = ("architecture", "n_layer", "d_model", "n_head", "d_ff", "vocab_size",
                     "pad_vocab_multiple", "seq_len", "scan_layers", "param_dtype")


def structure(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {f"model.{name}": config.model[name] for name in STRUCTURAL_FIELDS}


def manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints, create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict) -> None:
  """Starts an async save; orbax finishes it in the background."""
  meta = {"step": step, "structure": structure(config)}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any,
                   config: ml_collections.ConfigDict) -> tuple[Any, int] | None:
  """The latest state restored into `abstract_state`'s shardings, or None for a fresh run."""
  step = mngr.latest_step()
  if step is None:
    return None
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  saved, wanted = meta["structure"], structure(config)
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {v!r}"
           for k, v in wanted.items() if saved.get(k) != v]
  if diffs:
    raise ValueError(
        f"checkpoint {mngr.directory}/{step} was written by a different model:\n  "
        + "\n  ".join(diffs)
        + "\nuse the original settings to resume, or a fresh --workdir to start over")
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]
  return restored, step
