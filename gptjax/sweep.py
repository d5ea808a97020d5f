"""Runs every member of a sweep: `python -m gptjax.sweep --config=FILE --workdir=SWEEP_DIR`.

FILE defines `get_config()` and `get_sweep()` ({member name: {"group.field": value}});
`--config=FILE:ARG` calls both with ARG, as `gptjax.main --config=FILE:ARG` calls
get_config(ARG), and every member runs with --config=FILE:ARG.
Each member trains in its own `python -m gptjax.main` process in SWEEP_DIR/<name>,
so one member's crash, memory or compile cache cannot touch another's. The sweep is
idempotent: members whose summary.json says "completed" are skipped and the rest
are rerun, which resumes them from their checkpoints. So after a crash or a
preemption, rerunning the same command finishes the sweep.

A member whose train.branch_from names another member ('MEMBER@STEP', a cooldown branch;
gptjax/scaling/cooldown.py) branches from that member's run directory, SWEEP_DIR/MEMBER,
and starts only once that member has completed; if it fails, so does the branch.

`--launcher=tpu` and `--launcher=slurm` start the same members on Cloud TPU VMs
(gptjax/launch/tpu_sweep.py) or as one SLURM job each (gptjax/launch/slurm.py). They
print what they would run and run nothing unless given --execute, since they spend
money; rerunning them skips completed members and resumes the rest in the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import posixpath
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from etils import epath

from gptjax import config as config_lib
from gptjax import data, metrics, rundir
from gptjax.config import parse_branch_from
from gptjax.evaluate import tasks as eval_tasks
from gptjax.launch import options, slurm, tpu, tpu_sweep
from gptjax.launch.job import Job, LaunchError, member, parse_env

_CONFIG = flags.DEFINE_string(
  "config", None, "Experiment file defining get_config() and get_sweep()."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Sweep directory: sweep.json plus one run directory per member."
)
_PARALLEL = flags.DEFINE_integer(
  "parallel", 1, "Members trained at the same time on this machine (local)."
)
_LAUNCHER = flags.DEFINE_enum(
  "launcher",
  "local",
  ["local", "print", "tpu", "slurm"],
  "'local' runs the members here; 'print' prints their commands and runs nothing; 'tpu' and "
  "'slurm' print the script or sbatch jobs that run them on Cloud TPU VMs or a SLURM cluster.",
)
_EXECUTE = options.define_flags("tpu, slurm", (options.EXECUTE,))["execute"]
_ENV = flags.DEFINE_multi_string(
  "env", [], "NAME=VALUE set for every training process; repeatable."
)

# --launcher=tpu and slurm take `python -m gptjax.launch`'s flags, from one definition.
_TPU_MODE = flags.DEFINE_enum(
  "tpu_mode",
  "one_slice",
  tpu_sweep.MODES,
  "tpu: one_slice runs the members one after another on the VM --name; "
  "vm_per_member gives each member M its own VM, NAME-M.",
)
_TPU = options.define_flags("tpu", options.TPU)
_SLURM = options.define_flags("slurm", options.SLURM)

_POLL_S = 0.2
_PROGRESS_EVERY_S = 60.0  # the table is also printed on every status change


def _load_experiment(spec: str):
  """The experiment module of `spec` ('FILE' or 'FILE:ARG') and a function calling one of
  its functions with ARG when there is one, as --config=FILE:ARG calls get_config(ARG)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise LaunchError(
      f"--config={spec}: no such file; pass an experiment file, e.g. "
      "--config=experiments/scaling_tiny.py"
    )
  loader = importlib.util.spec_from_file_location("sweep_experiment", path)
  if loader is None:
    raise LaunchError(f"--config={spec}: not a Python experiment file (.py) defining get_sweep()")
  module = importlib.util.module_from_spec(loader)
  try:
    loader.loader.exec_module(module)
  except Exception as e:  # the user's file: a syntax or import error is theirs to fix
    raise LaunchError(f"--config={spec}: cannot load it ({type(e).__name__}: {e})") from None
  if not hasattr(module, "get_sweep"):
    raise LaunchError(
      f"--config={spec}: defines no get_sweep(); add one returning "
      "{member name: {'group.field': value}}"
    )
  return lambda name: getattr(module, name)(*([arg] if arg else []))


def load_sweep(path: str) -> dict[str, dict[str, object]]:
  """The experiment file's get_sweep(), checked to be {name: {"group.field": value}}
  (any depth: "train.batch_ramp.tokens"; config.override then checks the fields exist)."""
  experiment = _load_experiment(path)
  try:
    sweep = experiment("get_sweep")
  except (OSError, ValueError) as e:  # e.g. the sweep of a source directory that is not there
    raise LaunchError(f"--config={path}: {e}") from None
  except Exception as e:  # e.g. an argument get_sweep() does not take
    raise LaunchError(f"--config={path}: get_sweep() failed ({type(e).__name__}: {e})") from None
  if not sweep:
    raise LaunchError(f"--config={path}: get_sweep() returned no members")
  for name, overrides in sweep.items():
    for key in overrides:
      if "." not in key or "" in key.split("."):
        raise LaunchError(
          f"member {name!r}: override key {key!r} is not 'group.field', e.g. 'model.n_layer'"
        )
  return sweep


def branch_sources(
  sweep_dir: str, sweep: dict[str, dict[str, object]]
) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
  """The members' overrides with each train.branch_from that names another member
  ('MEMBER@STEP') pointed at that member's run directory, and {branch: its source member}.

  The source must come earlier in get_sweep(), so the runner's order already respects it.
  """
  resolved, after, names = {}, {}, list(sweep)
  for name, overrides in sweep.items():
    spec = overrides.get("train.branch_from")
    source, _, step = spec.rpartition("@") if isinstance(spec, str) else ("", "", "")
    if source in sweep:
      if names.index(source) >= names.index(name):
        raise LaunchError(
          f"member {name!r}: train.branch_from={spec!r} names member {source!r}, which must "
          "come before it in get_sweep()"
        )
      overrides = {**overrides, "train.branch_from": f"{posixpath.join(sweep_dir, source)}@{step}"}
      after[name] = source
    resolved[name] = overrides
  return resolved, after


def planned_flops(path: str, sweep: dict[str, dict[str, object]]) -> dict[str, float]:
  """Each member's training FLOPs, after checking its config: a bad member fails the sweep
  before any member trains, and the ETA weighs members by their cost, not their count (a
  branch's from its branch point on)."""
  call = _load_experiment(path)
  planned = {}
  for name, overrides in sweep.items():
    try:
      c = config_lib.override(call("get_config"), overrides)
      config_lib.validate(c)
      data.check(c)
      eval_tasks.check_tasks(c.eval.tasks)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      raise LaunchError(f"member {name!r}: {e}") from None
    start = parse_branch_from(c.train.branch_from)[1] if c.train.branch_from else 0
    spent = metrics.position(c, config_lib.train_steps(c))["flops"]
    planned[name] = float(spent - metrics.position(c, start)["flops"])
  return planned


def command(job: Job) -> list[str]:
  """The member's single-process training command (no --distributed: one process, one host)."""
  return [
    sys.executable,
    "-m",
    "gptjax.main",
    f"--config={job.config}",
    f"--workdir={job.workdir}",
    *(f"--config.{key}={value}" for key, value in job.overrides.items()),
  ]


def run_status(workdir: str) -> str:
  """summary.json's status ('completed', 'running', 'diverged', 'failed'), or 'pending' if
  there is none."""
  try:  # epath: a gs:// member is read where it is
    return json.loads((epath.Path(workdir) / "summary.json").read_text()).get("status", "pending")
  except (FileNotFoundError, json.JSONDecodeError):
    return "pending"


@dataclasses.dataclass
class Member:
  """One member's progress through this invocation of the sweep."""

  job: Job
  status: str = "pending"  # pending, skipped, running, completed, diverged, failed
  process: subprocess.Popen | None = None
  start: float = 0.0
  elapsed_s: float = 0.0
  returncode: int | None = None
  flops: float = 0.0  # planned training FLOPs, for the ETA
  after: str = ""  # the member this one branches from: it starts once that one completed
  reason: str = ""  # why it failed without running


def progress(members: list[Member], parallel: int, start: float) -> str:
  """A table of every member plus totals and an ETA.

  The ETA divides the FLOPs left by the FLOP rate of the members finished in
  this invocation, so a size sweep's large members are not estimated at the
  small ones' durations.
  """
  now = time.monotonic()
  lines = []
  for m in members:
    elapsed = now - m.start if m.status == "running" else m.elapsed_s
    lines.append(
      f"  {os.path.basename(m.job.workdir):<24} {m.status:<10} {elapsed:8.1f}s {m.flops:9.2e} FLOPs"
    )
  count = {
    s: sum(m.status == s for m in members)
    for s in ("completed", "skipped", "running", "diverged", "failed", "pending")
  }
  finished = [m for m in members if m.status == "completed"]
  rate = sum(m.flops for m in finished) / sum(m.elapsed_s for m in finished) if finished else 0.0
  left = [m for m in members if m.status in ("pending", "running")]
  if not left:
    eta = "0s"
  elif rate > 0:
    flops_left = sum(
      m.flops if m.status == "pending" else max(0.0, m.flops - rate * (now - m.start)) for m in left
    )
    eta = f"{flops_left / rate / min(parallel, len(left)):.0f}s"
  else:
    eta = "? (after the first member)"
  lines.append(
    f"  done {count['completed'] + count['skipped']}/{len(members)}"
    f" (skipped {count['skipped']}), running {count['running']}, "
    f"diverged {count['diverged']}, failed {count['failed']}, elapsed {now - start:.0f}s, ETA {eta}"
  )
  return "\n".join(lines)


def _finish(m: Member) -> None:
  m.returncode = m.process.wait()
  m.elapsed_s = time.monotonic() - m.start
  status = run_status(m.job.workdir)
  m.status = (
    status if status == "diverged" or (m.returncode == 0 and status == "completed") else "failed"
  )


def run_local(members: list[Member], parallel: int) -> None:
  """Trains the unfinished members, `parallel` at a time, logging to <member>/train.log.

  Members share the dataset, tokenizer and token caches: the first to need one
  builds it while the others wait for it (gptjax.data.paths.building).
  """
  start = time.monotonic()
  for m in members:
    if run_status(m.job.workdir) == "completed":
      m.status = "skipped"
    elif run_status(m.job.workdir) == "diverged":  # a rerun would diverge again, identically
      m.status = "diverged"
  queue = [m for m in members if m.status == "pending"]
  by_name = {os.path.basename(m.job.workdir): m for m in members}
  active: list[Member] = []
  print(progress(members, parallel, start), flush=True)
  printed = time.monotonic()
  while queue or active:
    changed = False
    for m in [m for m in queue if m.after and by_name[m.after].status in ("failed", "diverged")]:
      queue.remove(m)
      m.status, m.reason, changed = "failed", f"its source {m.after} did not complete", True
    ready = [m for m in queue if not m.after or by_name[m.after].status in ("completed", "skipped")]
    while ready and len(active) < parallel:
      m = ready.pop(0)
      queue.remove(m)
      os.makedirs(m.job.workdir, exist_ok=True)
      with open(os.path.join(m.job.workdir, "train.log"), "ab") as log:
        m.process = subprocess.Popen(
          command(m.job), env={**os.environ, **m.job.env}, stdout=log, stderr=subprocess.STDOUT
        )
      m.start, m.status = time.monotonic(), "running"
      active.append(m)
      changed = True
    for m in [m for m in active if m.process.poll() is not None]:
      _finish(m)
      active.remove(m)
      changed = True
    if changed or time.monotonic() - printed > _PROGRESS_EVERY_S:
      print(progress(members, parallel, start), flush=True)
      printed = time.monotonic()
    time.sleep(_POLL_S)


def record(sweep_dir: str, members: list[Member]) -> None:
  """SWEEP_DIR/status.json: each member's outcome in this invocation, failures included."""
  rundir.write_json(
    os.path.join(sweep_dir, "status.json"),
    {
      os.path.basename(m.job.workdir): {
        "status": m.status,
        "returncode": m.returncode,
        "elapsed_s": round(m.elapsed_s, 1),
      }
      for m in members
    },
  )


def launch_tpu(
  spec: tpu.Tpu, sweep_dir: str, sweep: dict, jobs: dict[str, Job], mode: str, execute: bool
) -> int:
  """Prints the sweep's TPU script (tpu_sweep.script); with `execute`, runs it with bash.

  The runner cannot read gs:// (no GCS client among gptjax's dependencies), so
  skipping completed members is the script's job: it reads their summary.json with
  `gcloud storage` each time it runs.
  """
  text = tpu_sweep.script(spec, sweep_dir, sweep, jobs, mode)
  print(text, end="", flush=True)
  if not execute:
    print(
      "dry run: nothing was run; add --execute to run this script (or save it and run it "
      "with bash)",
      file=sys.stderr,
    )
    return 0
  with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
    f.write(text)
    f.flush()
    return subprocess.run(["bash", f.name], check=False).returncode


def launch_slurm(
  cluster: slurm.Cluster, sweep_dir: str, sweep: dict, jobs: dict[str, Job], execute: bool
) -> int:
  """Prints one sbatch job per member not completed yet; with `execute`, submits them.

  The sweep directory is on the cluster's shared filesystem, which this (login) node
  sees too, so a member whose summary.json says completed is skipped here; each job
  checks again when it starts, in case an earlier job finished it meanwhile. Member
  M's job is JOB_NAME-M.
  """
  # The sweep directory, named as given, before any member's: the flags are the same.
  slurm.check(cluster, dataclasses.replace(next(iter(jobs.values())), workdir=sweep_dir))
  scripts = {
    name: slurm.script(dataclasses.replace(cluster, job_name=f"{cluster.job_name}-{name}"), job)
    for name, job in jobs.items()
  }
  if execute:
    os.makedirs(sweep_dir, exist_ok=True)
    rundir.write_json(os.path.join(sweep_dir, "sweep.json"), sweep)
  failed = []
  for name, job in jobs.items():
    status = run_status(job.workdir)
    if status in ("completed", "diverged"):  # a diverged member would diverge again, identically
      print(f"### {name}: {status}, skipped", flush=True)
    elif not execute:
      path = os.path.join(job.workdir, "job.sbatch")
      print(f"### {name}: would write {path} and run: sbatch {path}\n{scripts[name]}", end="")
    elif slurm.submit(job, scripts[name]):
      failed.append(name)
  if not execute:
    print("dry run: nothing was written or submitted; add --execute to submit", file=sys.stderr)
  if failed:
    print(f"error: sbatch failed for {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CONFIG.value or not _WORKDIR.value:
    sys.exit(
      "error: --config and --workdir are required, e.g. "
      "--config=experiments/scaling_tiny.py --workdir=/tmp/sweep"
    )
  if _PARALLEL.value < 1:
    sys.exit(f"error: --parallel={_PARALLEL.value}: must be >= 1")
  # SLURM jobs start in --repo_dir, where a relative workdir would name another directory
  # than the one this runner checks and writes sweep.json to.
  config, sweep_dir = _CONFIG.value, _WORKDIR.value
  if _LAUNCHER.value == "slurm":
    sweep_dir = os.path.abspath(sweep_dir)
  try:
    sweep = load_sweep(config)
    env = parse_env(_ENV.value)
    resolved, after = branch_sources(sweep_dir, sweep)
    if after and (
      _LAUNCHER.value == "slurm" or (_LAUNCHER.value == "tpu" and _TPU_MODE.value != "one_slice")
    ):
      raise LaunchError(
        f"members {', '.join(after)} branch from other members, which this launcher would "
        "start at the same time; use --launcher=local or --tpu_mode=one_slice (in order)"
      )
    jobs = {
      name: member(sweep_dir, name, config, overrides, env) for name, overrides in resolved.items()
    }
    planned = planned_flops(config, resolved)
    members = [
      Member(job, flops=planned[name], after=after.get(name, "")) for name, job in jobs.items()
    ]
    if _LAUNCHER.value == "tpu":
      spec = options.tpu_spec({name: flag.value for name, flag in _TPU.items()})
      sys.exit(launch_tpu(spec, sweep_dir, sweep, jobs, _TPU_MODE.value, _EXECUTE.value))
    if _LAUNCHER.value == "slurm":
      cluster = options.slurm_cluster({name: flag.value for name, flag in _SLURM.items()})
      sys.exit(launch_slurm(cluster, sweep_dir, sweep, jobs, _EXECUTE.value))
  except LaunchError as e:
    sys.exit(f"error: {e}")
  if _LAUNCHER.value == "print":
    for m in members:
      print(
        " ".join(
          [
            *(f"{key}={shlex.quote(value)}" for key, value in env.items()),
            shlex.join(command(m.job)),
          ]
        )
      )
    return
  os.makedirs(sweep_dir, exist_ok=True)
  rundir.write_json(os.path.join(sweep_dir, "sweep.json"), sweep)
  run_local(members, _PARALLEL.value)
  record(sweep_dir, members)
  failed = [m for m in members if m.status in ("failed", "diverged")]
  if failed:
    sys.exit(
      "error: sweep members did not complete: "
      + ", ".join(
        f"{os.path.basename(m.job.workdir)} ("
        + (
          m.reason
          or f"{m.status}, exit {m.returncode}, see {os.path.join(m.job.workdir, 'train.log')}"
        )
        + ")"
        for m in failed
      )
    )


if __name__ == "__main__":
  app.run(main)
