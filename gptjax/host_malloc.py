"""glibc malloc settings for XLA:CPU: freed memory stays in the heap for the next step.

XLA:CPU allocates a step's temporaries (activations, gradients, optimizer moments in
flight) with malloc and frees them when the step ends. By default glibc serves
blocks above its mmap threshold with a fresh mmap, unmaps them on free, and returns
the freed top of the heap to the kernel past its trim threshold, so the next step
writes to pages it has never touched: about 12,500 first-touch page faults per step
at nanoGPT's 0.8M shape and 168,000 (one 689 MB block) at the quick start's 3.2M, 6-12%
of the step in the kernel (README, "Performance"). The large block is allocated on
XLA's worker threads, whose malloc arenas cannot hold a block over 64 MB and map it
afresh whatever the thresholds, so all threads share the main heap as well. The
process's resident memory then stays at its high-water mark instead of shrinking
between steps.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_KEEP_BYTES = 2**31 - 1  # the largest value mallopt takes (an int): trim or mmap only past 2 GiB


def keep_freed_memory() -> bool:
  """Stops glibc from returning freed memory to the kernel, for the rest of this process.

  Call it before jax starts its backend: a thread that has already allocated keeps
  its own arena. Returns whether every setting took: False where the C library is
  not glibc (macOS has no mallopt; musl's ignores them), which changes nothing but speed.
  """
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  results = [
    mallopt(_M_ARENA_MAX, 1),
    mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES),
    mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES),
  ]
  return all(r == 1 for r in results)


def cpu_backend_ahead() -> bool:
  """Whether jax will run this process on its CPU backend, told before jax starts it.

  That is JAX_PLATFORMS naming cpu first or, without it, no accelerator to find: no
  PJRT plugin (the `jax_plugins` entry points and namespace, jax's discovery) and no
  libtpu. An accelerator host keeps glibc's defaults: its steps run on the device.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  return (
    importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None
  )
