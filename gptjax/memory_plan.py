"""Memory planning: compile the train step ahead of time for the configured mesh.

Everything is abstract (shapes and shardings), so a 175B model can be planned on
a laptop: with `XLA_FLAGS=--xla_force_host_platform_device_count=N` and the CPU
backend, N fake devices stand in for the target mesh. Parameter and optimizer
bytes per device are exact (they follow from the shardings); the compiler's
activation estimate is the CPU compiler's, which is indicative for TPU/GPU.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

from gptjax import flops, sharding, train

GiB = 1024**3


def per_device_bytes(abstract_tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return sum(
    math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    for leaf in jax.tree.leaves(abstract_tree)
  )


def dry_run(config: ml_collections.ConfigDict) -> str:
  """A report of per-device memory for the configured model, batch and mesh."""
  if config.train.objective != "lm":
    raise ValueError(
      f"train.dry_run=True with train.objective={config.train.objective!r}: the "
      "dry run plans pretraining batches only; plan with train.objective='lm' "
      "(a task batch of seq_len rows costs about the same)"
    )
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise ValueError(
      f"{e}\nto plan for a mesh larger than this machine, run the dry run on fake CPU devices: "
      f"JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=N"
    ) from None
  program = train.build(config, mesh, eos_id=0)  # only shapes matter here
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  with sharding.active(mesh, program.axis_rules):
    compiled = program.train_step.lower(
      program.abstract_state, train.Window.zeros(), program.abstract_batch(config.train.batch_size)
    ).compile()
  params = per_device_bytes(program.abstract_state.params)
  optimizer = per_device_bytes(program.abstract_state.opt_state)
  counts = flops.param_counts(config.model)
  lines = [
    f"model: {counts['n_params']:,} parameters ({config.model.param_dtype}), "
    f"{config.model.n_layer} layers, d_model {config.model.d_model}, "
    f"compute {config.model.dtype}, remat {config.model.remat_policy}",
    f"mesh: {dict(mesh.shape)} = {mesh.size} devices ({jax.devices()[0].device_kind})",
    f"batch: {config.train.batch_size} sequences x {config.model.seq_len} tokens, "
    f"{config.train.grad_accum_steps} micro-batches of {micro_batch}",
    "per device:",
    f"  parameters        {params / GiB:9.3f} GiB",
    f"  optimizer state   {optimizer / GiB:9.3f} GiB",
  ]
  analysis = compiled.memory_analysis()
  if analysis is None:
    lines.append("  (this backend gives no compiled memory analysis)")
  else:
    peak = (
      analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      - analysis.alias_size_in_bytes
      + analysis.temp_size_in_bytes
    )
    lines += [
      f"  activations/temp  {analysis.temp_size_in_bytes / GiB:9.3f} GiB (compiler estimate)",
      f"  arguments         {analysis.argument_size_in_bytes / GiB:9.3f} GiB",
      f"  outputs           {analysis.output_size_in_bytes / GiB:9.3f} GiB "
      f"({analysis.alias_size_in_bytes / GiB:.3f} GiB donated back)",
      f"  peak estimate     {peak / GiB:9.3f} GiB",
    ]
  lines += [f"warning: {w}" for w in sharding.ineffective_settings(config, mesh)]
  return "\n".join(lines)
