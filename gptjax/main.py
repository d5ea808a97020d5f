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
from gptjax import plan, rundir, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file (experiments/*.py), optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Run directory: config, metrics, checkpoints, tokenizer, samples. A local path or "
    "gs://BUCKET/PATH (needs the tpu or cuda extra).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-host: call jax.distributed.initialize() first. On TPU VMs and under SLURM it "
    "finds the coordinator itself; elsewhere pass the three flags below.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host outside TPU VMs/SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config_lib.validate(_CONFIG.value)
    if not _CONFIG.value.train.dry_run:  # a dry run writes nothing
      rundir.check(_WORKDIR.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if _DISTRIBUTED.value:
    # CPU processes need a collectives backend to talk to each other; on GPU/TPU
    # this setting is unused.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if _CONFIG.value.train.dry_run:
    print(plan.dry_run(_CONFIG.value))
    return
  logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
               jax.local_device_count())
  train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
