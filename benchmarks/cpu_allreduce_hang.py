"""Does XLA:CPU's in-process all-reduce hang on this jaxlib? A data-parallel step, many times.

    python benchmarks/cpu_allreduce_hang.py [--devices=2] [--steps=3000] [--wait]

Why it exists: `mesh.cpu_devices=0` (gptjax.cpu_devices) would make CPU training 1.4-1.7x
faster, but with jaxlib 0.10.2 one device sometimes waits in the gradient all-reduce for a
peer that never arrives, and XLA aborts the process after 40 s ("Termination timeout for
all reduce"). This is the smallest program found that does it, with no gptjax code: a
two-matrix MLP, parameters replicated and the batch split over `--devices` CPU devices,
stepped `--steps` times, each step awaited with `--wait`. It prints the steps per second
when it finishes; a hang prints XLA's rendezvous warnings and aborts. On this 2-core
machine it hung with 2 and 8 devices, with and without --wait, with one parameter, and with
XLA_FLAGS=--xla_cpu_multi_thread_eigen=false. Run it on a new jaxlib before making the
split a default.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_DEVICES = flags.DEFINE_integer("devices", 2, "CPU devices to split the host into.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Data-parallel steps to run.")
_WAIT = flags.DEFINE_bool("wait", False, "Wait for each step before dispatching the next.")


def loss(weights: list[jax.Array], x: jax.Array) -> jax.Array:
  return jnp.mean(jnp.tanh(x @ weights[0]) @ weights[1])


def sgd_step(weights: list[jax.Array], x: jax.Array) -> list[jax.Array]:
  grads = jax.grad(loss)(weights, x)  # replicated weights, split batch: an all-reduce
  return jax.tree.map(lambda w, g: w - 1e-3 * g, weights, grads)


def main(argv: list[str]) -> None:
  del argv
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  mesh = Mesh(jax.devices(), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, PartitionSpec("data"))
  step = jax.jit(
    sgd_step, in_shardings=(replicated, split), out_shardings=replicated, donate_argnums=0
  )
  weights = jax.device_put([jnp.full((256, 1024), 0.01), jnp.full((1024, 256), 0.01)], replicated)
  x = jax.device_put(jnp.ones((256 * _DEVICES.value, 256)), split)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    weights = step(weights, x)
    if _WAIT.value:
      jax.block_until_ready(weights)
  jax.block_until_ready(weights)
  seconds = time.perf_counter() - start
  print(
    f"{_STEPS.value} steps on {jax.device_count()} CPU devices: no hang, "
    f"{_STEPS.value / seconds:.0f} steps/s"
  )


if __name__ == "__main__":
  app.run(main)
