"""The launchers' settings, declared once for both command lines that take them.

`python -m gptjax.launch {tpu,slurm}` (argparse) and `python -m gptjax.sweep
--launcher={tpu,slurm}` (absl) build their flags from these tables, so a flag's name,
default and help cannot drift between them. Each table's names are the fields of the
dataclass it fills (tpu.Tpu, slurm.Cluster).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from absl import flags

from gptjax.launch import slurm, tpu


@dataclasses.dataclass(frozen=True)
class Option:
  name: str
  default: str | int | bool
  help: str


TPU = (
  Option(
    "name",
    "",
    "the TPU VM, e.g. scaling-v4 (a sweep's vm_per_member mode names member M's VM NAME-M)",
  ),
  Option("project", "", "Google Cloud project, e.g. my-gcp-project"),
  Option("zone", "", "zone with the TPU type, e.g. us-central2-b for v4"),
  Option("accelerator", "", "TPU type, e.g. v4-32 (4 hosts)"),
  Option("runtime_version", tpu.Tpu.runtime_version, "TPU VM software image"),
  Option("provisioning", "on-demand", "on-demand, spot or preemptible"),
  Option(
    "queued",
    False,
    "create through queued-resources, which wait for capacity (with "
    "spot: a preempted slice is SUSPENDED, recreated on rerun)",
  ),
  Option("repo", "", "git URL of gptjax that every worker can clone"),
  Option(
    "revision", "", "commit, tag or branch the workers install; it must contain the experiment file"
  ),
)

SLURM = (
  Option("job_name", "", "the job's name (a sweep names member M's job NAME-M)"),
  Option("nodes", 1, "nodes per job"),
  Option("gpus_per_node", 0, "GPUs per node, e.g. 8"),
  Option("tasks", "gpu", "gpu (one task per GPU) or node (one per node)"),
  Option("partition", "", "partition; '' leaves it to the cluster's default"),
  Option("account", "", "account to charge; '' leaves it to your default"),
  Option("time", "24:00:00", "time limit of each job"),
  Option(
    "repo_dir",
    "",
    "gptjax checkout on shared storage that the jobs run from, e.g. /shared/you/gptjax",
  ),
)

EXECUTE = Option(
  "execute",
  False,
  "run the printed commands or submit the printed jobs; "
  "without it they only print, because they spend money",
)


def add_arguments(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
  for o in options:
    if isinstance(o.default, bool):
      parser.add_argument(f"--{o.name}", action="store_true", help=o.help)
    else:
      parser.add_argument(f"--{o.name}", type=type(o.default), default=o.default, help=o.help)


def define_flags(launcher: str, options: tuple[Option, ...]) -> dict[str, flags.FlagHolder]:
  """absl flags for `options`, each help prefixed by the launcher that reads it."""
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, str: flags.DEFINE_string}
  return {
    o.name: define[type(o.default)](o.name, o.default, f"{launcher}: {o.help}.") for o in options
  }


def tpu_spec(values: Mapping[str, Any]) -> tpu.Tpu:
  return tpu.Tpu(**{o.name: values[o.name] for o in TPU})


def slurm_cluster(values: Mapping[str, Any]) -> slurm.Cluster:
  return slurm.Cluster(**{o.name: values[o.name] for o in SLURM})
