"""Command-line entry point: `python -m gptjax.main --config=FILE --workdir=DIR`.

Any config field can be overridden, e.g. `--config.model.n_layer=4`. Rerunning
the same command on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gptjax import config as config_lib
from gptjax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file (experiments/*.py), optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: config, metrics, checkpoints, tokenizer, samples.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host: TPU VM pods, SLURM, "
    "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID set).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config_lib.validate(_CONFIG.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
               jax.local_device_count())
  train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
