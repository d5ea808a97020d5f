"""Command line for scaling-law reports.

  python -m gptjax.report SWEEP_DIR [--out DIR] [--bootstrap 200]
  python -m gptjax.report fit --csv runs.csv [--d_column D | --c_column C] ...

The first form reads a sweep directory (or one run directory) through the
run-directory contract (summary.json, metrics.jsonl) and writes report.md,
report.html (plots embedded), the PNG plots and fits.json, into the sweep
directory unless --out says otherwise. `fit` reads any CSV of finished runs (from
this codebase or another), fits Chinchilla's Approach 3 and L(N) = E + A N^-alpha,
and prints JSON with bootstrap 95% intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from gptjax import rundir
from gptjax.scaling import fit, runs


class UsageError(ValueError):
  """A problem with the command line or its input file, reported without a traceback."""


def _read_columns(path: str) -> dict[str, list[str]]:
  if not Path(path).is_file():
    raise UsageError(f"--csv={path}: no such file; pass a CSV with a header row")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise UsageError(f"--csv={path}: no data rows under a header")
  return {name: [row[name] for row in rows] for name in rows[0]}


def _column(columns: dict[str, list[str]], flag: str, name: str, path: str) -> np.ndarray:
  if name not in columns:
    raise UsageError(
      f"--{flag}={name}: no such column in {path}; its columns are {', '.join(columns)}"
    )
  try:
    return np.array([float(v) for v in columns[name]])
  except ValueError as e:
    raise UsageError(f"--{flag}={name}: a value in {path} is not a number ({e})") from None


def _interval(samples: np.ndarray) -> list[float]:
  return [float(v) for v in np.percentile(samples, [2.5, 97.5])]


def run_fit(args: argparse.Namespace) -> dict:
  """The `fit` subcommand: points from the CSV in, constants and intervals out."""
  if args.bootstrap < 0:
    raise UsageError(f"--bootstrap={args.bootstrap}: must be >= 0 (0 skips the intervals)")
  columns = _read_columns(args.csv)
  n = _column(columns, "n_column", args.n_column, args.csv)
  loss = _column(columns, "loss_column", args.loss_column, args.csv)
  if args.d_column in columns:
    d = _column(columns, "d_column", args.d_column, args.csv)
    tokens_from = f"column {args.d_column}"
  elif args.c_column in columns:
    d = _column(columns, "c_column", args.c_column, args.csv) / (6.0 * n)
    tokens_from = f"D = {args.c_column} / (6 N)"
  else:
    raise UsageError(
      f"--d_column={args.d_column} and --c_column={args.c_column}: neither is a "
      f"column of {args.csv} ({', '.join(columns)}); name the tokens or FLOPs column"
    )
  try:
    loss, n, d = fit.drop_highest_loss(args.exclude_highest, loss, n, d)
  except ValueError as e:
    raise UsageError(f"--{e}") from None
  law_fit = fit.fit_parametric(n, d, loss)
  law = law_fit.law
  frontier = law.frontier(6.0 * np.max(n * d))
  out = {
    "n_points": int(loss.size),
    "excluded_highest": args.exclude_highest,
    "tokens": tokens_from,
    "objective": law_fit.objective,
    "constants": {k: {"value": getattr(law, k)} for k in ("E", "A", "B", "alpha", "beta")},
    "frontier": {
      "a": {"value": frontier.a},
      "b": {"value": frontier.b},
      "G": frontier.G,
      "at_max_flops": {
        "flops": float(frontier.flops),
        "n_opt": float(frontier.n_opt),
        "d_opt": float(frontier.d_opt),
        "tokens_per_param": float(frontier.tokens_per_param),
      },
    },
  }
  if args.bootstrap:
    samples = fit.bootstrap_parametric(n, d, loss, law_fit, args.bootstrap, args.seed)
    for i, name in enumerate(("E", "A", "B", "alpha", "beta")):
      out["constants"][name]["ci95"] = _interval(samples[:, i])
    alpha, beta = samples[:, 3], samples[:, 4]
    out["frontier"]["a"]["ci95"] = _interval(beta / (alpha + beta))
    out["frontier"]["b"]["ci95"] = _interval(alpha / (alpha + beta))
    out["bootstrap"] = {"resamples": args.bootstrap, "seed": args.seed}
  simple = fit.fit_saturating_power_law(n, loss)
  out["loss_vs_n"] = {
    "E": simple.E,
    "A": simple.A,
    "alpha": simple.alpha,
    "objective": simple.objective,
  }
  return out


def run_render(args: argparse.Namespace) -> dict:
  """The default job: a sweep directory in, report files out; returns {kind: path}."""
  if args.bootstrap < 1:
    raise UsageError(
      f"--bootstrap={args.bootstrap}: must be >= 1; the report's intervals and bands come from it"
    )
  from gptjax.scaling import render  # matplotlib: only this job needs the `report` extra

  try:
    sweep = runs.read_sweep(args.run_dir, only=args.only)
  except runs.RunDirError as e:
    raise UsageError(str(e)) from None
  if rundir.is_remote(args.run_dir) and not args.out:
    raise UsageError(
      f"--out: the report of {args.run_dir} is written to a local directory; pass --out=DIR"
    )
  return render.write_report(
    sweep,
    args.run_dir,
    args.out or args.run_dir,
    resamples=args.bootstrap,
    seed=args.seed,
    only=args.only,
  )


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m gptjax.report",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  jobs = p.add_subparsers(dest="job", required=True)
  f = jobs.add_parser("fit", help="fit L(N, D) (Chinchilla Approach 3) to a CSV of runs")
  f.add_argument("--csv", required=True, help="a CSV with a header row, one run per row")
  f.add_argument("--n_column", default="N", help="parameters column")
  f.add_argument("--d_column", default="D", help="training tokens column (used if present)")
  f.add_argument("--c_column", default="C", help="training FLOPs column, used as D = C / (6N)")
  f.add_argument("--loss_column", default="loss", help="final loss column")
  f.add_argument("--exclude_highest", type=int, default=0, help="drop the K highest-loss points")
  f.add_argument(
    "--bootstrap", type=int, default=100, help="resamples for the 95%% intervals; 0 skips"
  )
  f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  f.set_defaults(run=run_fit)
  r = jobs.add_parser("render", help="write the report of a sweep directory (the default job)")
  r.add_argument("run_dir", help="a sweep directory (sweep.json + run directories) or one run")
  r.add_argument(
    "--out",
    default="",
    help="local directory for the report (default: run_dir; required when run_dir is gs://)",
  )
  r.add_argument(
    "--only",
    default="",
    help="report only the members whose name matches this "
    "shell pattern, e.g. '*-l1-*' for one depth of a mixed ladder",
  )
  r.add_argument("--bootstrap", type=int, default=200, help="resamples for the 95%% intervals")
  r.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  r.set_defaults(run=run_render)
  return p


def main(argv: list[str] | None = None) -> int:
  p = parser()
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] not in ("fit", "render") and not argv[0].startswith("-"):
    argv = ["render", *argv]  # `python -m gptjax.report DIR` renders DIR
  args = p.parse_args(argv)
  try:
    result = args.run(args)
  except UsageError as e:
    p.error(str(e))  # exits 2 with the message on stderr
  json.dump(result, sys.stdout, indent=2)
  print()
  return 0


if __name__ == "__main__":
  sys.exit(main())
