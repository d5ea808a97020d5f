"""How many XLA:CPU devices a run splits its host into, chosen before JAX's backend starts.

XLA:CPU runs each device's program on its own thread and parallelizes only large dots across
cores; the rest of a small model's step (elementwise fusions, LayerNorm and softmax reductions,
attention's many small batched matmuls, the optimizer update) runs on that one thread. One
device per core, with the batch split over them by the mesh's -1 axis (data parallelism), puts
every core on all of it: on 2 cores, 1.13-1.25x the tokens/s of one device at 0.8M to 16M
parameters (README "Training speed on CPU"). Parameters are replicated, as on any data-parallel
mesh; the gradients are summed across devices in a different order than one device sums its
batch, so losses agree to float tolerance, not bitwise, with a one-device run.

It is the default (`mesh.cpu_devices=0`). Two costs bound it:
- memory: every device holds the whole float32 state (parameters, gradients, Adam's two
  moments: 16 bytes a parameter), so the split stops where those copies would pass a quarter
  of the host's memory (a 124M model: 2 GB a copy);
- XLA:CPU's in-process all-reduce (jaxlib 0.10.2) deadlocks once a device has 32 programs
  queued, which the host loops avoid by running at most a few steps ahead (gptjax.in_flight;
  benchmarks/cpu_allreduce_hang.py).

The count is JAX's `jax_num_cpu_devices`, which can only be set before the backend initializes,
so `python -m gptjax.main` calls `configure` first. It affects only the CPU backend; on a GPU or
TPU host the extra CPU devices are never used.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections

from gptjax import flops
from gptjax.config import MESH_AXES

XLA_FLAG = "--xla_force_host_platform_device_count"
# Float32 parameters, gradients and Adam's two moments: what each replica holds.
STATE_BYTES_PER_PARAM = 16


def host_cores() -> int:
  """Cores this process may run on (its affinity mask, e.g. under taskset or a CPU quota'd job)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_memory_bytes() -> int:
  """Physical memory of this host."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose(config: ml_collections.ConfigDict, cores: int, memory_bytes: int) -> int:
  """The CPU device count for `config` on a host with `cores` cores and `memory_bytes` of RAM.

  `mesh.cpu_devices` > 0 is taken as given (1: one device). With 0 (the default), a mesh
  with fixed sizes gets exactly the devices it names, and a mesh with a -1 axis gets the most
  devices, at most one per core and at most as many state copies as fit a quarter of the
  memory, that its fixed axes divide and over which the micro-batch (train.batch_size /
  grad_accum_steps, the unit a batch ramp's stages are made of, and the eval batch) splits
  evenly; else the fixed product.
  """
  if config.mesh.cpu_devices:
    return config.mesh.cpu_devices
  ici, micro = config.mesh.ici, config.train.batch_size // config.train.grad_accum_steps
  fixed = math.prod(ici[a] for a in MESH_AXES if ici[a] != -1)
  if -1 not in [ici[a] for a in MESH_AXES]:
    return fixed
  state_bytes = STATE_BYTES_PER_PARAM * flops.param_counts(config.model)["n_params"]
  most = min(cores, memory_bytes // 4 // state_bytes)
  for n in range(most - most % fixed, fixed, -fixed):
    filled = {a: n // fixed if ici[a] == -1 else ici[a] for a in MESH_AXES}
    batch_ways = filled["data"] * filled["fsdp"]
    if micro % batch_ways == 0:
      return n
  return fixed


def configure(config: ml_collections.ConfigDict, distributed: bool) -> int | None:
  """Sets JAX's CPU device count for this run; returns it, or None when left as it was.

  Left alone under `--distributed` (each process is one host of a multi-process mesh), when
  XLA_FLAGS already forces a count (the multi-device tests do), or when JAX's own setting was
  changed. Must run before anything initializes a JAX backend.
  """
  if distributed or XLA_FLAG in os.environ.get("XLA_FLAGS", ""):
    return None
  if jax.config.jax_num_cpu_devices != -1:
    return None
  count = choose(config, host_cores(), host_memory_bytes())
  jax.config.update("jax_num_cpu_devices", count)
  return count
