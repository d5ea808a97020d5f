"""The losses the one train step can take: lm, sft, classify, choice and distill.

An objective is a pure loss function of (params, batch, rng) that returns summed
loss terms and their counts, plus what the step needs around it: the logical axes
of each batch field (for shardings), the counts of a batch without a forward pass
(the global normalisers under gradient accumulation) and each term's weight.
train.train_step divides every micro-batch's sum by its term's count over the whole
global batch, so a masked token weighs the same whichever micro-batch it is in.

Batches are dicts of arrays:
  lm        tokens [B, L+1]
  distill   tokens [B, L+1], as lm; the loss also takes the frozen teacher's parameters
  sft       inputs, targets, weights (1 on response targets), segment_ids, all [B, L]
            (packed examples numbered 1, 2, ... in each row; 0 is padding)
  classify  tokens [B, K, L+1], weights [B, K, L] (the auxiliary LM loss's targets),
  / choice  extract [B, K] (position of the extract token), label [B],
            example_weights [B] (0 for padding rows).
For classify the K sequences of an example (2 for GPT-1's similarity, else 1) have
their final representations added before the head; for choice each of the K
answers gets one score and the label is a softmax over them.

distill (Hinton et al. 2015) adds to lm's cross-entropy the KL divergence between
the teacher's and the student's next-token distributions at temperature T, over
the vocabulary the tokenizer uses: rows the model pads on (model.vocab_size beyond
the tokenizer, special tokens) take no part in it. The soft term is scaled by T^2,
so its gradient keeps its size as T changes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gptjax.config import OBJECTIVES
from gptjax.model import GPT, TaskHead, document_segments

HEAD = "task_head"  # the params key of a task head, next to the GPT's own parameters

Batch = dict[str, jax.Array]
Terms = dict[str, jax.Array]

TASK_AXES = {
  "tokens": ("batch", None, "length"),
  "weights": ("batch", None, "length"),
  "extract": ("batch", None),
  "label": ("batch",),
  "example_weights": ("batch",),
}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A loss the train step can take, and what the step needs to shard and normalise it.

  `loss` may return metric-only sums (classify's 'correct'): only the terms named in
  `weights` enter the training loss.
  """

  name: str
  batch_axes: dict[str, tuple[str | None, ...]]  # logical axes of each batch field
  loss: Callable[[Any, Batch, jax.Array | None], tuple[Terms, Terms]]  # (sums, counts)
  counts: Callable[[Batch], Terms]  # the counts `loss` returns, without a forward pass
  weights: dict[str, float]  # training loss = sum of weight * sum / global count
  teacher: GPT | None = None  # distill: `loss` then takes the frozen teacher's params 4th
  # sft: (params, batch) -> each target's loss, weight and example id, all [B, L] (ids unique
  # within a batch, 0 where the weight is 0), from which the eval's standard error is taken.
  scored_targets: Callable[[Any, Batch], tuple[jax.Array, jax.Array, jax.Array]] | None = None


def make(
  name: str,
  model: GPT,
  *,
  lm_weight: float = 0.5,
  num_outputs: int = 0,
  document_eos_id: int | None = None,
  distill: Distill | None = None,
) -> Objective:
  """The objective `name` (train.objective) for `model`.

  `lm_weight` is GPT-1's lambda on the auxiliary LM loss (classify, choice);
  `num_outputs` the classes of a classify head; `document_eos_id` restarts
  attention at end-of-text tokens under lm and distill (data.document_mask);
  `distill` the teacher and settings of distill.
  """
  if name == "lm":

    def lm_loss(params, batch, rng):
      return (
        {"lm": loss_sums(model, params, batch["tokens"], rng, document_eos_id).sum()},
        _lm_counts(batch),
      )

    return Objective("lm", {"tokens": ("batch", "length")}, lm_loss, _lm_counts, {"lm": 1.0})
  if name == "distill":
    if distill is None:
      raise ValueError("train.objective='distill' needs its teacher (objectives.Distill)")
    weights = {"kl": distill.alpha * distill.temperature**2, "lm": 1.0 - distill.alpha}
    return Objective(
      "distill",
      {"tokens": ("batch", "length")},
      functools.partial(_distill_loss, model, distill, document_eos_id),
      _distill_counts,
      {term: weight for term, weight in weights.items() if weight},  # alpha = 0 is exactly lm
      teacher=distill.teacher,
    )
  if name == "sft":

    def sft_loss(params, batch, rng):
      losses = next_token_losses(
        model, params, batch["inputs"], batch["targets"], rng, batch["segment_ids"]
      )
      return {"lm": (losses * batch["weights"]).sum()}, _sft_counts(batch)

    def sft_scored_targets(params, batch):
      losses = next_token_losses(
        model, params, batch["inputs"], batch["targets"], None, batch["segment_ids"]
      )
      return losses * batch["weights"], batch["weights"], example_ids(batch["segment_ids"])

    axes = {k: ("batch", "length") for k in ("inputs", "targets", "weights", "segment_ids")}
    return Objective(
      "sft", axes, sft_loss, _sft_counts, {"lm": 1.0}, scored_targets=sft_scored_targets
    )
  if name in ("classify", "choice"):
    weights = {"task": 1.0, **({"lm": lm_weight} if lm_weight else {})}
    outputs = num_outputs if name == "classify" else 1
    return Objective(
      name, TASK_AXES, functools.partial(_task_loss, model, name, outputs), _task_counts, weights
    )
  raise ValueError(f"train.objective={name!r}: unknown; use one of {', '.join(OBJECTIVES)}")


def example_ids(segment_ids: jax.Array) -> jax.Array:
  """Ids [B, L] unique within the batch for the packed examples of `segment_ids` (numbered
  1, 2, ... in each row, 0 for padding): row r's example s is r * L + s; padding stays 0."""
  rows, length = segment_ids.shape
  row_base = jnp.arange(rows, dtype=segment_ids.dtype)[:, None] * length
  return jnp.where(segment_ids > 0, row_base + segment_ids, 0)


def token_losses(
  model: GPT,
  params: Any,
  tokens: jax.Array,
  rng: jax.Array | None,
  document_eos_id: int | None = None,
) -> jax.Array:
  """Next-token cross-entropy [batch, seq_len] of rows [batch, seq_len + 1].

  With `document_eos_id`, attention and positions restart after each end-of-text
  token, so packed documents do not see each other.
  """
  inputs = tokens[:, :-1]
  segment_ids = None if document_eos_id is None else document_segments(inputs, document_eos_id)
  return next_token_losses(model, params, inputs, tokens[:, 1:], rng, segment_ids)


def next_token_losses(
  model: GPT,
  params: Any,
  inputs: jax.Array,
  targets: jax.Array,
  rng: jax.Array | None,
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """Cross-entropy [batch, length] of `targets` given `inputs`; `segment_ids` [batch, length]
  keep packed examples from attending to each other and restart their positions."""
  logits = next_token_logits(model, params, inputs, rng, segment_ids)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def next_token_logits(
  model: GPT,
  params: Any,
  inputs: jax.Array,
  rng: jax.Array | None,
  segment_ids: jax.Array | None = None,
) -> jax.Array:
  """Float32 logits [batch, length, vocab] after `inputs`; dropout on iff `rng` is given."""
  logits, _ = model.apply(
    {"params": gpt_params(params)},
    inputs,
    deterministic=rng is None,
    rngs=None if rng is None else {"dropout": rng},
    segment_ids=segment_ids,
  )
  return logits


@dataclasses.dataclass(frozen=True)
class Distill:
  """The teacher and settings of the distill objective (distill.* in the config)."""

  teacher: GPT  # its parameters are an argument of the loss, never a constant of it
  temperature: float  # T
  alpha: float  # weight of the soft loss; the data's cross-entropy gets 1 - alpha
  kl: str  # 'forward': KL(teacher || student); 'reverse': KL(student || teacher)
  vocab_size: int  # the tokenizer's vocabulary: logits from here on take no part in the KL


def kl_divergence(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
  direction: str,
  vocab_size: int,
) -> jax.Array:
  """KL [...] between softmax(teacher / T) and softmax(student / T) over the first
  `vocab_size` logits: KL(teacher || student) for 'forward', KL(student || teacher)
  for 'reverse'. Logits past `vocab_size` (padding) get neither mass nor gradient."""
  student = jax.nn.log_softmax(student_logits[..., :vocab_size] / temperature, axis=-1)
  teacher = jax.nn.log_softmax(teacher_logits[..., :vocab_size] / temperature, axis=-1)
  p, log_p, log_q = (
    (teacher, teacher, student) if direction == "forward" else (student, student, teacher)
  )
  return (jnp.exp(p) * (log_p - log_q)).sum(axis=-1)


def _distill_loss(
  model: GPT,
  distill: Distill,
  document_eos_id: int | None,
  params: Any,
  batch: Batch,
  rng: jax.Array | None,
  teacher_params: Any,
) -> tuple[Terms, Terms]:
  """Summed next-token cross-entropy ('lm') and KL at temperature T to the teacher ('kl').

  One student forward serves both terms; the teacher runs without dropout and no
  gradient reaches it.
  """
  tokens = batch["tokens"]
  inputs = tokens[:, :-1]
  segment_ids = None if document_eos_id is None else document_segments(inputs, document_eos_id)
  logits = next_token_logits(model, params, inputs, rng, segment_ids)
  teacher_logits = jax.lax.stop_gradient(
    next_token_logits(distill.teacher, teacher_params, inputs, None, segment_ids)
  )
  kl = kl_divergence(logits, teacher_logits, distill.temperature, distill.kl, distill.vocab_size)
  lm = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  return {"lm": lm.sum(axis=-1).sum(), "kl": kl.sum()}, _distill_counts(batch)


def loss_sums(
  model: GPT, params: Any, tokens: jax.Array, rng: jax.Array | None, document_eos_id: int | None
) -> jax.Array:
  """Per-sequence summed `token_losses` [batch]."""
  return token_losses(model, params, tokens, rng, document_eos_id).sum(axis=-1)


def task_scores(
  model: GPT, kind: str, outputs: int, params: Any, batch: Batch, rng: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Task logits ([B, outputs] for classify, [B, K] for choice) and LM token losses [B, K, L]."""
  tokens = batch["tokens"]
  b, k, length = tokens.shape
  flat = tokens.reshape(b * k, length)
  deterministic = rng is None
  rngs = None if rng is None else {"dropout": rng}
  (logits, _), state = model.apply(
    {"params": gpt_params(params)},
    flat[:, :-1],
    deterministic=deterministic,
    rngs=rngs,
    mutable=["intermediates"],
  )
  [hidden] = state["intermediates"]["hidden"]
  features = jnp.take_along_axis(hidden, batch["extract"].reshape(b * k, 1, 1), axis=1)
  features = features.reshape(b, k, -1)
  if kind == "classify":
    features = features.sum(axis=1)  # GPT-1's similarity: both orders' representations added
  head_rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, 1)}
  scores = TaskHead(model.config, outputs).apply(
    {"params": params[HEAD]}, features, deterministic=deterministic, rngs=head_rngs
  )
  if kind == "choice":
    scores = scores[..., 0]
  lm = optax.softmax_cross_entropy_with_integer_labels(logits, flat[:, 1:])
  return scores, lm.reshape(b, k, length - 1)


def init_head(model: GPT, outputs: int, rng: jax.Array) -> Any:
  """Fresh (boxed, logically annotated) parameters of a task head."""
  return TaskHead(model.config, outputs).init(
    rng, jnp.zeros((1, model.config.d_model), jnp.float32)
  )["params"]


def _task_loss(
  model: GPT, kind: str, outputs: int, params: Any, batch: Batch, rng: jax.Array | None
) -> tuple[Terms, Terms]:
  scores, lm = task_scores(model, kind, outputs, params, batch, rng)
  example_weights = batch["example_weights"]
  task = optax.softmax_cross_entropy_with_integer_labels(scores, batch["label"])
  correct = (jnp.argmax(scores, axis=-1) == batch["label"]).astype(jnp.float32)
  sums = {
    "task": (task * example_weights).sum(),
    "lm": (lm * batch["weights"]).sum(),
    "correct": (correct * example_weights).sum(),
  }
  return sums, _task_counts(batch)


def _task_counts(batch: Batch) -> Terms:
  examples = batch["example_weights"].sum()
  return {"task": examples, "lm": batch["weights"].sum(), "correct": examples}


def _lm_counts(batch: Batch) -> Terms:
  tokens = batch["tokens"]
  return {"lm": tokens.shape[0] * (tokens.shape[1] - 1)}  # a Python int: exact


def _distill_counts(batch: Batch) -> Terms:
  """Both terms count every next-token target, as lm does."""
  return dict.fromkeys(("kl", "lm"), _lm_counts(batch)["lm"])


def _sft_counts(batch: Batch) -> Terms:
  return {"lm": batch["weights"].sum()}


def gpt_params(params: Any) -> Any:
  """The GPT's own parameters: all but a task head."""
  return {k: v for k, v in params.items() if k != HEAD} if HEAD in params else params


def init_params(model: GPT, objective: Objective, rng: jax.Array, num_outputs: int) -> Any:
  """Fresh parameters for `objective`: the GPT's, plus a task head for classify and choice."""
  params = model.init({"params": rng}, jnp.zeros((1, model.config.seq_len), jnp.int32))["params"]
  if objective.name in ("classify", "choice"):
    outputs = num_outputs if objective.name == "classify" else 1
    params = {**params, HEAD: init_head(model, outputs, jax.random.fold_in(rng, 2))}
  return params


def graft(fresh: Any, pretrained: Any, vocab_size: int) -> Any:
  """`fresh` parameters with every GPT parameter taken from `pretrained`, except the
  embedding rows from `vocab_size` on (fine-tuning's special tokens and padding).

  So a task head and the special-token rows are the only fresh parameters of a
  fine-tuning run, initialised as in pretraining.
  """
  params = {**fresh, **{k: v for k, v in pretrained.items() if k != "wte"}}
  params["wte"] = jnp.concatenate([pretrained["wte"][:vocab_size], fresh["wte"][vocab_size:]])
  return params


def micro_batches(batch: Batch, objective: Objective, accum: int) -> Batch:
  """[accum, B/accum, ...] per field: micro-batch m takes rows m, m + accum, ...

  So every device's block of the batch holds an equal share of every micro-batch,
  which then stays spread over all data-parallel devices (a plain reshape would put
  whole micro-batches on single devices and make the others wait).
  """
  return {
    k: nn.with_logical_constraint(
      v.reshape(-1, accum, *v.shape[1:]).swapaxes(0, 1), (None, *objective.batch_axes[k])
    )
    for k, v in batch.items()
  }
