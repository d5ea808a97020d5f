"""distill.teacher: the frozen teacher of a distillation run (train.objective='distill').

The teacher is named with train.init_from's grammar (run:DIR[@STEP] or hf:DIR) and
read by the same loader (gptjax.init_from). Its parameters are sharded by the run's
logical rules, held in distill.teacher_dtype, and passed to the jitted train step
as an argument that is neither donated, optimized nor checkpointed: a resume loads
them again from the exact source config.json records.

Everything a teacher can be refused for is checked from its files before any
compile: its directory and checkpoint (`resolve`), its context length, and its
tokenizer (`check_tokenizer`), which must be the student's, since a KL between
distributions over different vocabularies compares unrelated tokens.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging
from etils import epath

from gptjax import flops, init_from
from gptjax.config import base_config, parse_init_from

FIELD = "distill.teacher"


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with distill.teacher made exact (absolute directory, and a run's step).

  Raises ValueError if the teacher has no such checkpoint or a shorter context
  than the student's.
  """
  if config.train.objective != "distill":
    return config
  teacher = model_config(config)
  if teacher.seq_len < config.model.seq_len:
    raise ValueError(
      f"{FIELD}={config.distill.teacher!r}: the teacher's context is {teacher.seq_len} tokens, "
      f"shorter than model.seq_len={config.model.seq_len}; set model.seq_len <= {teacher.seq_len}"
    )
  resolved = config.copy_and_resolve_references()
  resolved.distill.teacher = init_from.exact(config.distill.teacher, FIELD)
  return resolved


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher's model.* (its config.json over the defaults), with parameters held in
  distill.teacher_dtype."""
  model = base_config().model
  model.update(init_from.source_model(config.distill.teacher, FIELD))
  model.param_dtype = config.distill.teacher_dtype
  return model


def tokenizer(spec: str) -> Any:
  """The tokenizer saved with the teacher: a run's WORKDIR/tokenizer, an HF directory's."""
  from gptjax.data.tokenizer import HFTokenizer, load_saved

  kind, directory, _ = parse_init_from(spec, FIELD)
  if kind == "run":
    return load_saved(str(epath.Path(directory) / "tokenizer"))
  return HFTokenizer.from_path(directory)


def check_tokenizer(config: ml_collections.ConfigDict, student: Any) -> None:
  """Raises ValueError unless the teacher's tokenizer is the student's `student`
  (same fingerprint, same vocabulary size); a no-op unless distilling."""
  if config.train.objective != "distill":
    return
  teacher = tokenizer(config.distill.teacher)
  if (teacher.fingerprint(), teacher.vocab_size) != (student.fingerprint(), student.vocab_size):
    raise ValueError(
      f"{FIELD}={config.distill.teacher!r}: the teacher's tokenizer ({teacher.fingerprint()}, "
      f"{teacher.vocab_size} ids) is not this run's (data.tokenizer="
      f"{config.data.tokenizer!r}: {student.fingerprint()}, {student.vocab_size} ids); "
      "train the student with the teacher's tokenizer and data.* settings"
    )


def flops_per_token(config: ml_collections.ConfigDict) -> int:
  """The teacher's forward FLOPs per student token: a third of training's
  6 * N_matmul + 6 * n_layer * d_model * seq_len, at the student's context length."""
  teacher = model_config(config)
  teacher.seq_len = config.model.seq_len
  return flops.flops_per_token(teacher) // 3


def load_params(config: ml_collections.ConfigDict, shardings: Any) -> Any:
  """The teacher's parameters in distill.teacher_dtype, placed with `shardings`
  (distill.teacher must be exact: `resolve`)."""
  params = init_from.read_params(
    config.distill.teacher, model_config(config), shardings, config.distill.teacher_dtype
  )
  logging.info(
    "distill.teacher: frozen %s parameters from %s (%s FLOPs/token forward, not "
    "in MFU; metrics rows count them as teacher_flops)",
    config.distill.teacher_dtype,
    config.distill.teacher,
    f"{flops_per_token(config):,}",
  )
  return params
