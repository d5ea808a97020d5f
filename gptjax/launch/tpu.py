"""`gcloud` commands that run a Job on a Cloud TPU VM (or queued resource), every worker at once.

The run command starts in the background on `--worker=all` with the same arguments
on every host; `jax.distributed.initialize()` finds the coordinator on TPU VMs.
Relaunching after a preemption deletes and recreates the VM and starts the very same
command, which resumes from the last checkpoint in the (gs://) workdir. For sweeps,
`provision` and `wait_until_ready` give the shell that creates a VM only when it is
missing or preempted, so a rerun leaves healthy VMs alone (see tpu_sweep.py).
"""

from __future__ import annotations

import dataclasses
import re
import shlex

from gptjax.launch.job import Job, LaunchError, completed_test, require

ACTIONS = ("up", "create", "setup", "run", "logs", "status", "delete", "relaunch")
REPO_DIR = "~/gptjax"  # where setup clones gptjax on each worker


@dataclasses.dataclass(frozen=True)
class Tpu:
  """Where and how: the TPU's name, project, zone, accelerator and the code to install."""

  name: str
  project: str
  zone: str
  accelerator: str
  runtime_version: str = "tpu-ubuntu2204-base"
  provisioning: str = "on-demand"  # or spot, preemptible
  queued: bool = False  # create through `queued-resources` (waits for capacity)
  repo: str = ""  # git URL that every worker can clone
  revision: str = ""  # commit, tag or branch to check out


def hosts(accelerator: str) -> int:
  """Hosts of a TPU type: up to 8 ('v4-8', 'v5litepod-8') is one host.

  Beyond that a host has 4 chips: 8 TensorCores for the types whose size counts cores
  (v2-v5p), 4 for those whose size counts chips (v5litepod/v5e, v6e).
  """
  match = re.fullmatch(r"(v\d+[a-z]*|v5litepod)-(\d+)", accelerator)
  if not match:
    raise LaunchError(
      f"--accelerator={accelerator!r}: use a TPU type such as v4-8, v4-32, v5litepod-16 or v5p-128"
    )
  size = int(match.group(2))
  if size <= 8:
    return 1
  per_host = 4 if match.group(1) in ("v5litepod", "v5e", "v6e") else 8
  return size // per_host


def check(tpu: Tpu, job: Job | None) -> None:
  """Refuses what cannot work before any command runs (and before anything is billed)."""
  require("--name", tpu.name, "gpt-sweep-s1")
  require("--project", tpu.project, "my-gcp-project")
  require("--zone", tpu.zone, "us-central2-b")
  require("--accelerator", tpu.accelerator, "v4-32")
  if tpu.provisioning not in ("on-demand", "spot", "preemptible"):
    raise LaunchError(f"--provisioning={tpu.provisioning!r}: use on-demand, spot or preemptible")
  if tpu.queued and tpu.provisioning == "preemptible":
    raise LaunchError(
      "--provisioning=preemptible with --queued: queued resources offer spot "
      "capacity instead; use --provisioning=spot"
    )
  if job is not None:
    require("--repo", tpu.repo, "https://github.com/you/gptjax.git")
    require("--revision", tpu.revision, "$(git rev-parse HEAD)")
  n = hosts(tpu.accelerator)
  if job is None or n == 1:
    return
  paths = [("--workdir", job.workdir)]
  if job.overrides.get("data.data_dir"):
    paths.append(("--config.data.data_dir", str(job.overrides["data.data_dir"])))
  for flag, path in paths:
    if not path.startswith("gs://"):
      raise LaunchError(
        f"{flag}={path!r}: {tpu.accelerator} has {n} hosts, which must all see "
        f"the same files, and a VM's disk is lost when it is deleted or "
        f"preempted; use a gs:// path, e.g. {flag}=gs://my-bucket/runs/{tpu.name}"
      )


def _gcloud(tpu: Tpu, *args: str) -> list[str]:
  return ["gcloud", "compute", "tpus", *args, f"--project={tpu.project}", f"--zone={tpu.zone}"]


def _ssh(tpu: Tpu, worker: str, command: str) -> list[str]:
  return _gcloud(tpu, "tpu-vm", "ssh", tpu.name, f"--worker={worker}", f"--command={command}")


def log_path(tpu: Tpu) -> str:
  """The run's console log on each worker (process 0's is the one to watch)."""
  return f"~/gptjax_{tpu.name}.log"


def create(tpu: Tpu) -> list[str]:
  """Creates the VM, or queues a request for one."""
  if tpu.queued:
    extra = ["--spot"] if tpu.provisioning == "spot" else []
    return _gcloud(
      tpu,
      "queued-resources",
      "create",
      tpu.name,
      f"--node-id={tpu.name}",
      f"--accelerator-type={tpu.accelerator}",
      f"--runtime-version={tpu.runtime_version}",
      *extra,
    )
  extra = [f"--{tpu.provisioning}"] if tpu.provisioning != "on-demand" else []
  return _gcloud(
    tpu,
    "tpu-vm",
    "create",
    tpu.name,
    f"--accelerator-type={tpu.accelerator}",
    f"--version={tpu.runtime_version}",
    *extra,
  )


def setup(tpu: Tpu) -> list[str]:
  """Installs gptjax at `revision` with jax[tpu] on every worker (rerunnable)."""
  repo, rev = shlex.quote(tpu.repo), shlex.quote(tpu.revision)
  return _ssh(
    tpu,
    "all",
    f"set -e; [ -d {REPO_DIR} ] || git clone {repo} {REPO_DIR}; "
    f"cd {REPO_DIR}; git fetch --all --tags; git checkout {rev}; "
    "python3 -m pip install -e '.[tpu]'",
  )


def run(tpu: Tpu, *jobs: Job) -> list[str]:
  """Starts the jobs one after another in the background on every worker, logging to `log_path`.

  A job whose summary.json says completed is skipped and a failed one does not stop the
  next, so running this again after a preemption goes on where the last start stopped.
  While an earlier start is still alive on the VM (its pid is in ~/gptjax_NAME.pid) it
  starts nothing: a second copy would fight the first for the TPU and the workdir.
  """
  steps = []
  for job in jobs:
    main = " ".join(
      [
        *(f"{key}={shlex.quote(value)}" for key, value in job.env.items()),
        shlex.join(["python3", *job.main_args()]),
      ]
    )
    skipped, failed = (
      shlex.quote(f"{job.workdir}: {what}") for what in ("completed, skipped", "failed")
    )
    steps.append(
      f"if {completed_test(job.workdir)}; then echo {skipped}; "
      f'else {main} || echo {failed} "(exit $?)"; fi'
    )
  pid = f"~/gptjax_{tpu.name}.pid"
  # The subshell ignores SIGHUP like nohup (its children inherit that), so it outlives the ssh.
  start = (
    f"( trap '' HUP; {'; '.join(steps)} ) >> {log_path(tpu)} 2>&1 < /dev/null & echo $! > {pid}"
  )
  return _ssh(
    tpu,
    "all",
    f'cd {REPO_DIR} && if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; '
    f'then echo "already running, pid $(cat {pid})"; else {start}; fi',
  )


def logs(tpu: Tpu) -> list[str]:
  """Streams process 0's log (worker 0) from its beginning."""
  return _ssh(tpu, "0", f"tail -n +1 -F {log_path(tpu)}")


def status(tpu: Tpu) -> list[str]:
  """The VM's (or queued request's) state, e.g. READY, PREEMPTED, ACTIVE, FAILED."""
  if tpu.queued:
    return _gcloud(tpu, "queued-resources", "describe", tpu.name, "--format=value(state.state)")
  return _gcloud(tpu, "tpu-vm", "describe", tpu.name, "--format=value(state)")


def delete(tpu: Tpu) -> list[str]:
  """Deletes the VM (a queued resource with its node), without a prompt."""
  if tpu.queued:
    return _gcloud(tpu, "queued-resources", "delete", tpu.name, "--force", "--quiet")
  return _gcloud(tpu, "tpu-vm", "delete", tpu.name, "--quiet")


# What `status` prints: the state to run in, states worth waiting for, and the rest
# (PREEMPTED, TERMINATED, SUSPENDED, FAILED, ...), which only a delete and create fix.
_READY = {False: "READY", True: "ACTIVE"}
_COMING_UP = {
  False: ("CREATING", "STARTING", "RESTARTING", "REPAIRING", "REIMAGING"),
  True: ("CREATING", "ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES"),
}
_WAIT_S = 60


def _state(tpu: Tpu) -> str:
  """The shell expansion of the VM's state, empty when it does not exist."""
  return f"$({shlex.join(status(tpu))} 2>/dev/null || true)"


def provision(tpu: Tpu) -> list[str]:
  """Shell lines that create the VM if it is missing, and recreate it if it was preempted.

  A VM that is up, or on its way up, is left alone, so rerunning a sweep never restarts
  healthy work; a preempted one is deleted first because it keeps its name taken.
  """
  ready = _READY[tpu.queued]
  return [
    f"state={_state(tpu)}",
    'case "$state" in',
    f'  {"|".join([ready, *_COMING_UP[tpu.queued]])}) echo "{tpu.name} is $state" ;;',
    f"  '') {shlex.join(create(tpu))} ;;",
    f'  *) echo "{tpu.name} is $state: deleting and recreating it"',
    f"     {shlex.join(delete(tpu))}",
    f"     {shlex.join(create(tpu))} ;;",
    "esac",
  ]


def wait_until_ready(tpu: Tpu) -> list[str]:
  """Shell lines that wait for READY (a queued resource: ACTIVE), or stop naming the state."""
  ready = _READY[tpu.queued]
  return [
    f'until state={_state(tpu)}; [ "$state" = {ready} ]; do',
    '  case "$state" in',
    f"    {'|'.join(_COMING_UP[tpu.queued])})",
    f'      echo "{tpu.name} is $state, waiting for {ready}"; sleep {_WAIT_S} ;;',
    f'    *) echo "{tpu.name} is ${{state:-missing}}: rerun the sweep to recreate it" >&2',
    "       exit 1 ;;",
    "  esac",
    "done",
  ]


def commands(action: str, tpu: Tpu, job: Job | None = None) -> list[list[str]]:
  """The commands of one action, in order. `up` = create, setup, run; `relaunch` deletes first."""
  needs_job = action in ("up", "setup", "run", "relaunch")
  if needs_job and job is None:
    raise LaunchError(f"tpu {action} needs --config, --workdir, --repo and --revision")
  check(tpu, job if needs_job else None)
  # A queued resource's create returns once the request is queued, not once the VM exists.
  wait = [["bash", "-c", "\n".join(wait_until_ready(tpu))]] if tpu.queued else []
  steps = {
    "create": lambda: [create(tpu)],
    "setup": lambda: [setup(tpu)],
    "run": lambda: [run(tpu, job)],
    "logs": lambda: [logs(tpu)],
    "status": lambda: [status(tpu)],
    "delete": lambda: [delete(tpu)],
    "up": lambda: [create(tpu), *wait, setup(tpu), run(tpu, job)],
    "relaunch": lambda: [delete(tpu), create(tpu), *wait, setup(tpu), run(tpu, job)],
  }
  if action not in steps:
    raise LaunchError(f"tpu action {action!r}: use one of {', '.join(ACTIONS)}")
  return steps[action]()
