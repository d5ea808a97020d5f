"""What a training run's steps cost the host over time: CPU time, page faults, resident memory.

    python benchmarks/run_resources.py -- python -m gptjax.main --config=... --workdir=...

Runs the command, passes its output through, and at each `step N/...` line it prints reads
the child's /proc/PID/stat (Linux). Then prints, for every span between two logged steps,
wall, user and system time per step, minor page faults per step and resident memory. Wall
time moves with whatever else the machine runs; CPU time and faults per step do not, so a
run whose throughput falls while those stay flat was slowed by the machine, and one whose
faults or CPU time per step grow has a leak or fragmentation of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

STEP = re.compile(r"step (\d+)/")


def read_stat(pid: int) -> dict[str, float]:
  """The child's cumulative CPU seconds, minor faults and resident bytes, from /proc."""
  fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
  tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
  return {
    "minflt": int(fields[7]),
    "utime": int(fields[11]) / tick,
    "stime": int(fields[12]) / tick,
    "rss": int(fields[21]) * page,
  }


def main(argv: list[str]) -> int:
  command = argv[1:] if argv and argv[0] == "--" else argv
  if not command:
    print("error: no command; use: python benchmarks/run_resources.py -- COMMAND ...")
    return 2
  start = time.perf_counter()
  child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  rows = []
  for line in child.stdout:
    sys.stdout.write(line)
    match = STEP.search(line)
    if match:
      rows.append(
        {"step": int(match.group(1)), "t": time.perf_counter() - start, **read_stat(child.pid)}
      )
  code = child.wait()
  print(
    f"{'steps':>13} {'wall ms':>8} {'user ms':>8} {'sys ms':>7} {'faults':>8} {'RSS MB':>7}"
    "  (per step)"
  )
  for a, b in zip(rows, rows[1:]):
    n = b["step"] - a["step"]
    print(
      f"{a['step']:>6}-{b['step']:<6} {1e3 * (b['t'] - a['t']) / n:8.1f} "
      f"{1e3 * (b['utime'] - a['utime']) / n:8.1f} {1e3 * (b['stime'] - a['stime']) / n:7.1f} "
      f"{(b['minflt'] - a['minflt']) / n:8.0f} {b['rss'] / 2**20:7.0f}"
    )
  return code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
