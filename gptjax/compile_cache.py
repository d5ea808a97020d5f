"""JAX's persistent compilation cache, under $GPTJAX_CACHE/xla: a warm start skips XLA.

Compiling is most of a small run's start-up: on a 2-core CPU the quick start's parameter
init took 4-6 s to compile and its train step 4-11 s, every start, though the programs
were the same each time. XLA:CPU executables serialize, so JAX can keep them on disk
(keyed by the program, the devices, the compile options, the XLA flags and the jaxlib
version) and load one in a fraction of a second. A hit loads the executable that the
miss compiled, so a warm start computes bit-identical results (tests/test_compile_cache.py).

Every program is kept, however quick to compile: the quick start compiles about 30, most
in 20-40 ms, and reading one back takes 1-2 ms. Entries are a few hundred KB; the
directory is never pruned, so delete it to reclaim the space.
"""

from __future__ import annotations

import os

import jax

from gptjax.data import paths

DIRECTORY = "xla"  # under the cache root


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
  return directory
