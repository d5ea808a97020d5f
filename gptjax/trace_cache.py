"""What a start would otherwise trace again, kept on disk: whole compiled programs and the
parameters' abstract shapes, keyed by what they are traced from.

JAX's persistent cache (compile_cache.py) is keyed by the lowered program, so every start
still traces the model and lowers it to StableHLO before it can look an executable up: for
the quick start that was 1.9 s of a 5.1 s start on a 2-core CPU (the parameters' shapes
traced in 0.3 s, the init traced in 0.12 and lowered in 0.26, the train step traced in 0.86
and lowered in 0.35). This cache keys an executable by its inputs instead:

- the source of the gptjax package and the versions of Python, jax, jaxlib, flax, optax,
  numpy and ml_dtypes, which decide what a trace produces;
- the resolved run config, which decides every constant of the program (schedule, shapes);
- the argument structure, shapes, dtypes and shardings, and the devices;
- every jax.config value but the caches' and logging's, and XLA_FLAGS.

Settings that no program reads (logging, eval and checkpoint cadence, sampling, the seed,
which enters as an argument) are left out of the key, so changing them still hits.

A hit reads the executable that the miss compiled (jax.experimental.serialize_executable),
so a warm start computes bit-identical results (tests/test_executable_cache.py). Anything
else the key misses (an edited site-packages file, say) is covered by
`--config.train.compile_cache=False`, which turns this cache off with JAX's.

Only freshly compiled executables are kept. In jaxlib 0.10.2 an XLA:CPU executable that
JAX's cache loaded serializes without its functions, and a later process that loads those
bytes fails at the first call ("Function slice_bitcast_fusion.8 not found"). So a miss here
that JAX's cache serves is not stored, only noted; if the same key misses again (the
program is in use, not a one-off of an edit), it is compiled afresh, past JAX's cache, and
kept. A new program, which XLA compiles anyway, is kept at its first start.

Only single-process runs use it: a multi-process executable carries other processes'
devices. Like JAX's cache, loading an entry runs code from it, so the directory must be
the user's own. It keeps the `KEEP` most recently used entries (a few MB each).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import serialize_executable
from jax.experimental.compilation_cache import compilation_cache

from gptjax.data import paths

DIRECTORY = "traced"  # under the cache root
KEEP = 64  # entries kept; the least recently used beyond these are removed
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes")
# Config fields no traced program reads; everything else is part of the key.
PROGRAM_FREE = (
  "data.data_dir",
  "data.download",
  "data.eval_sequences",
  "eval",
  "train.branch_from",
  "train.checkpoint_every",
  "train.compile_cache",
  "train.dry_run",
  "train.eval_every",
  "train.extend",
  "train.init_from",
  "train.keep_checkpoints",
  "train.log_every",
  "train.num_samples",
  "train.peak_tflops",
  "train.profile_steps",
  "train.sample_num_beams",
  "train.sample_strategy",
  "train.sample_temperature",
  "train.sample_tokens",
  "train.sample_top_k",
  "train.sample_top_p",
  "train.seed",
)
_UNTRACED_SETTINGS = (  # jax.config names (prefixes) left out of the key
  "jax_compilation_cache",
  "jax_debug_log_modules",
  "jax_enable_compilation_cache",
  "jax_explain_cache_misses",
  "jax_log",
  "jax_persistent_cache",
  "jax_raise_persistent_cache_errors",
)
_XLA_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_xla_cache_hits = 0


def _count_xla_cache_hits(event: str, **_: Any) -> None:
  global _xla_cache_hits
  if event == _XLA_CACHE_HIT:
    _xla_cache_hits += 1


jax.monitoring.register_event_listener(_count_xla_cache_hits)


@functools.cache
def source_fingerprint() -> str:
  """sha256 of every .py file of the gptjax package (path and contents)."""
  root = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read() + b"\0")
  return digest.hexdigest()


def _versions() -> str:
  return sys.version + "".join(f"|{p}={importlib.metadata.version(p)}" for p in _PACKAGES)


def _signature(args: tuple[Any, ...]) -> str:
  """The argument tree with each leaf's type (shape, dtype, weak type) and sharding."""
  leaves, treedef = jax.tree.flatten(args)
  return str(treedef) + "".join(
    f"|{jax.typeof(leaf)}@{getattr(leaf, 'sharding', None)}" for leaf in leaves
  )


def _program_settings(config: ml_collections.ConfigDict) -> str:
  settings = json.loads(config.to_json_best_effort())
  for field in PROGRAM_FREE:
    *parents, leaf = field.split(".")
    node = settings
    for parent in parents:
      node = node.get(parent, {})
    node.pop(leaf, None)
  return json.dumps(settings, sort_keys=True)


def _traced_setting(name: str) -> bool:
  """Whether a jax.config setting can change a program: the caches' and logging's cannot.

  Left out also because the fresh compile turns JAX's cache off for a moment, and a key
  made on another thread meanwhile must not change with it.
  """
  return not name.startswith(_UNTRACED_SETTINGS)


def key(name: str, config: ml_collections.ConfigDict, args: tuple[Any, ...]) -> str:
  """The entry's name: `name` (which program) and a digest of everything its trace reads."""
  devices = [(d.platform, d.device_kind, d.id, d.process_index) for d in jax.devices()]
  parts = (
    name,
    source_fingerprint(),
    _versions(),
    _program_settings(config),
    _signature(args),
    repr(devices),
    json.dumps(
      {k: repr(v) for k, v in jax.config.values.items() if _traced_setting(k)}, sort_keys=True
    ),
    os.environ.get("XLA_FLAGS", ""),
  )
  digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
  return f"{name}-{digest}"


def abstract(
  name: str, config: ml_collections.ConfigDict, trace: Callable[[], Any], *, enabled: bool
) -> Any:
  """`trace()` (a tree of abstract shapes, picklable), or what an earlier start traced."""
  if not enabled or jax.process_count() > 1:
    return trace()
  path = os.path.join(paths.cache_root(), DIRECTORY, key(name, config, ()) + ".pkl")
  try:
    with open(path, "rb") as f:
      value = pickle.load(f)
  except OSError:  # missing, or an unreadable cache directory: a miss
    value = trace()
    _keep(path, pickle.dumps(value))
  else:
    _touch(path)
  return value


def compiled(
  jitted: Any,
  args: tuple[Any, ...],
  *,
  name: str,
  config: ml_collections.ConfigDict,
  enabled: bool,
) -> jax.stages.Compiled:
  """`jitted.lower(*args).compile()`, or the executable an earlier start compiled for them.

  Off (`enabled` False) and in multi-process runs this is the plain compile.
  """
  if not enabled or jax.process_count() > 1:
    return jitted.lower(*args).compile()
  path = os.path.join(paths.cache_root(), DIRECTORY, key(name, config, args) + ".bin")
  start = time.perf_counter()
  try:
    with open(path, "rb") as f:
      payload = f.read()
  except OSError:  # missing, or an unreadable cache directory: a miss
    payload = None
  if payload is not None:
    try:
      serialized, in_tree, out_tree, device_ids = pickle.loads(payload)
      by_id = {d.id: d for d in jax.devices()}
      executable = serialize_executable.deserialize_and_load(
        serialized, in_tree, out_tree, execution_devices=[by_id[i] for i in device_ids]
      )
    except Exception as e:  # pylint: disable=broad-exception-caught
      logging.warning("%s: unreadable cached executable (%s); compiling it again", path, e)
    else:
      _touch(path)
      logging.info("%s: loaded the compiled program in %.2f s", name, time.perf_counter() - start)
      return executable
  wanted = path + ".wanted"  # JAX's cache served this key before: compile it afresh now
  fresh = os.path.exists(wanted)
  hits_before = _xla_cache_hits
  with _without_jax_cache() if fresh else contextlib.nullcontext():
    executable = jitted.lower(*args).compile()
  if _xla_cache_hits != hits_before:
    logging.info("%s: JAX's cache served it; it is kept here if it is needed again", name)
    _keep(wanted, b"")
    return executable
  try:
    # The devices it runs on, in order: by default a loaded executable spans them all.
    device_ids = [d.id for d in executable.runtime_executable().local_devices()]
    payload = pickle.dumps((*serialize_executable.serialize(executable), device_ids))
  except (ValueError, NotImplementedError, pickle.PicklingError) as e:
    logging.info("%s: not kept in %s (%s)", name, DIRECTORY, e)
    return executable
  if _keep(path, payload) and fresh:
    os.remove(wanted)
  return executable


def _touch(path: str) -> None:
  """Marks an entry most recently used; a read-only cache is still read."""
  with contextlib.suppress(OSError):
    os.utime(path)


def _keep(path: str, payload: bytes) -> bool:
  """Writes an entry; whether it was written. A cache that cannot be written (a full disk,
  a file-size limit) costs the next start its speed, never this run."""
  try:
    paths.atomic_write_bytes(path, payload)
  except OSError as e:
    logging.warning("%s: not kept (%s); the next start traces it again", path, e)
    return False
  _prune(os.path.dirname(path))
  return True


@contextlib.contextmanager
def _without_jax_cache():
  """JAX's persistent cache off for the compiles inside, and back as it was after."""
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()  # it decides once whether it is in use; decide again
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", previous)
    compilation_cache.reset_cache()


def _prune(directory: str) -> None:
  """Removes the least recently used entries (and notes) beyond KEEP; races are harmless."""
  entries = []
  for entry in os.scandir(directory):
    if entry.name.endswith((".bin", ".pkl", ".wanted")):
      try:
        entries.append((entry.stat().st_mtime, entry.path))
      except FileNotFoundError:
        continue
  for _, path in sorted(entries, reverse=True)[KEEP:]:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
