"""JAX's persistent compilation cache, under $GPTJAX_CACHE/xla: a warm start skips XLA.

Compiling is most of a small run's start-up: on a 2-core CPU the quick start's parameter
init took 4-6 s to compile and its train step 4-11 s, every start, though the programs
were the same each time. XLA:CPU executables serialize, so JAX can keep them on disk
(keyed by the program, the devices, the compile options, the XLA flags and the jaxlib
version) and load one in a fraction of a second. A hit loads the executable that the
miss compiled, so a warm start computes bit-identical results (tests/test_compile_cache.py).

Every program is kept, however quick to compile: the quick start compiles about 30, most
in 20-40 ms, and reading one back takes 1-2 ms. Entries are a few hundred KB on CPU, but
a large model's are bigger and every shape, mesh and flag change adds more, so the
directory is bounded: past MAX_BYTES, JAX evicts the least recently used entries (its
LRUCache, which keeps an access-time file beside each entry and takes a file lock per
read and write). JAX_COMPILATION_CACHE_MAX_SIZE (bytes; -1 for no bound) overrides it.
"""

from __future__ import annotations

import os
import pathlib
import time

import jax

from gptjax.data import paths

DIRECTORY = "xla"  # under the cache root
MAX_BYTES = 4 << 30  # the directory's bound unless JAX_COMPILATION_CACHE_MAX_SIZE is set
_ENTRY, _ATIME = "-cache", "-atime"  # JAX's LRUCache file suffixes


def enable(on: bool) -> str | None:
  """Turns the cache on (unless `on` is False); returns its directory, or None when off.

  Call it before the first compile that should be cached. A directory the user already
  chose (JAX_COMPILATION_CACHE_DIR, or jax.config) is kept.
  """
  if not on:
    return None
  directory = jax.config.jax_compilation_cache_dir or os.path.join(paths.cache_root(), DIRECTORY)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if (
    "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ
    and jax.config.jax_compilation_cache_max_size == -1
  ):
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  if jax.config.jax_compilation_cache_max_size != -1 and "://" not in directory:
    _date_unbounded_entries(pathlib.Path(directory))
  return directory


def _date_unbounded_entries(directory: pathlib.Path) -> None:
  """Gives every entry that lacks one an access time (now), so the LRU bound can weigh it.

  Entries written while the cache was unbounded (before gptjax bounded it, or under
  JAX_COMPILATION_CACHE_MAX_SIZE=-1) have no access-time file, and JAX's eviction fails
  on them: every later write would then be skipped with a warning.
  """
  if not directory.is_dir():
    return
  stamp = time.time_ns().to_bytes(8, "little")
  for entry in directory.glob(f"*{_ENTRY}"):
    atime = entry.with_name(entry.name.removesuffix(_ENTRY) + _ATIME)
    if not atime.exists():
      atime.write_bytes(stamp)
