"""Tests for gptjax.host_malloc: after keep_freed_memory, reusing freed memory costs no page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Mallocs, fills and frees a 64 MiB block (what a step's temporaries do), counting the
# minor page faults, before and after keep_freed_memory. The module needs only the
# standard library, so the child loads it by path instead of importing gptjax (and jax).
_CHILD = """
import ctypes, importlib.util, json, resource
spec = importlib.util.spec_from_file_location("host_malloc", "gptjax/host_malloc.py")
host_malloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_malloc)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.restype = ctypes.c_void_p
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
SIZE, CYCLES = 64 << 20, 4

def faults(cycles):
  start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(cycles):
    block = libc.malloc(SIZE)
    libc.memset(block, 1, SIZE)
    libc.free(block)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

default = faults(CYCLES)
took = host_malloc.keep_freed_memory()
faults(1)  # the first block after the change is new memory either way
print(json.dumps({"default": default, "took": took, "kept": faults(CYCLES)}))
"""


@pytest.mark.skipif(
  platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_keep_freed_memory_reuses_pages() -> None:
  """By default every cycle maps the block afresh and faults on its pages; once the
  thresholds are raised the freed block is reused in place, without a fault per page."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # glibc's defaults
  out = subprocess.run(
    [sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  )
  counts = json.loads(out.stdout)
  assert counts["took"] is True
  assert counts["default"] >= 4  # at least one fault per fresh mapping (huge pages: one per 2 MiB)
  assert counts["kept"] * 10 <= counts["default"], counts
