"""When does XLA:CPU's in-process all-reduce hang? A data-parallel step, many times.

    python benchmarks/cpu_allreduce_hang.py [--devices=2] [--steps=3000] [--in_flight=0]

Why it exists: `mesh.cpu_devices=0` (gptjax.cpu_devices) splits a CPU host into one XLA
device per core, and with jaxlib 0.10.2 a data-parallel loop that queues too many steps
deadlocks: one device waits in the gradient all-reduce for a peer that never arrives, and
XLA aborts the process after 40 s ("Termination timeout for all reduce"). This is the
smallest program found that does it, with no gptjax code: a two-matrix MLP, parameters
replicated and the batch split over `--devices` CPU devices, stepped `--steps` times.
`--in_flight=N` waits for the step dispatched N steps earlier before dispatching the next
(gptjax.in_flight does the same in training); 0 never waits. It prints the steps per
second when it finishes; a hang prints XLA's rendezvous warnings and aborts.

Measured on a 2-core machine (add XLA_FLAGS="--xla_cpu_collective_call_warn_stuck_timeout_seconds=2
--xla_cpu_collective_call_terminate_timeout_seconds=6 --xla_cpu_collective_timeout_seconds=6"
to fail in seconds): with --in_flight=0 it hung within 36-53 steps in 4 of 4 runs on 2
devices and on 8; with 34 it hung; with 1, 2, 8, 16, 24 and 30 it ran 1,000-3,000 steps
clean every time. XLA:CPU queues at most 32 computations per device, and the hang needs a
full queue.
"""

from __future__ import annotations

import collections
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_DEVICES = flags.DEFINE_integer("devices", 2, "CPU devices to split the host into.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Data-parallel steps to run.")
_IN_FLIGHT = flags.DEFINE_integer(
  "in_flight", 0, "Steps the host may run ahead of the devices; 0: unbounded."
)


def loss(weights: list[jax.Array], x: jax.Array) -> jax.Array:
  return jnp.mean(jnp.tanh(x @ weights[0]) @ weights[1])


def sgd_step(weights: list[jax.Array], x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
  value, grads = jax.value_and_grad(loss)(weights, x)  # split batch: an all-reduce
  return jax.tree.map(lambda w, g: w - 1e-3 * g, weights, grads), value


def main(argv: list[str]) -> None:
  del argv
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  mesh = Mesh(jax.devices(), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, PartitionSpec("data"))
  step = jax.jit(
    sgd_step,
    in_shardings=(replicated, split),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
  weights = jax.device_put([jnp.full((256, 1024), 0.01), jnp.full((1024, 256), 0.01)], replicated)
  x = jax.device_put(jnp.ones((256 * _DEVICES.value, 256)), split)
  losses: collections.deque[jax.Array] = collections.deque()  # not donated: can be awaited
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    weights, value = step(weights, x)
    losses.append(value)
    if _IN_FLIGHT.value and len(losses) > _IN_FLIGHT.value:
      losses.popleft().block_until_ready()
  jax.block_until_ready(weights)
  seconds = time.perf_counter() - start
  print(
    f"{_STEPS.value} steps on {jax.device_count()} CPU devices, in_flight={_IN_FLIGHT.value}: "
    f"no hang, {_STEPS.value / seconds:.0f} steps/s"
  )


if __name__ == "__main__":
  app.run(main)
