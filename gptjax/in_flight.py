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
"""

from __future__ import annotations

import collections
from typing import Any

import jax

# Well below XLA:CPU's 32 queued computations per device, leaving room for the other
# programs (evaluation, checks) dispatched between steps; deep enough that the devices
# never wait for the host.
LIMIT = 8


class InFlight:
  """The outputs of the last `limit` dispatches; adding one more waits for the oldest."""

  def __init__(self, limit: int = LIMIT):
    if limit < 1:
      raise ValueError(f"InFlight limit={limit}: use 1 or more")
    self._limit = limit
    self._queue: collections.deque[Any] = collections.deque()

  def add(self, outputs: Any) -> None:
    """Records a dispatch by (a non-donated part of) its outputs; blocks while too many run.

    Donated outputs cannot be waited for once the next step consumes them, so pass
    something the loop keeps, e.g. the step's metrics.
    """
    self._queue.append(outputs)
    while len(self._queue) > self._limit:
      jax.block_until_ready(self._queue.popleft())

  def __len__(self) -> int:
    return len(self._queue)
