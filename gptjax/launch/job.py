"""What every launcher starts: one `python -m gptjax.main` command and its checks.

The command is identical on every host of a run; only the launcher decides how
many copies start and where. Rerunning it on the same workdir resumes from the
latest checkpoint, which is what makes relaunching after a preemption safe.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from collections.abc import Mapping


class LaunchError(ValueError):
  """A launch request that cannot work; the message names the flag, the value and the fix."""


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run: experiment file, run directory, `--config.*` overrides, environment."""

  config: str
  workdir: str
  overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def main_args(self, *extra: str) -> list[str]:
    """Arguments after `python`: the distributed entry point, then the overrides."""
    return [
      "-m",
      "gptjax.main",
      "--distributed",
      f"--config={self.config}",
      f"--workdir={self.workdir}",
      *extra,
      *(f"--config.{key}={value}" for key, value in self.overrides.items()),
    ]


_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def member(
  sweep_dir: str,
  name: str,
  config: str,
  overrides: Mapping[str, object],
  env: Mapping[str, str] | None = None,
) -> Job:
  """The Job of sweep member `name`: its run directory is SWEEP_DIR/name.

  Names are restricted to what a TPU VM name and a SLURM job name both accept, so one
  member name can name the VM, the job and the directory.
  """
  if not _NAME.match(name):
    raise LaunchError(
      f"member name {name!r}: use lowercase letters, digits and '-', "
      "starting with a letter or digit (it also names the TPU VM or SLURM job)"
    )
  return Job(config, posixpath.join(sweep_dir, name), dict(overrides), dict(env or {}))


def completed_test(workdir: str) -> str:
  """A shell condition that holds when WORKDIR/summary.json says the run completed.

  Launch scripts test it before starting a run, so rerunning them (after a preemption,
  or on a finished sweep) trains nothing twice. gs:// is read with `gcloud storage cat`,
  which is there wherever those scripts run (your machine, TPU VMs). grep reads all of
  its input (no -q), so under `pipefail` it cannot fail the pipe by closing it early.
  """
  path = posixpath.join(workdir, "summary.json")
  grep = 'grep -E \'"status": *"completed"\''
  if path.startswith("gs://"):
    return f"{shlex.join(['gcloud', 'storage', 'cat', path])} 2>/dev/null | {grep} >/dev/null"
  return f"{grep} {shlex.quote(path)} >/dev/null 2>&1"


def parse_overrides(args: list[str]) -> dict[str, str]:
  """`--config.a.b=v` arguments as {"a.b": "v"}; anything else is refused by name."""
  overrides = {}
  for arg in args:
    if not arg.startswith("--config.") or "=" not in arg:
      raise LaunchError(
        f"unexpected argument {arg!r}: only overrides of the form "
        "--config.group.field=value are passed on to gptjax.main"
      )
    key, value = arg[len("--config.") :].split("=", 1)
    overrides[key] = value
  return overrides


def parse_env(pairs: list[str]) -> dict[str, str]:
  """`--env KEY=VALUE` flags as a dict."""
  env = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
      raise LaunchError(
        f"--env={pair!r}: use --env=NAME=VALUE, e.g. --env=GPTJAX_CACHE=/shared/cache"
      )
    env[key] = value
  return env


def require(flag: str, value: object, example: str) -> None:
  """Refuses a missing required flag, showing what a valid one looks like."""
  if value in (None, ""):
    raise LaunchError(f"{flag} is required: pass e.g. {flag}={example}")
