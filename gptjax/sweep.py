"""Runs every member of a sweep: `python -m gptjax.sweep --config=FILE --workdir=SWEEP_DIR`.

FILE defines `get_config()` and `get_sweep()` ({member name: {"group.field": value}}).
Each member trains in its own `python -m gptjax.main` process in SWEEP_DIR/<name>,
so one member's crash, memory or compile cache cannot touch another's. The sweep is
idempotent: members whose summary.json says "completed" are skipped and the rest
are rerun, which resumes them from their checkpoints. So after a crash or a
preemption, rerunning the same command finishes the sweep.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from gptjax.launch.job import Job, LaunchError, member

_CONFIG = flags.DEFINE_string("config", None, "Experiment file defining get_config() and get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: sweep.json plus one run directory per member.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Members trained at the same time on this machine.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "print"],
                              "'local' runs the members here; 'print' prints their commands and runs nothing.")

_POLL_S = 0.2


def write_json(path: str, obj: dict) -> None:
  """Atomically (write, then rename), so an interrupted sweep never leaves half a file."""
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)


def load_sweep(path: str) -> dict[str, dict[str, object]]:
  """The experiment file's get_sweep(), checked to be {name: {"group.field": value}}."""
  spec = importlib.util.spec_from_file_location("sweep_experiment", path)
  if spec is None or not os.path.exists(path):
    raise LaunchError(f"--config={path}: no such file; pass an experiment file, e.g. "
                      "--config=experiments/scaling_tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise LaunchError(f"--config={path}: defines no get_sweep(); add one returning "
                      "{member name: {'group.field': value}}")
  sweep = module.get_sweep()
  for name, overrides in sweep.items():
    for key in overrides:
      if key.count(".") != 1:
        raise LaunchError(f"member {name!r}: override key {key!r} is not 'group.field', "
                          "e.g. 'model.n_layer'")
  return sweep


def command(job: Job) -> list[str]:
  """The member's single-process training command (no --distributed: one process, one host)."""
  return [sys.executable, "-m", "gptjax.main", f"--config={job.config}",
          f"--workdir={job.workdir}",
          *(f"--config.{key}={value}" for key, value in job.overrides.items())]


def run_status(workdir: str) -> str:
  """summary.json's status ('completed', 'running', 'failed'), or 'pending' if there is none."""
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      return json.load(f).get("status", "pending")
  except (FileNotFoundError, json.JSONDecodeError):
    return "pending"


@dataclasses.dataclass
class Member:
  """One member's progress through this invocation of the sweep."""
  job: Job
  status: str = "pending"  # pending, skipped, running, completed, failed
  process: subprocess.Popen | None = None
  start: float = 0.0
  elapsed_s: float = 0.0
  returncode: int | None = None


def progress(members: list[Member], parallel: int, start: float) -> str:
  """A table of every member plus totals and an ETA from the members finished so far."""
  now = time.monotonic()
  lines = []
  for m in members:
    elapsed = now - m.start if m.status == "running" else m.elapsed_s
    lines.append(f"  {os.path.basename(m.job.workdir):<24} {m.status:<10} {elapsed:8.1f}s")
  count = {s: sum(m.status == s for m in members) for s in ("completed", "skipped", "running",
                                                           "failed", "pending")}
  timed = [m.elapsed_s for m in members if m.status in ("completed", "failed")]
  left = count["pending"] + count["running"]
  eta = f"{sum(timed) / len(timed) * left / parallel:.0f}s" if timed and left else "?"
  if not left:
    eta = "0s"
  lines.append(f"  done {count['completed'] + count['skipped']}/{len(members)}"
               f" (skipped {count['skipped']}), running {count['running']}, "
               f"failed {count['failed']}, elapsed {now - start:.0f}s, ETA {eta}")
  return "\n".join(lines)


def _finish(m: Member) -> None:
  m.returncode = m.process.wait()
  m.elapsed_s = time.monotonic() - m.start
  completed = m.returncode == 0 and run_status(m.job.workdir) == "completed"
  m.status = "completed" if completed else "failed"


def run_local(members: list[Member], parallel: int) -> None:
  """Trains the unfinished members, `parallel` at a time, logging to <member>/train.log.

  Until one member has finished, only one runs: members share the dataset and
  tokenizer cache, and two processes preparing it at once collide in tfds
  (FileExistsError on the prepared directory).
  """
  start = time.monotonic()
  for m in members:
    if run_status(m.job.workdir) == "completed":
      m.status = "skipped"
  queue = [m for m in members if m.status == "pending"]
  active: list[Member] = []
  print(progress(members, parallel, start), flush=True)
  while queue or active:
    changed = False
    cache_ready = any(m.status in ("skipped", "completed", "failed") for m in members)
    while queue and len(active) < (parallel if cache_ready else 1):
      m = queue.pop(0)
      os.makedirs(m.job.workdir, exist_ok=True)
      with open(os.path.join(m.job.workdir, "train.log"), "ab") as log:
        m.process = subprocess.Popen(command(m.job), stdout=log, stderr=subprocess.STDOUT)
      m.start, m.status = time.monotonic(), "running"
      active.append(m)
      changed = True
    for m in [m for m in active if m.process.poll() is not None]:
      _finish(m)
      active.remove(m)
      changed = True
    if changed:
      print(progress(members, parallel, start), flush=True)
    time.sleep(_POLL_S)


def record(sweep_dir: str, members: list[Member]) -> None:
  """SWEEP_DIR/status.json: each member's outcome in this invocation, failures included."""
  write_json(os.path.join(sweep_dir, "status.json"),
             {os.path.basename(m.job.workdir): {"status": m.status, "returncode": m.returncode,
                                               "elapsed_s": round(m.elapsed_s, 1)}
              for m in members})


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CONFIG.value or not _WORKDIR.value:
    sys.exit("error: --config and --workdir are required, e.g. "
             "--config=experiments/scaling_tiny.py --workdir=/tmp/sweep")
  if _PARALLEL.value < 1:
    sys.exit(f"error: --parallel={_PARALLEL.value}: must be >= 1")
  try:
    sweep = load_sweep(_CONFIG.value)
    members = [Member(member(_WORKDIR.value, name, _CONFIG.value, overrides))
               for name, overrides in sweep.items()]
  except LaunchError as e:
    sys.exit(f"error: {e}")
  if _LAUNCHER.value == "print":
    for m in members:
      print(shlex.join(command(m.job)))
    return
  os.makedirs(_WORKDIR.value, exist_ok=True)
  write_json(os.path.join(_WORKDIR.value, "sweep.json"), sweep)
  run_local(members, _PARALLEL.value)
  record(_WORKDIR.value, members)
  failed = [m for m in members if m.status == "failed"]
  if failed:
    sys.exit("error: sweep members failed: " + ", ".join(
        f"{os.path.basename(m.job.workdir)} (exit {m.returncode}, see "
        f"{os.path.join(m.job.workdir, 'train.log')})" for m in failed))


if __name__ == "__main__":
  app.run(main)
