"""Command-line entry point: `python -m gptjax.main --config=FILE --workdir=DIR`.

Any config field can be overridden, e.g. `--config.model.n_layer=4`. Rerunning
the same command on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from gptjax import (
  checkpoint,
  compile_cache,
  console,
  cpu_devices,
  data,
  host_malloc,
  memory_plan,
  metrics,
  rundir,
  train,
)
from gptjax import config as config_lib
from gptjax.evaluate import tasks as eval_tasks

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment file (experiments/*.py), optionally with ':arg'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Run directory: config, metrics, checkpoints, tokenizer, samples. A local path or "
  "gs://BUCKET/PATH (needs the tpu or cuda extra).",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Multi-host: call jax.distributed.initialize() first. On TPU VMs and under SLURM it "
  "finds the coordinator itself; elsewhere pass the three flags below.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-host outside TPU VMs/SLURM)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
  "local_device_ids",
  None,
  "Multi-host: the accelerators this process drives (e.g. 0,1,2,3,4,5,6,7 for one process "
  "per node). Default: JAX's choice; under SLURM that is the task's one GPU (SLURM_LOCALID).",
)
flags.mark_flags_as_required(["config", "workdir"])


# What a user can cause, reported as one `error:` line (a traceback only with --verbosity=1):
# bad settings (ValueError), files and directories (OSError), a diverged run, a failed save.
_USER_ERRORS = (ValueError, OSError, train.Diverged, checkpoint.SaveFailed)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.setup(flags.FLAGS.verbosity)
  try:
    _main()
  except _USER_ERRORS as e:
    if flags.FLAGS.verbosity > 0:
      raise
    if isinstance(e, checkpoint.SaveFailed):
      _exit_quietly(f"error: {e}")
    sys.exit(f"error: {e}")


def _exit_quietly(message: str) -> None:
  """Ends the process with `message` as the last line on stderr, and nothing after it.

  orbax's writer threads are left broken by a failed save and print asyncio tracebacks,
  even while this line is written (CI once saw one glued to its front). So stderr goes to
  /dev/null for every thread first, and the line goes to the saved descriptor on a line of
  its own. Every file of ours is already closed, hence os._exit.
  """
  sys.stderr.flush()
  real_stderr = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.write(real_stderr, f"\n{message}\n".encode())
  os._exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistyped --config.* override as one `error:` line."""
  try:
    return flags.FLAGS(config_lib.whole_numbers(argv))
  except (flags.Error, AttributeError, KeyError, TypeError) as e:
    text = str(e)
    if len(text) > 1 and text[0] in "'\"" and text[-1] == text[0]:  # a KeyError's repr
      text = text[1:-1]
    message = " ".join(text.replace("\\n", " ").replace("\\'", "'").split())
    flag, parsing, _ = text.partition(": Error whilst parsing config file")
    if parsing:  # the experiment's get_config raised: its last line says why, not the traceback
      lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
      sys.exit(f"error: {flag.removeprefix('flag ')}: {lines[-1].removeprefix('ValueError: ')}")
    if isinstance(e, (AttributeError, KeyError)):
      message = f"unknown --config field {message}"
    sys.exit(
      f"error: {message}; see --helpfull for the flags, and gptjax/config.py for "
      "every --config.* field"
    )


def _experiment() -> ml_collections.ConfigDict:
  """The --config file's config, or a ValueError saying the file could not be loaded."""
  try:
    _CONFIG.value.keys()  # config_flags defers a failed load to the first use
    return _CONFIG.value
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    raise ValueError(
      f"--config: cannot load the experiment file ({reason}); pass an existing "
      "file, e.g. --config=experiments/quickstart.py"
    ) from None


def _main() -> None:
  config = _experiment()
  config_lib.validate(config)
  data.check(config)
  eval_tasks.check_tasks(config.eval.tasks)
  if not config.train.dry_run:  # a dry run writes nothing
    rundir.check(_WORKDIR.value)
  cpu_count = cpu_devices.configure(config, _DISTRIBUTED.value)  # before any backend starts
  compile_cache.enable(config.train.compile_cache)  # before the first compile
  if _DISTRIBUTED.value:
    # CPU processes need a collectives backend to talk to each other; on GPU/TPU
    # this setting is unused.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      local_device_ids=None
      if _LOCAL_DEVICE_IDS.value is None
      else [int(i) for i in _LOCAL_DEVICE_IDS.value],
    )
  if config.train.dry_run:
    print(memory_plan.dry_run(config))
    return
  logging.info(
    "process %d of %d, %d local devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
  )
  if jax.default_backend() == "cpu":
    if cpu_count and cpu_count > 1:
      logging.info(
        "CPU: %d devices on %d cores (mesh.cpu_devices)", cpu_count, cpu_devices.host_cores()
      )
    host_malloc.keep_freed_memory()  # XLA:CPU's step temporaries reuse their pages
  summary = train.run(config, _WORKDIR.value)
  logging.info(_closing_line(summary, _WORKDIR.value))
  if config.eval.tasks and summary["status"] == "completed":
    _evaluate(config, _WORKDIR.value, summary["step"])


def _evaluate(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
  """eval.tasks on the final checkpoint, once training has released the run directory."""
  if jax.process_count() > 1:
    logging.warning(
      "eval.tasks: not scored in a multi-process run; run python -m "
      "gptjax.evaluate --workdir=%s once it has finished",
      workdir,
    )
    return
  from gptjax.evaluate import run as evaluate  # deferred: training alone never needs it

  evaluate.after_training(config, workdir, step)


def _closing_line(summary: dict, workdir: str) -> str:
  """One line that says how the run ended and where to look."""
  rows = [r for r in metrics.read_rows(workdir) if "eval_loss" in r]
  if not rows:
    last_eval = "no eval"
  elif "eval_accuracy" in rows[-1]:  # classify, choice
    last_eval = (
      f"eval accuracy {rows[-1]['eval_accuracy']:.4f} ± "
      f"{rows[-1]['eval_accuracy_se']:.4f} at step {rows[-1]['step']}"
    )
  else:
    loss, sem = rows[-1]["eval_loss"], rows[-1].get("eval_loss_sem")
    # No SEM when the eval rows come from a single document or example (nothing to vary over).
    spread = f" ± {sem:.4f}" if sem is not None else " (SEM n/a: one document or example)"
    scored = "on responses " if "eval_targets" in rows[-1] else ""  # sft
    last_eval = f"eval loss {loss:.4f}{spread} nats/token {scored}at step {rows[-1]['step']}"
  return (
    f"{summary['status']}: {summary['step']} steps, "
    f"{last_eval}, {metrics.format_duration(summary['wall_s'])} of training, "
    f"run directory {workdir}"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
