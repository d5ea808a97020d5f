"""`python -m gptjax.launch {local,tpu,slurm} ...`: launch one run; trailing `--config.x=v` are overrides.

tpu and slurm print what they would do unless given --execute, because they spend money.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from gptjax.launch import local, options, slurm, tpu
from gptjax.launch.job import Job, LaunchError, parse_env, parse_overrides


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m gptjax.launch", description=__doc__)
  sub = parser.add_subparsers(dest="launcher", required=True)
  for name in ("local", "tpu", "slurm"):
    p = sub.add_parser(name)
    if name == "tpu":
      p.add_argument("action", choices=tpu.ACTIONS)
    p.add_argument("--config", help="experiment file, e.g. experiments/gpt3.py:xl")
    p.add_argument("--workdir", help="run directory (gs:// or shared storage when multi-host)")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for every process")
    if name == "local":
      p.add_argument("--num_processes", type=int, default=2)
      p.add_argument("--platform", default="cpu", help="cpu, or gpu: one process per GPU")
      p.add_argument("--devices_per_process", type=int, default=1, help="CPU devices each")
    else:
      options.add_arguments(p, (options.EXECUTE,))
    if name == "tpu":
      options.add_arguments(p, options.TPU)
    if name == "slurm":
      options.add_arguments(p, options.SLURM)
      p.add_argument(
        "--script", default="", help="where to write the script (default WORKDIR/job.sbatch)"
      )
  return parser


def _job(args: argparse.Namespace, rest: list[str], needed: bool = True) -> Job | None:
  if not needed:
    return None
  for flag in ("config", "workdir"):
    if not getattr(args, flag):
      raise LaunchError(f"--{flag} is required for {args.launcher}")
  return Job(args.config, args.workdir, parse_overrides(rest), parse_env(args.env))


def main(argv: list[str]) -> int:
  args, rest = _parser().parse_known_args(argv)
  if args.launcher == "local":
    local.run(_job(args, rest), args.num_processes, args.platform, args.devices_per_process)
    print(f"all {args.num_processes} processes finished; logs in {args.workdir}/logs")
    return 0
  if args.launcher == "tpu":
    spec = options.tpu_spec(vars(args))
    job = _job(args, rest, needed=args.action in ("up", "setup", "run", "relaunch"))
    for command in tpu.commands(args.action, spec, job):
      print(shlex.join(command), flush=True)
      if args.execute:
        result = subprocess.run(command, check=False)
        # A relaunch goes on when the VM to delete is already gone.
        if result.returncode and not (args.action == "relaunch" and command == tpu.delete(spec)):
          return result.returncode
    return 0
  job = _job(args, rest)
  cluster = options.slurm_cluster(vars(args))
  text = slurm.script(cluster, job)
  if not args.execute:
    print(text, end="")
    return 0
  return slurm.submit(job, text, args.script)


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except LaunchError as e:
    sys.exit(f"error: {e}")
