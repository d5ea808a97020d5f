"""Tests for gptjax.host_malloc: after keep_freed_memory, reusing freed memory costs no page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from gptjax import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# On a worker thread, as XLA:CPU does with a step's temporaries: mallocs, fills and frees
# a 128 MiB block (over the 64 MB a thread's arena holds) four times, after one untimed
# round, and prints the minor page faults of the four. argv[1] == "keep" calls
# keep_freed_memory first. The module needs only the standard library, so the child
# loads it by path instead of importing gptjax (and jax).
_CHILD = """
import ctypes, importlib.util, json, resource, sys, threading
spec = importlib.util.spec_from_file_location("host_malloc", "gptjax/host_malloc.py")
host_malloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_malloc)
took = host_malloc.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.restype = ctypes.c_void_p
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
SIZE = 128 << 20
counts = []

def cycles(n):
  for _ in range(n):
    block = libc.malloc(SIZE)
    libc.memset(block, 1, SIZE)
    libc.free(block)

def worker():
  cycles(1)  # the first block is new memory either way
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  cycles(4)
  counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)

thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(json.dumps({"took": took, "faults": counts[0]}))
"""


def _faults(mode: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # glibc's defaults
  out = subprocess.run(
    [sys.executable, "-c", _CHILD, mode],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(out.stdout)


@pytest.mark.skipif(
  platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_keep_freed_memory_reuses_pages() -> None:
  """By default every cycle maps the block afresh and faults on its pages; with the
  settings the freed block is reused in place, without a fault per page."""
  default, kept = _faults("default"), _faults("keep")
  assert kept["took"] is True
  assert default["faults"] >= 4  # at least one fault per fresh mapping (huge pages: per 2 MiB)
  assert kept["faults"] * 10 <= default["faults"], (default, kept)


@pytest.mark.parametrize(
  "platforms,cpu", [("cpu", True), ("cpu,cuda", True), ("cuda,cpu", False), ("tpu", False)]
)
def test_cpu_backend_ahead_follows_jax_platforms(
  monkeypatch: pytest.MonkeyPatch, platforms: str, cpu: bool
) -> None:
  """JAX_PLATFORMS decides when set: jax takes its first platform."""
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_malloc.cpu_backend_ahead() is cpu
