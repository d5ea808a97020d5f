"""An sbatch script that runs a Job on a GPU cluster: one task per GPU or one per node.

`srun` starts the same command in every task and `jax.distributed.initialize()` reads
its coordinator, process count and index from SLURM's environment. The script
requeues on preemption (`--requeue`), and a requeued job reruns the same command on
the same workdir, so it resumes from the last checkpoint. A job whose run already
completed exits at once, and `--dependency=singleton` makes a second submission under
the same job name wait for the first, so resubmitting never trains one workdir twice
at the same time.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shlex
import subprocess

from gptjax.launch.job import Job, LaunchError, completed_test, require

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/scratch/local", "/local")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """The allocation: nodes, GPUs per node, how tasks map to GPUs, and SLURM's bookkeeping."""

  job_name: str
  nodes: int
  gpus_per_node: int
  tasks: str = "gpu"  # one task per gpu, or per node (that task drives all its GPUs)
  partition: str = ""
  account: str = ""
  time: str = "24:00:00"
  cpus_per_task: int = 8
  repo_dir: str = ""  # the gptjax checkout on shared storage that the tasks run from


def check(cluster: Cluster, job: Job) -> None:
  """Refuses what cannot work before anything is queued."""
  require("--job_name", cluster.job_name, "gpt-sweep-s1")
  require("--repo_dir", cluster.repo_dir, "/shared/you/gptjax")
  if cluster.nodes < 1:
    raise LaunchError(f"--nodes={cluster.nodes}: use 1 or more")
  if cluster.gpus_per_node < 1:
    raise LaunchError(f"--gpus_per_node={cluster.gpus_per_node}: use 1 or more, e.g. 8")
  if cluster.tasks not in ("gpu", "node"):
    raise LaunchError(f"--tasks={cluster.tasks!r}: use gpu (one task per GPU) or node")
  if cluster.nodes == 1:
    return
  for flag, path in (("--workdir", job.workdir), ("--repo_dir", cluster.repo_dir)):
    why = None
    if not posixpath.isabs(path):
      why = "it is relative, so each node resolves it against its own directory"
    elif any(path == p or path.startswith(p + "/") for p in NODE_LOCAL):
      why = "it is node-local storage, so each node would see different files"
    if why:
      raise LaunchError(
        f"{flag}={path!r} with --nodes={cluster.nodes}: {why}; use a path on "
        "the cluster's shared filesystem, e.g. /shared/you/runs"
      )


def script(cluster: Cluster, job: Job) -> str:
  """The sbatch script text; logs go to WORKDIR/logs/slurm-JOBID.out (create it first)."""
  check(cluster, job)
  per_node = cluster.gpus_per_node if cluster.tasks == "gpu" else 1
  # One task per node drives all its GPUs; JAX's SLURM detection would give it only GPU
  # SLURM_LOCALID (0) otherwise.
  every_gpu = (
    [f"--local_device_ids={','.join(map(str, range(cluster.gpus_per_node)))}"]
    if cluster.tasks == "node"
    else []
  )
  if "://" not in job.workdir:  # the script cds to the repo: a relative workdir would move
    job = dataclasses.replace(job, workdir=posixpath.abspath(job.workdir))
  options = [
    f"--job-name={cluster.job_name}",
    f"--nodes={cluster.nodes}",
    f"--ntasks-per-node={per_node}",
    f"--gpus-per-node={cluster.gpus_per_node}",
    f"--cpus-per-task={cluster.cpus_per_task}",
    f"--time={cluster.time}",
    f"--output={job.workdir}/logs/slurm-%j.out",
    "--open-mode=append",
    "--requeue",
    "--dependency=singleton",
  ]
  options += [f"--partition={cluster.partition}"] * bool(cluster.partition)
  options += [f"--account={cluster.account}"] * bool(cluster.account)
  lines = [
    "#!/bin/bash",
    *(f"#SBATCH {option}" for option in options),
    "# jax.distributed.initialize() reads the coordinator, process count and index",
    "# from SLURM; a requeued job reruns this and resumes from the last checkpoint.",
    "set -euo pipefail",
    f"if {completed_test(job.workdir)}; then",
    f"  echo {shlex.quote(f'{job.workdir} completed; nothing to do')}; exit 0",
    "fi",
    *(f"export {key}={shlex.quote(value)}" for key, value in job.env.items()),
    f"cd {shlex.quote(cluster.repo_dir)}",
    shlex.join(["srun", "--kill-on-bad-exit=1", "python", *job.main_args(*every_gpu)]),
  ]
  return "\n".join(lines) + "\n"


def submit(job: Job, text: str, path: str = "") -> int:
  """Writes the script (default WORKDIR/job.sbatch), makes its log directory, runs sbatch on it."""
  os.makedirs(os.path.join(job.workdir, "logs"), exist_ok=True)
  path = path or os.path.join(job.workdir, "job.sbatch")
  with open(path, "w") as f:
    f.write(text)
  print(f"wrote {path}", flush=True)
  return subprocess.run(["sbatch", path], check=False).returncode
