"""From config to shardings: the device mesh and the logical-axis rules.

Modules only name logical axes; this file is the one place that decides which
mesh axes those names map to, so changing a parallelism strategy is a config edit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax.config import MESH_AXES

Rules = tuple[tuple[str, Any], ...]


def _fill(shape: dict[str, int], total: int, field: str) -> list[int]:
  sizes = [shape[a] for a in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise ValueError(
        f"{field}={dict(shape)}: {total} devices do not divide by {known}; "
        "change the fixed axis sizes"
      )
    sizes[sizes.index(-1)] = total // known
  if math.prod(sizes) != total:
    raise ValueError(
      f"{field}={dict(shape)}: uses {math.prod(sizes)} devices but there are "
      f"{total}; make the product match or set one axis to -1"
    )
  return sizes


def make_mesh(mesh: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; dcn axes span slices, ici axes stay within one."""
  devices = devices if devices is not None else jax.devices()
  num_slices = 1 + max((getattr(d, "slice_index", 0) or 0) for d in devices)
  dcn = _fill(mesh.dcn, num_slices, "mesh.dcn")
  ici = _fill(mesh.ici, len(devices) // num_slices, "mesh.ici")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  elif len(devices) == 1 or devices[0].platform == "cpu":
    grid = np.asarray(devices).reshape(ici)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices)
  return Mesh(grid, MESH_AXES)


def rules(mesh: ml_collections.ConfigDict) -> Rules:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh.rules)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, axis_rules: Rules) -> Any:
  """NamedShardings for a pytree of logical PartitionSpecs."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules)


def batch_sharding(mesh: Mesh, axis_rules: Rules) -> NamedSharding:
  """Token batches [batch, length] are split over the batch rule's mesh axes."""
  return logical_to_sharding(PartitionSpec("batch", None), mesh, axis_rules)


def batch_shardings(
  axes: dict[str, tuple[str | None, ...]], mesh: Mesh, axis_rules: Rules
) -> dict[str, NamedSharding]:
  """NamedShardings of a dict batch from each field's logical axis names."""
  return {
    name: logical_to_sharding(PartitionSpec(*names), mesh, axis_rules)
    for name, names in axes.items()
  }


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def active(mesh: Mesh, axis_rules: Rules) -> Iterator[None]:
  """The mesh and rules that logical constraints inside traced functions resolve against."""
  with mesh, nn.logical_axis_rules(axis_rules):
    yield


def ineffective_settings(
  config: ml_collections.ConfigDict, mesh: Mesh, *, replication_expected: bool = False
) -> list[str]:
  """Warnings for parallelism settings that cannot do what they seem to ask for.

  `replication_expected`: a training run split over one host's CPU devices for speed
  (gptjax.cpu_devices) replicates its state on purpose, so that warning is left out; a dry
  run on CPU devices standing in for accelerators keeps it.
  """
  warnings = []
  m = config.model
  if mesh.shape["fsdp"] == 1 and mesh.shape["data"] > 1 and not replication_expected:
    warnings.append(
      f"mesh fsdp axis has size 1: parameters and optimizer state are replicated on all "
      f"{mesh.shape['data']} data-parallel devices; set mesh.ici.fsdp to shard them"
    )
  tensor = mesh.shape["tensor"]
  if tensor > m.n_head:
    warnings.append(
      f"mesh tensor axis has size {tensor} > model.n_head={m.n_head}: tensor parallelism "
      f"wider than the number of heads cannot split attention"
    )
  return warnings


def check_divisible(config: ml_collections.ConfigDict, abstract_state: Any, mesh: Mesh) -> None:
  """Raises, before any compile, if a batch or parameter dimension cannot split evenly."""
  errors = []
  batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  if micro_batch % batch_ways:
    errors.append(
      f"train.batch_size={config.train.batch_size} / train.grad_accum_steps="
      f"{config.train.grad_accum_steps} = {micro_batch} sequences per micro-batch does not "
      f"split over data x fsdp = {batch_ways} devices; use a multiple of {batch_ways}"
    )
  for path, leaf in jax.tree_util.tree_leaves_with_path(
    abstract_state.params
  ):  # opt state mirrors it
    try:
      leaf.sharding.shard_shape(leaf.shape)
    except ValueError:
      name = "params" + jax.tree_util.keystr(path)
      errors.append(
        f"{name} of shape {leaf.shape} cannot split as {leaf.sharding.spec} over mesh "
        f"{dict(mesh.shape)}; change the mesh, the model size (e.g. model.pad_vocab_multiple) "
        f"or mesh.rules"
      )
  if errors:
    raise ValueError("parallelism does not fit this model:\n  " + "\n  ".join(errors[:10]))
