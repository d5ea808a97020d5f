"""The persistent caches (JAX's and the trace cache): a warm start loads every program and
trains bit for bit alike."""

import os
import subprocess
import sys

import jax
import pytest
from run_rows import assert_same_run
from test_train import ROOT, cli

from gptjax import compile_cache, trace_cache
from gptjax.data import paths

DATA_DIRS = ("tensorflow_datasets", "tokenizers", "tokens")  # the data caches a run reads


def _fresh_cache_root(tmp_path, shared_root):
  """A cache root of its own (no compiled programs) that shares the session's prepared data."""
  root = tmp_path / "cache"
  root.mkdir()
  for name in DATA_DIRS:
    os.makedirs(os.path.join(shared_root, name), exist_ok=True)
    (root / name).symlink_to(os.path.join(shared_root, name))
  return root


def _entries(directory):
  return {name for name in os.listdir(directory) if name.endswith("-cache")}


@pytest.mark.slow
def test_a_second_start_loads_every_program_from_the_cache_and_trains_identically(
  tmp_path, isolated_cache
):
  root = _fresh_cache_root(tmp_path, isolated_cache)
  env = {**os.environ, paths.CACHE_ENV_VAR: str(root)}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  runs = [str(tmp_path / name) for name in ("cold", "warm")]
  xla = root / "xla"
  seen, logs = [], []
  for workdir in runs:
    result = subprocess.run(
      cli(workdir, **{"train.steps": 3}), check=True, capture_output=True, cwd=ROOT, env=env
    )
    seen.append(_entries(xla))
    logs.append(result.stderr.decode())
  cold, warm = seen
  assert any(name.startswith("jit_windowed_train_step-") for name in cold), sorted(cold)
  assert any(name.startswith("jit__lambda-") for name in cold), sorted(cold)  # the init
  assert warm == cold  # every compile of the second run was a hit: a miss writes an entry
  # The trace cache kept the init, the train step and the parameters' shapes; the warm
  # run read them back instead of tracing.
  traced = sorted(name.split("-")[0] for name in os.listdir(root / trace_cache.DIRECTORY))
  assert traced == ["abstract_params", "init", "train_step"], traced
  assert "loaded the compiled program" not in logs[0]
  for name in ("init", "train_step"):
    assert f"{name}: loaded the compiled program" in logs[1], logs[1][-3000:]
  assert_same_run(runs[1], runs[0])


@pytest.mark.slow
def test_compile_cache_false_writes_no_program(tmp_path, isolated_cache):
  root = _fresh_cache_root(tmp_path, isolated_cache)
  env = {**os.environ, paths.CACHE_ENV_VAR: str(root)}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  subprocess.run(
    cli(str(tmp_path / "run"), **{"train.steps": 1, "train.compile_cache": False}),
    check=True,
    capture_output=True,
    cwd=ROOT,
    env=env,
  )
  assert not (root / "xla").exists()
  assert not (root / trace_cache.DIRECTORY).exists()


@pytest.fixture
def restored_jax_config():
  """enable() sets process-wide JAX options: put them back so later tests compile as before."""
  saved = {
    name: getattr(jax.config, name)
    for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  }
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


def test_enable_uses_the_cache_root_or_a_directory_the_user_chose(
  tmp_path, isolated_cache, restored_jax_config
):
  jax.config.update("jax_compilation_cache_dir", None)
  assert compile_cache.enable(False) is None
  assert jax.config.jax_compilation_cache_dir is None
  assert compile_cache.enable(True) == os.path.join(isolated_cache, "xla")
  assert jax.config.jax_compilation_cache_dir == os.path.join(isolated_cache, "xla")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))  # e.g. JAX_COMPILATION_CACHE_DIR
  assert compile_cache.enable(True) == str(tmp_path)
  assert jax.config.jax_compilation_cache_dir == str(tmp_path)


_COMPILE_NAMED = """
import sys
import jax, numpy as np
from gptjax import compile_cache
compile_cache.enable(True)
print(jax.config.jax_compilation_cache_max_size)
for name in sys.argv[1:]:
  k = sum(map(ord, name))
  f = lambda x, k=k: jax.numpy.sin(x) * k
  f.__name__ = name
  jax.jit(f)(np.ones(4096, np.float32)).block_until_ready()
"""


def _compile_named(root, names, **env):
  """Compiles one distinct program per name in a fresh process; returns its printed bound."""
  env = {**os.environ, paths.CACHE_ENV_VAR: str(root), **env}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  result = subprocess.run(
    [sys.executable, "-c", _COMPILE_NAMED, *names],
    check=True,
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
  )
  return int(result.stdout.split()[-1])


def test_the_cache_is_bounded_and_evicts_least_recently_used_entries_even_old_ones(tmp_path):
  """Entries written unbounded (no access-time files, as before gptjax bounded the cache)
  are weighed too: a bound of about three entries keeps the newest three, and writes go on."""
  xla = tmp_path / "xla"
  unbounded = _compile_named(
    tmp_path, ["old_a", "old_b", "old_c", "old_d"], JAX_COMPILATION_CACHE_MAX_SIZE="-1"
  )
  assert unbounded == -1
  assert not any(name.endswith("-atime") for name in os.listdir(xla))
  sizes = [os.path.getsize(xla / name) for name in _entries(xla)]
  assert len(sizes) == 4
  bound = int(3.5 * max(sizes))
  _compile_named(
    tmp_path,
    ["new_a", "new_b", "new_c"],
    JAX_COMPILATION_CACHE_MAX_SIZE=str(bound),
    JAX_RAISE_PERSISTENT_CACHE_ERRORS="true",  # a failed eviction or write fails the process
  )
  kept = _entries(xla)
  assert sorted(name.split("-")[0] for name in kept) == ["jit_new_a", "jit_new_b", "jit_new_c"]
  assert sum(os.path.getsize(xla / name) for name in kept) <= bound
  # Without a bound of the user's, gptjax's applies.
  assert _compile_named(tmp_path, []) == compile_cache.MAX_BYTES
