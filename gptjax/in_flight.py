"""How far the host may run ahead of its devices: a bounded queue of dispatched programs.

JAX dispatches asynchronously, so a host loop that never reads a result can queue
hundreds of steps. On a single-process CPU mesh of several devices (`mesh.cpu_devices`)
that deadlocks: XLA:CPU (jaxlib 0.10.2) lets each device queue 32 computations, and a
program with collectives (a data-parallel step's gradient all-reduce, an eval step's
gather) that fills that queue leaves one device waiting in the collective for a peer whose
launch is blocked behind the full queue; XLA aborts the process after its 40 s rendezvous
timeout. `benchmarks/cpu_allreduce_hang.py --in_flight=N` measures it without gptjax: with
up to 30 steps queued it ran clean, with 34 or unbounded it hung within about 50 steps, on
2 and on 8 devices.

Waiting for the step dispatched `limit` steps earlier is no host sync on the critical
path: the devices still have `limit` steps queued while the host waits. The bound is
applied on every backend; a deeper queue buys nothing once dispatch is ahead of compute.

The bound also holds the host within about AHEAD_S of work of its devices: a stop
request (SIGTERM, Ctrl-C) checkpoints the state the host has dispatched, so everything
queued must finish first. Eight 5-second steps would be 40 s, past a preemption notice;
so the queue shrinks to ceil(AHEAD_S / step time) steps (at least MIN_LIMIT, which keeps
the next step queued behind the running one). The step time is read off the waits
themselves: with the queue full, consecutive dispatches finish one step time apart.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

import jax

# Well below XLA:CPU's 32 queued computations per device, leaving room for the other
# programs (evaluation, checks) dispatched between steps; deep enough that the devices
# never wait for the host.
LIMIT = 8
MIN_LIMIT = 2
AHEAD_S = 1.0  # seconds of queued work the host may run ahead, above MIN_LIMIT steps


class InFlight:
  """The outputs of the last few dispatches; adding one more than the limit waits for the
  oldest. The limit starts at `limit` and follows the step time (module docstring)."""

  def __init__(self, limit: int = LIMIT, ahead_s: float = AHEAD_S):
    if limit < 1:
      raise ValueError(f"InFlight limit={limit}: use 1 or more")
    self._max = self.limit = limit
    self._ahead_s = ahead_s
    self._queue: collections.deque[Any] = collections.deque()
    self._last_finish: float | None = None  # when the last awaited dispatch finished

  def add(self, outputs: Any) -> None:
    """Records a dispatch by (a non-donated part of) its outputs; blocks while too many run.

    Donated outputs cannot be waited for once the next step consumes them, so pass
    something the loop keeps, e.g. the step's metrics.
    """
    self._queue.append(outputs)
    while len(self._queue) > self.limit:
      oldest = self._queue.popleft()
      running = not all(leaf.is_ready() for leaf in jax.tree.leaves(oldest))
      jax.block_until_ready(oldest)
      now = time.monotonic()
      if running and self._last_finish is not None:  # one step time since the last wait
        steps = math.ceil(self._ahead_s / max(now - self._last_finish, 1e-9))
        self.limit = min(self._max, max(MIN_LIMIT, steps))
      self._last_finish = now if running else None

  def __len__(self) -> int:
    return len(self._queue)
