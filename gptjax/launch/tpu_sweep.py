"""A whole sweep on Cloud TPU as one bash script: the exact gcloud commands, safe to rerun.

`one_slice` runs every member, one after another, on one VM named --name; `vm_per_member`
gives member M its own VM, NAME-M, so members train side by side. The script creates
the VMs that are missing or preempted, waits until each is ready, installs gptjax on
all its workers and starts its members there (`tpu.run`). It is the same text every
time, so after a preemption you rerun the same sweep command: a VM whose members all
completed is left alone (their summary.json is read with `gcloud storage`), a READY VM
is kept, a preempted one is recreated, and on the workers completed members are
skipped and the rest resume from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import shlex
from collections.abc import Mapping

from gptjax.launch import tpu as tpu_lib
from gptjax.launch.job import Job, LaunchError, completed_test

MODES = ("one_slice", "vm_per_member")


def vms(
  tpu: tpu_lib.Tpu, jobs: Mapping[str, Job], mode: str
) -> list[tuple[tpu_lib.Tpu, list[Job]]]:
  """Each VM of the sweep with the members it runs, in order."""
  if mode == "one_slice":
    return [(tpu, list(jobs.values()))]
  if mode == "vm_per_member":
    return [
      (dataclasses.replace(tpu, name=f"{tpu.name}-{name}"), [job]) for name, job in jobs.items()
    ]
  raise LaunchError(
    f"--tpu_mode={mode!r}: use one_slice (members one after another on one VM) "
    "or vm_per_member (a VM per member)"
  )


def check(tpu: tpu_lib.Tpu, sweep_dir: str, jobs: Mapping[str, Job], mode: str) -> None:
  """Refuses what cannot work before anything is printed or run.

  The sweep directory must be on gs:// even on one host: the script's promise that a
  rerun resumes holds only if the run directories outlive the VM, which loses its disk
  when it is preempted or deleted, and separate VMs see nothing of each other's disks.
  """
  tpu_lib.check(tpu, None)  # --name, --project, --zone, --accelerator, --provisioning
  if not sweep_dir.startswith("gs://"):
    raise LaunchError(
      f"--workdir={sweep_dir!r}: a TPU sweep keeps its run directories in a "
      "bucket, since a VM's disk is lost when it is preempted or deleted and "
      "every host must see the same files; use e.g. "
      f"--workdir=gs://my-bucket/sweeps/{tpu.name}"
    )
  for vm, members in vms(tpu, jobs, mode):
    for job in members:
      if posixpath.isabs(job.config):
        raise LaunchError(
          f"--config={job.config!r}: the workers run it from their own checkout "
          f"({tpu_lib.REPO_DIR}) of --revision; pass its path inside the "
          "repository, e.g. --config=experiments/scaling_cpu.py"
        )
      tpu_lib.check(vm, job)  # --repo, --revision, a gs:// data_dir on more than one host


def _all_completed(jobs: list[Job]) -> str:
  return " && ".join(completed_test(job.workdir) for job in jobs)


def _indent(lines: list[str]) -> list[str]:
  return ["  " + line for line in lines]


def script(
  tpu: tpu_lib.Tpu,
  sweep_dir: str,
  sweep: Mapping[str, Mapping[str, object]],
  jobs: Mapping[str, Job],
  mode: str,
) -> str:
  """The bash script that (re)starts the sweep; `jobs` maps member names to their Jobs.

  VMs are created one after another first (a queued request is only filed), then each
  is waited for, set up and started. `set -e` stops at the first failing command:
  fix its cause and rerun.
  """
  check(tpu, sweep_dir, jobs, mode)
  plan = vms(tpu, jobs, mode)
  sweep_json = posixpath.join(sweep_dir, "sweep.json")
  lines = [
    "#!/bin/bash",
    f"# {len(jobs)} members of {next(iter(jobs.values())).config} in {sweep_dir} on "
    f"{len(plan)} {tpu.accelerator} VM(s), --tpu_mode={mode}.",
    "# Rerun it after a preemption: VMs whose members all completed are left alone, a",
    "# preempted VM is recreated, completed members are skipped, the rest resume.",
    "# shellcheck disable=SC2016  # the single-quoted --command=... expands on the workers",
    "set -euo pipefail",
    f"printf '%s\\n' {shlex.quote(json.dumps(sweep, indent=2))} | "
    f"{shlex.join(['gcloud', 'storage', 'cp', '-', sweep_json])}",
    "",
    "# 1. Create each VM that is missing or preempted, unless its members all completed.",
  ]
  for vm, members in plan:
    lines += [f"if ! {{ {_all_completed(members)}; }}; then", *_indent(tpu_lib.provision(vm)), "fi"]
  lines += ["", "# 2. Wait for each VM, install gptjax on all its workers and start its members."]
  for vm, members in plan:
    lines += [
      f"if {_all_completed(members)}; then",
      f"  echo {shlex.quote(f'{vm.name}: every member completed, nothing to start')}",
      "else",
      *_indent(tpu_lib.wait_until_ready(vm)),
      f"  {shlex.join(tpu_lib.setup(vm))}",
      f"  {shlex.join(tpu_lib.run(vm, *members))}",
      "fi",
    ]
  return "\n".join(lines) + "\n"
