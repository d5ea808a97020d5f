"""train.init_from: start training from another run's or a Hugging Face model's parameters.

  ''              fresh parameters (the default)
  'run:DIR'       the newest checkpoint of the gptjax run in DIR
  'run:DIR@STEP'  its checkpoint at STEP
  'hf:DIR'        a Hugging Face GPT-2 / openai-gpt directory (gptjax.convert's mapping)

Only parameters are taken: the optimizer starts fresh and the step counts from 0.
Both kinds of source pass through the HF tensor layout (gptjax.convert), so the
source's scanned or unrolled blocks and vocabulary padding need not match the run's.
The model shape must: `resolve` compares it from the source's config alone, before
any data is prepared or anything compiled.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from gptjax import convert
from gptjax.config import parse_init_from as parse
from gptjax.load import checkpoint_steps, load, run_config

# The fields that fix parameter shapes (layout fields like scan_layers and
# pad_vocab_multiple are converted, so they may differ).
SHAPE_FIELDS = ("architecture", "n_layer", "d_model", "n_head", "d_ff", "vocab_size", "seq_len")


def source_model(spec: str, field: str = "train.init_from") -> dict[str, Any]:
  """The model.* fields of the source, read from its config.json."""
  kind, directory, _ = parse(spec, field)
  if kind == "run":
    return run_config(directory).model.to_dict()
  config_file = epath.Path(directory) / "config.json"
  if not config_file.is_file():
    raise ValueError(f"{field}={spec!r}: no config.json in {directory}")
  return convert.model_from_hf_config(json.loads(config_file.read_text()))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with train.init_from made exact (absolute directory, and the step for a run).

  Raises ValueError if the source is missing or its model shape differs from the
  run's, listing every differing field.
  """
  spec = config.train.init_from
  if not spec:
    return config
  source = source_model(spec)
  diffs = [
    f"model.{f}: source {source[f]!r}, config {config.model[f]!r}"
    for f in SHAPE_FIELDS
    if source[f] != config.model[f]
  ]
  if diffs:
    raise ValueError(
      f"train.init_from={spec!r}: the source model has another shape: "
      + "; ".join(diffs)
      + "; set these model.* fields to the source's values"
    )
  resolved = config.copy_and_resolve_references()
  resolved.train.init_from = exact(spec)
  return resolved


def exact(spec: str, field: str = "train.init_from") -> str:
  """`spec` with an absolute directory and, for a run, the step of the checkpoint it
  names (the newest when it names none), so a resume reads the same parameters.

  Raises ValueError if a run has no such checkpoint.
  """
  kind, directory, step = parse(spec, field)
  directory = directory if "://" in directory else os.path.abspath(directory)
  if kind == "run":
    steps = checkpoint_steps(directory)
    if not steps or (step is not None and step not in steps):
      raise ValueError(
        f"{field}={spec!r}: no checkpoint "
        f"{'' if step is None else f'at step {step} '}in {directory}/checkpoints"
        f" (it has {steps or 'none'})"
      )
    directory = f"{directory}@{steps[-1] if step is None else step}"
  return f"{kind}:{directory}"


def load_params(config: ml_collections.ConfigDict, shardings: Any) -> Any:
  """The source's parameters in the run's layout and dtype, placed with `shardings`.

  `config.train.init_from` must be resolved (`resolve`).
  """
  params = read_params(config.train.init_from, config.model, shardings, config.model.param_dtype)
  logging.info(
    "train.init_from: parameters from %s (fresh optimizer, step 0)", config.train.init_from
  )
  return params


def read_params(spec: str, model: ml_collections.ConfigDict, shardings: Any, dtype: str) -> Any:
  """The parameters of source `spec` (made `exact`) in `model`'s layout, cast to `dtype`
  and placed with `shardings`: train.init_from's and distill.teacher's loader."""
  import jax
  import jax.numpy as jnp

  kind, directory, step = parse(spec)
  if kind == "run":
    source = load(directory, step, mesh=jax.tree.leaves(shardings)[0].mesh)
    tensors = convert.hf_tensors(jax.device_get(source.params), source.config.model)
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  else:
    tensors = convert.read_tensors(directory)
  params = convert.params_from_hf(tensors, model)
  return jax.device_put(jax.tree.map(lambda a: a.astype(jnp.dtype(dtype)), params), shardings)
