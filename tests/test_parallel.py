"""Parallelism: every mesh computes the same training run, with the shardings the rules say.

The 8 devices come from tests/conftest.py (XLA host-platform devices on CPU).
"""

import os
import runpy
import shutil
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from run_rows import assert_same_curve, rows

from gptjax import config as config_lib
from gptjax import memory_plan, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]


def small_config(mesh_shape=(8, 1, 1), **overrides) -> ml_collections.ConfigDict:
  """Every sharded dimension divides by 8, so any 8-device mesh can shard it."""
  c = config_lib.base_config()
  c.model.update(
    n_layer=2, d_model=64, n_head=8, d_ff=128, vocab_size=264, seq_len=16
  )  # bytes + EOS = 257, padded to 8s
  c.train.update(batch_size=8, steps=3, log_every=1, num_samples=0)
  c.data.update(tokenizer="bytes", eval_sequences=8)
  c.optim.warmup_steps = 1
  c.mesh.ici.update(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])
  return config_lib.override(c, overrides)


def mesh_for(shape):
  return sharding.make_mesh(small_config(shape).mesh, devices=jax.devices()[: int(np.prod(shape))])


def build(config, shape):
  return train.build(config, mesh_for(shape), eos_id=256)  # the byte tokenizer's EOS


def train_three_steps(shape, batch_size=8, grad_accum_steps=1):
  config = small_config(
    shape, **{"train.batch_size": batch_size, "train.grad_accum_steps": grad_accum_steps}
  )
  program = build(config, shape)
  # One batch three times, so the loss must fall as the model fits it.
  batches = np.asarray(
    jax.random.randint(jax.random.PRNGKey(1), (1, batch_size, 17), 0, 256), np.int32
  )
  batches = np.repeat(batches, 3, axis=0)
  with sharding.active(program.mesh, program.axis_rules):
    state = program.init(0)
    losses = []
    for batch in batches:
      state, window = program.train_step(
        state,
        train.Window.zeros(),
        {"tokens": jax.make_array_from_process_local_data(program.batch_sharding, batch)},
      )
      losses.append(float(window.loss_sum))
  return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def reference():
  return train_three_steps((1, 1, 1))


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES[1:], ids=lambda s: "x".join(map(str, s)))
def test_same_losses_and_parameters_on_every_mesh(reference, shape):
  ref_losses, ref_params, _ = reference
  losses, params, _ = train_three_steps(shape)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < losses[0]
  # atol: Adam turns float32 reduction-order noise on ~eps gradients into <1% of an lr step.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_accumulation_on_a_mesh_matches_one_batch_on_one_device():
  """Micro-batches stay spread over the data x fsdp devices and still sum to the full batch."""
  ref_losses, ref_params, _ = train_three_steps((1, 1, 1), batch_size=16)
  losses, params, _ = train_three_steps((2, 2, 2), batch_size=16, grad_accum_steps=2)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# Logical axes of each parameter, written out independently of model.py, and the mesh axes
# DESIGN.md's default rules give them.
LOGICAL = {
  "wte": ("vocab", "embed"),
  "wpe": ("length", "embed"),
  "qkv_kernel": ("embed", None, "heads", "kv"),
  "qkv_bias": (None, "heads", "kv"),
  "out_kernel": ("heads", "kv", "embed"),
  "out_bias": ("embed",),
  "fc_kernel": ("embed", "mlp"),
  "fc_bias": ("mlp",),
  "proj_kernel": ("mlp", "embed"),
  "proj_bias": ("embed",),
  "scale": ("embed",),
  "bias": ("embed",),
}
RULES = {
  "batch": ("data", "fsdp"),
  "embed": "fsdp",
  "heads": "tensor",
  "mlp": "tensor",
  "vocab": "tensor",
}


@pytest.mark.parametrize("shape", [(1, 4, 2), (2, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_every_leaf_is_sharded_as_the_rules_say(shape):
  program = build(small_config(shape), shape)
  state = program.abstract_state
  for tree in (state.params, state.opt_state[1][0].mu, state.opt_state[1][0].nu):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = path[-1].key
      axes = LOGICAL[name]
      if "blocks" in jax.tree_util.keystr(path):
        axes = ("layers",) + axes
      expected = NamedSharding(program.mesh, P(*(RULES.get(a) for a in axes)))
      assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (path, leaf.sharding.spec)


def test_per_device_parameter_bytes_fall_by_fsdp_times_tensor():
  replicated = memory_plan.per_device_bytes(
    build(small_config((8, 1, 1)), (8, 1, 1)).abstract_state.params
  )
  sharded = build(small_config((1, 4, 2)), (1, 4, 2)).abstract_state.params
  kernels = {k: v for k, v in sharded["blocks"]["mlp"].items() if k.endswith("kernel")}
  full = sum(v.size * 4 for v in kernels.values())
  assert memory_plan.per_device_bytes(kernels) * 8 == full  # 2-D sharded matrices: exactly 1/8
  # Biases and LayerNorms are split on one axis only, so the whole tree is a bit above 1/8.
  assert 1 / 8 <= memory_plan.per_device_bytes(sharded) / replicated < 1 / 6


def test_mesh_errors_name_the_field_and_fix():
  c = small_config((3, 1, 1))
  with pytest.raises(ValueError, match=r"mesh.ici=.*uses 3 devices but there are 8"):
    sharding.make_mesh(c.mesh)
  c.mesh.ici.update(data=-1, fsdp=3, tensor=1)
  with pytest.raises(ValueError, match=r"mesh.ici=.*8 devices do not divide by 3"):
    sharding.make_mesh(c.mesh)
  c.mesh.ici.update(data=-1, fsdp=2, tensor=2)
  assert dict(sharding.make_mesh(c.mesh).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_indivisible_parameters_are_refused_before_compiling():
  c = small_config((1, 1, 8), **{"model.n_head": 4, "model.d_model": 64})
  with pytest.raises(ValueError, match=r"qkv_kernel.*cannot split.*tensor"):
    build(c, (1, 1, 8))
  c = small_config((8, 1, 1), **{"train.batch_size": 4})
  with pytest.raises(ValueError, match=r"train.batch_size=4.*multiple of 8"):
    build(c, (8, 1, 1))


@pytest.mark.slow
def test_dry_run_reports_per_device_memory_and_ineffective_settings():
  report = memory_plan.dry_run(small_config((8, 1, 1), **{"model.n_head": 4}))
  params = build(small_config((8, 1, 1)), (8, 1, 1)).abstract_state.params
  total_gib = sum(leaf.size * 4 for leaf in jax.tree.leaves(params)) / 1024**3
  assert f"parameters        {total_gib:9.3f} GiB" in report  # data-parallel: full copy
  assert "peak estimate" in report
  assert "fsdp axis has size 1" in report
  report = memory_plan.dry_run(
    small_config(
      (1, 1, 8),
      **{
        "model.n_head": 8,
        "mesh.rules": (
          ("batch", ("data", "fsdp")),
          ("length", None),
          ("embed", "fsdp"),
          ("heads", None),
          ("kv", None),
          ("mlp", "tensor"),
          ("vocab", "tensor"),
          ("layers", None),
        ),
      },
    )
  )
  assert "warning" not in report


@pytest.mark.slow
def test_restore_onto_another_mesh_continues_the_loss_curve(tmp_path):
  reference = str(tmp_path / "reference")
  train.run(small_config((8, 1, 1), **{"train.steps": 6, "train.checkpoint_every": 3}), reference)
  resharded = str(tmp_path / "resharded")
  shutil.copytree(reference, resharded)
  shutil.rmtree(os.path.join(resharded, "checkpoints", "6"))  # as if stopped after step 3
  train.run(small_config((2, 2, 2), **{"train.steps": 6, "train.checkpoint_every": 3}), resharded)
  assert_same_curve(rows(resharded), rows(reference))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch_two_processes(workdir, overrides, port, log_prefix):
  """Logs go to files: a pipe nobody drains would block one process inside a collective."""
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
  }
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  procs = []
  for i in range(2):
    with open(f"{log_prefix}.{i}.log", "w") as log:
      procs.append(
        subprocess.Popen(
          [
            sys.executable,
            "-m",
            "gptjax.main",
            f"--config={ROOT}/experiments/quickstart.py",
            f"--workdir={workdir}",
            "--distributed",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            *flags,
          ],
          cwd=ROOT,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  return procs


def _read(path):
  with open(path) as f:
    return f.read()


@pytest.mark.slow
def test_two_processes_train_get_killed_resume_and_match_one_process(tmp_path):
  """2 jax.distributed processes x 4 CPU devices (gloo) vs 1 process x 8 devices."""
  overrides = {
    "model.n_layer": 2,
    "model.d_model": 64,
    "model.n_head": 8,
    "model.d_ff": 128,
    "model.vocab_size": 264,
    "model.seq_len": 16,
    "data.tokenizer": "bytes",
    "data.eval_sequences": 8,
    "train.batch_size": 8,
    "train.steps": 150,
    "train.log_every": 1,
    "train.eval_every": 50,
    "train.checkpoint_every": 25,
    "train.num_samples": 1,
    "optim.warmup_steps": 1,
  }
  reference = str(tmp_path / "reference")
  c = config_lib.override(
    runpy.run_path(os.path.join(ROOT, "experiments", "quickstart.py"))["get_config"](), overrides
  )
  train.run(c, reference)  # the same config in one process; also prepares the data caches

  workdir = str(tmp_path / "two_processes")
  logs = str(tmp_path / "first")
  procs = _launch_two_processes(workdir, overrides, _free_port(), logs)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 300
  while not (
    os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= 50 for d in os.listdir(ckpt_dir))
  ):
    assert all(p.poll() is None for p in procs), _read(f"{logs}.0.log")[-3000:]
    assert time.time() < deadline, _read(f"{logs}.0.log")[-3000:]
    time.sleep(0.05)
  for p in procs:
    p.kill()
    p.wait()
  saved = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert saved[-1] < 150
  logs = str(tmp_path / "resumed")
  procs = _launch_two_processes(workdir, overrides, _free_port(), logs)
  codes = [p.wait(timeout=400) for p in procs]
  outputs = [_read(f"{logs}.{i}.log") for i in range(2)]
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert f"at step {saved[-1]}" in outputs[0]
  assert "process 1 of 2" in outputs[1]
  assert os.path.getsize(os.path.join(workdir, "samples.txt")) > 0  # sampling across processes
  # gloo sums across processes in another order than one process does over 8 devices, and
  # that float32 difference compounds over the steps: 1e-4 instead of 1e-5.
  assert_same_curve(rows(workdir), rows(reference), rtol=1e-4)
