"""N `jax.distributed` processes on this machine: the multi-host path without a cluster.

On CPU each process gets its own fake host devices and gloo collectives; with
`platform="gpu"` process i sees only GPU i. Logs go to WORKDIR/logs/process_I.log,
never to pipes: a pipe nobody drains blocks its writer inside a collective.

SIGTERM or Ctrl-C to the launcher is passed on to every process as SIGTERM, which
checkpoints at the next step and stops (they agree on the step), and the launcher waits
up to STOP_GRACE_S for that; a second signal kills them at once.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

from gptjax.launch.job import Job, LaunchError

_POLL_S = 0.1
STOP_GRACE_S = 300.0  # for the processes to checkpoint after a stop request


def free_port() -> int:
  """A localhost port nobody listens on now, for the jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(
  job: Job, process_id: int, platform: str, devices_per_process: int
) -> dict[str, str]:
  """This process's environment: the job's, plus the platform and its device count.

  The device count replaces any inherited one (pytest's conftest asks for 8), so every
  process has exactly `devices_per_process` CPU devices.
  """
  env = {**os.environ, **job.env}
  if platform == "cpu":
    inherited = re.sub(
      r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")
    ).strip()
    env["XLA_FLAGS"] = (
      f"{inherited} --xla_force_host_platform_device_count={devices_per_process}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
  elif platform == "gpu":
    env["CUDA_VISIBLE_DEVICES"] = str(process_id)
    env["JAX_PLATFORMS"] = "cuda"
  else:
    raise LaunchError(f"--platform={platform!r}: use cpu or gpu")
  return env


def commands(job: Job, num_processes: int, port: int) -> list[list[str]]:
  """The command of each process: the job's, with explicit coordinator flags."""
  if num_processes < 1:
    raise LaunchError(f"--num_processes={num_processes}: use 1 or more")
  return [
    [
      sys.executable,
      *job.main_args(
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={i}",
      ),
    ]
    for i in range(num_processes)
  ]


def run(
  job: Job,
  num_processes: int,
  platform: str = "cpu",
  devices_per_process: int = 1,
  timeout_s: float | None = None,
) -> None:
  """Starts the processes and waits for all of them.

  When one fails the others are stopped (they would otherwise wait forever in a
  collective) and LaunchError names the failed process, its exit code and its log.
  """
  if devices_per_process < 1:
    raise LaunchError(f"--devices_per_process={devices_per_process}: use 1 or more")
  log_dir = os.path.join(job.workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  procs = []
  for i, command in enumerate(commands(job, num_processes, free_port())):
    with open(os.path.join(log_dir, f"process_{i}.log"), "w") as log:
      procs.append(
        subprocess.Popen(
          command,
          env=process_env(job, i, platform, devices_per_process),
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  stopping: list[str] = []  # the signals received
  stop_deadline = math.inf

  def stop(signum: int, frame: object) -> None:
    del frame
    nonlocal stop_deadline
    stopping.append(signal.Signals(signum).name)
    stop_deadline = time.monotonic() + STOP_GRACE_S
    if len(stopping) > 1:  # a second signal: the `finally` below kills them
      raise LaunchError(f"stopped by a second {stopping[-1]}: killed the processes")
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)

  previous = {
    sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT) if _main_thread()
  }
  try:
    while True:
      codes = [p.poll() for p in procs]
      for i, code in enumerate(codes):
        if code not in (None, 0):
          raise LaunchError(
            f"process {i} of {num_processes} exited with code {code}; "
            f"its log: {os.path.join(log_dir, f'process_{i}.log')}"
          )
      if all(code == 0 for code in codes):
        if stopping:
          raise LaunchError(
            f"stopped by {stopping[0]}: the processes checkpointed and exited; rerun the "
            "same command to resume"
          )
        return
      if deadline is not None and time.monotonic() > deadline:
        raise LaunchError(f"the processes ran past timeout_s={timeout_s}; logs in {log_dir}")
      if stopping and time.monotonic() > stop_deadline:
        raise LaunchError(
          f"the processes did not stop within {STOP_GRACE_S:.0f} s of {stopping[0]}; killed "
          f"them; logs in {log_dir}"
        )
      time.sleep(_POLL_S)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _main_thread() -> bool:
  """Signal handlers can only be set from the main thread."""
  import threading  # pylint: disable=import-outside-toplevel

  return threading.current_thread() is threading.main_thread()
