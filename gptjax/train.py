"""Training: a pure, jitted train step and eval step, and the thin host loop around them.

Everything inside jit is a function of (state, batch). The loop only moves data
in, metrics out and checkpoints to disk, and it never waits on the device for
the step it has just dispatched: step t's metrics are read after step t+1 is
queued.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from gptjax import (
  batch_shape,
  branch,
  checkpoint,
  data,
  distill,
  eval_stats,
  flops,
  generate,
  in_flight,
  init_from,
  metrics,
  objectives,
  optim,
  profiling,
  rundir,
  sharding,
  trace_cache,
)
from gptjax.config import override, padded_vocab_size, train_steps, validate
from gptjax.data import tasks
from gptjax.model import GPT, model_config
from gptjax.objectives import token_losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step and micro-batch are folded in, so it never changes


def train_step(
  state: TrainState,
  batch: objectives.Batch,
  teacher: Any = None,
  *,
  objective: objectives.Objective,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  micro_batch_size: int,
  use_dropout: bool,
  grad_shardings: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the global batch (a dict of arrays; gptjax.objectives).

  Each micro-batch's summed loss terms are divided by the terms' counts over the
  whole global batch (the unmasked targets, the real examples), so the summed
  micro-batch gradients are exactly the gradient of the global masked mean,
  however unevenly the masks fall across micro-batches. The running sum is pinned
  to the parameters' shardings (`grad_shardings`); left to itself, XLA may keep a
  replicated float32 copy of every gradient on each device. `teacher` is the frozen
  teacher's parameters under distill: an input of the loss, never updated. The batch
  holds a whole number of micro-batches of `micro_batch_size` rows; their count is the
  batch's (static) shape, so each stage of a batch ramp is one compile of this step.
  """

  def constrain(grads):
    return (
      grads if grad_shardings is None else jax.lax.with_sharding_constraint(grads, grad_shardings)
    )

  grad_accum_steps = next(iter(batch.values())).shape[0] // micro_batch_size
  totals = objective.counts(batch)
  step_rng = jax.random.fold_in(state.rng, state.step)
  frozen = () if objective.teacher is None else (teacher,)

  def micro_loss(params, micro_batch, rng):
    sums, _ = objective.loss(params, micro_batch, rng, *frozen)
    return sum(
      weight * sums[term] / jnp.maximum(totals[term], 1)
      for term, weight in objective.weights.items()
    )

  def accumulate(carry, xs):
    micro_batch, index = xs
    rng = jax.random.fold_in(step_rng, index) if use_dropout else None
    loss, grads = jax.value_and_grad(micro_loss)(state.params, micro_batch, rng)
    return jax.tree.map(jnp.add, carry, (loss, constrain(grads))), None

  zeros = (jnp.zeros((), jnp.float32), constrain(jax.tree.map(jnp.zeros_like, state.params)))
  (loss, grads), _ = jax.lax.scan(
    accumulate,
    zeros,
    (objectives.micro_batches(batch, objective, grad_accum_steps), jnp.arange(grad_accum_steps)),
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {
    "train_loss": loss,
    "grad_norm": optax.tree.norm(grads),
    "lr": schedule(state.step),
  }


@flax.struct.dataclass
class Window:
  """Sums over the steps since the last train row, kept on the device.

  A train row reports the mean over its whole window, not the one batch that
  happens to land on the logging step, and the same sums carry the divergence
  check: every step's loss and gradient norm are tested here, inside the jitted
  step, so the host learns of a non-finite value when it next reads a row
  without ever waiting on a step for it.
  """

  loss_sum: jax.Array  # float32; non-finite as soon as one step's loss is
  grad_norm_sum: jax.Array
  steps: jax.Array  # int32
  nonfinite_steps: jax.Array  # steps whose loss or gradient norm was NaN or inf
  first_nonfinite_step: jax.Array  # 1-based step number, -1 while there is none
  nonfinite_loss: jax.Array  # bool: which of the two values went bad
  nonfinite_grad_norm: jax.Array
  lr: jax.Array  # the last step's learning rate

  @classmethod
  def zeros(cls) -> Window:
    """On the host: NumPy, so making it compiles nothing (each jnp scalar was a program)."""
    f, i, b = np.zeros((), np.float32), np.zeros((), np.int32), np.zeros((), bool)
    return cls(
      loss_sum=f,
      grad_norm_sum=f,
      steps=i,
      nonfinite_steps=i,
      first_nonfinite_step=np.full((), -1, np.int32),
      nonfinite_loss=b,
      nonfinite_grad_norm=b,
      lr=f,
    )

  def to_json(self) -> dict[str, Any]:
    """The sums as JSON numbers (host values; float32 and int32 survive the round trip)."""
    return {f.name: getattr(self, f.name).item() for f in dataclasses.fields(self)}

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> Window:
    """The window `to_json` saved, on the host, in the dtypes of `zeros`."""
    zeros = cls.zeros()
    return cls(
      **{
        f.name: np.asarray(values[f.name], getattr(zeros, f.name).dtype)
        for f in dataclasses.fields(cls)
      }
    )


def accumulate(window: Window, metrics: dict[str, jax.Array], step: jax.Array) -> Window:
  """Adds one step's metrics (of update number `step`, 1-based) to `window`."""
  bad_loss = ~jnp.isfinite(metrics["train_loss"])
  bad_norm = ~jnp.isfinite(metrics["grad_norm"])
  bad = bad_loss | bad_norm
  return Window(
    loss_sum=window.loss_sum + metrics["train_loss"],
    grad_norm_sum=window.grad_norm_sum + metrics["grad_norm"],
    steps=window.steps + 1,
    nonfinite_steps=window.nonfinite_steps + bad,
    first_nonfinite_step=jnp.where(
      bad & (window.first_nonfinite_step < 0), step, window.first_nonfinite_step
    ),
    nonfinite_loss=window.nonfinite_loss | bad_loss,
    nonfinite_grad_norm=window.nonfinite_grad_norm | bad_norm,
    lr=metrics["lr"],
  )


def windowed_train_step(
  state: TrainState, window: Window, batch: objectives.Batch, teacher: Any = None, **kwargs: Any
) -> tuple[TrainState, Window]:
  """train_step plus the window sums: what the loop runs, one dispatch per update."""
  new_state, metrics = train_step(state, batch, teacher, **kwargs)
  return new_state, accumulate(window, metrics, new_state.step)


def all_finite(tree: Any) -> jax.Array:
  """True iff every element of every array in `tree` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def eval_step(
  params: Any,
  tokens: jax.Array,
  weights: jax.Array,
  token_bytes: jax.Array,
  *,
  model: GPT,
  document_eos_id: int | None = None,
) -> dict[str, jax.Array]:
  """Weighted per-token losses [batch, seq_len] and the byte count of one eval batch.

  Per-token rather than per-row sums, because a row spans documents and the SEM
  clusters by document; _evaluate sums them per (row, document) on the host. They
  are 1/vocab the size of the logits, so this costs nothing next to the forward pass.
  """
  return {
    "token_losses": token_losses(model, params, tokens, None, document_eos_id) * weights,
    "bytes": (token_bytes[tokens[:, 1:]] * weights).sum(),
  }


def _init_state(
  rng: jax.Array,
  *,
  model: GPT,
  objective: objectives.Objective,
  tx: optax.GradientTransformation,
  num_outputs: int = 0,
) -> TrainState:
  return _fresh_state(objectives.init_params(model, objective, rng, num_outputs), rng, tx=tx)


def _fresh_state(params: Any, rng: jax.Array, *, tx: optax.GradientTransformation) -> TrainState:
  """Step 0 of `params`: zero moments, and the base key of dropout."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.fold_in(rng, 1),
  )


@dataclasses.dataclass(frozen=True)
class Program:
  """The jitted functions of a run and the shardings of everything they touch.

  Built from abstract shapes only, so the same object serves training and the
  dry run's ahead-of-time compile without allocating a parameter.
  """

  model: GPT
  mesh: Mesh
  axis_rules: sharding.Rules
  objective: objectives.Objective
  state_shardings: TrainState
  batch_sharding: NamedSharding  # token rows [batch, length] (the LM eval's)
  batch_shardings: dict[str, NamedSharding]  # each field of the objective's batches
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  teacher_shardings: Any  # distill: the teacher's parameters, by the same rules; else None
  init: Callable[[Any], TrainState]  # the state of train.seed SEED: init(SEED)
  train_step: Callable[..., tuple[TrainState, Window]]  # (state, window, batch[, teacher])
  eval_step: Callable[..., dict[str, jax.Array]]
  objective_eval: Callable[[Any, objectives.Batch], tuple[objectives.Terms, objectives.Terms]]
  # sft: each held-out target's loss, weight and example id (Objective.scored_targets); else None
  scored_targets: Callable[[Any, objectives.Batch], tuple[jax.Array, ...]] | None
  all_finite: Callable[[Any], jax.Array]

  def abstract_batch(
    self, batch_size: int, seq_len: int | None = None
  ) -> dict[str, jax.ShapeDtypeStruct]:
    """The LM objective's batch (the shape the pretraining loop feeds; a sequence-length
    warmup stage's rows are `seq_len` + 1 tokens, default the model's)."""
    return {
      "tokens": jax.ShapeDtypeStruct(
        (batch_size, (seq_len or self.model.config.seq_len) + 1),
        jnp.int32,
        sharding=self.batch_shardings["tokens"],
      )
    }


def build(
  config: ml_collections.ConfigDict, mesh: Mesh, eos_id: int, vocab_size: int | None = None
) -> Program:
  """eval_shape -> logical specs -> mesh shardings -> jit with explicit shardings.

  `eos_id` is the tokenizer's end-of-text id, used when data.document_mask is on;
  `vocab_size` the tokenizer's vocabulary (default model.vocab_size), the logits
  distillation's KL compares.
  """
  model = GPT(model_config(config.model))
  document_eos_id = eos_id if config.data.document_mask else None
  axis_rules = sharding.rules(config.mesh)
  teacher = (
    GPT(model_config(distill.model_config(config))) if config.train.objective == "distill" else None
  )
  objective = objectives.make(
    config.train.objective,
    model,
    lm_weight=config.finetune.lm_weight,
    num_outputs=config.finetune.num_classes,
    document_eos_id=document_eos_id,
    distill=None
    if teacher is None
    else objectives.Distill(
      teacher,
      config.distill.temperature,
      config.distill.alpha,
      config.distill.kl,
      vocab_size or config.model.vocab_size,
    ),
  )
  with sharding.active(mesh, axis_rules):
    abstract_params = trace_cache.abstract(  # boxed: each parameter's logical axes
      "abstract_params",
      config,
      lambda: jax.eval_shape(
        functools.partial(
          objectives.init_params, model, objective, num_outputs=config.finetune.num_classes
        ),
        _abstract_key(),
      ),
      enabled=config.train.compile_cache,
    )
  tx = optim.make(config, nn.get_partition_spec(abstract_params))
  init_fn = functools.partial(
    _init_state, model=model, objective=objective, tx=tx, num_outputs=config.finetune.num_classes
  )
  # The optimizer state's shapes and axes follow from the parameters': the model is traced
  # once here, not again inside init_fn (0.2 s of the quick start's start-up).
  abstract = jax.eval_shape(
    functools.partial(_fresh_state, tx=tx), abstract_params, _abstract_key()
  )
  state_shardings = sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh, axis_rules)
  abstract_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    nn.unbox(abstract),
    state_shardings,
  )
  sharding.check_divisible(config, abstract_state, mesh)
  batch_sharding = sharding.batch_sharding(mesh, axis_rules)
  batch_shardings = sharding.batch_shardings(objective.batch_axes, mesh, axis_rules)
  replicated = sharding.replicated(mesh)
  teacher_shardings = None if teacher is None else _param_shardings(teacher, mesh, axis_rules)
  step = functools.partial(
    windowed_train_step,
    objective=objective,
    tx=tx,
    schedule=optim.schedule(config),
    micro_batch_size=config.train.batch_size // config.train.grad_accum_steps,
    use_dropout=config.model.dropout > 0 or config.model.attn_dropout > 0,
    grad_shardings=state_shardings.params,
  )
  return Program(
    model=model,
    mesh=mesh,
    axis_rules=axis_rules,
    objective=objective,
    state_shardings=state_shardings,
    batch_sharding=batch_sharding,
    batch_shardings=batch_shardings,
    abstract_state=abstract_state,
    teacher_shardings=teacher_shardings,
    init=jax.jit(
      lambda seed: nn.unbox(init_fn(jax.random.PRNGKey(seed))), out_shardings=state_shardings
    ),
    train_step=jax.jit(
      step,
      in_shardings=(state_shardings, replicated, batch_shardings)
      + (() if teacher is None else (teacher_shardings,)),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0,
    ),
    all_finite=jax.jit(all_finite, out_shardings=replicated),
    eval_step=jax.jit(
      functools.partial(eval_step, model=model, document_eos_id=document_eos_id),
      in_shardings=(state_shardings.params, batch_sharding, batch_sharding, replicated),
      out_shardings=replicated,
    ),
    objective_eval=jax.jit(
      lambda params, batch: objective.loss(params, batch, None),
      in_shardings=(state_shardings.params, batch_shardings),
      out_shardings=replicated,
    ),
    scored_targets=None
    if objective.scored_targets is None
    else jax.jit(
      objective.scored_targets,
      in_shardings=(state_shardings.params, batch_shardings),
      out_shardings=replicated,
    ),
  )


def _abstract_key() -> jax.ShapeDtypeStruct:
  """A PRNG key's shape and type: tracing with it compiles nothing (a real key is a program)."""
  return jax.eval_shape(jax.random.PRNGKey, 0)


def _param_shardings(model: GPT, mesh: Mesh, axis_rules: sharding.Rules) -> Any:
  """Shardings of `model`'s parameters by their logical axes (a distillation teacher's)."""
  tokens = jax.ShapeDtypeStruct((1, model.config.seq_len), jnp.int32)
  with sharding.active(mesh, axis_rules):
    boxed = jax.eval_shape(model.init, _abstract_key(), tokens)["params"]
  return sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, axis_rules)


class _Interrupts:
  """Whether to checkpoint and stop now, agreed by every process.

  SIGTERM (what TPU VMs and SLURM send before reclaiming a host) and Ctrl-C
  (SIGINT) both ask for a checkpoint at the next step, then a clean exit. The
  handlers only set a flag, so they are safe at any moment, compilation and data
  preparation included; a second Ctrl-C gets Python's default handling back and
  stops at once (checkpoints are atomic, so that loses at most the steps since
  the last one). With several processes, jax.distributed's preemption service
  catches SIGTERM and picks one step at which all hosts stop (Ctrl-C keeps its
  default there: a flag on one host alone would leave the others waiting).
  """

  def __init__(self):
    self._requested = False
    self._multihost = jax.process_count() > 1
    try:
      for sig in [] if self._multihost else [signal.SIGTERM, signal.SIGINT]:
        signal.signal(sig, self._handle)
    except ValueError:  # not the main thread (e.g. some test runners)
      pass

  def _handle(self, signum, frame):
    del frame
    self._requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      logging.warning(
        "Ctrl-C: checkpointing at the next step, then stopping (Ctrl-C again to stop at once)"
      )

  def reached(self, step: int) -> bool:
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested


class Diverged(RuntimeError):
  """The loss or gradient norm became NaN or inf; the run stops as 'diverged'."""


def _evaluate(
  program: Program,
  params: Any,
  eval_set: data.EvalSet,
  token_bytes: jax.Array,
  losses_path: epath.Path | None = None,
) -> dict[str, float]:
  """Eval loss over the fixed validation rows, with its standard error and bits per byte.

  The loss is the exact mean over every scored token; its SEM treats validation
  documents as clusters (gptjax.eval_stats), because tokens and rows of one
  document are not independent samples. Process 0 writes the loss of every (row,
  document) part to `losses_path` (JSON lines), so reports can pair runs row by row.
  """
  as_global = functools.partial(jax.make_array_from_process_local_data, program.batch_sharding)
  dispatched, outputs = in_flight.InFlight(), []
  for tokens, weights in eval_set.batches:
    outputs.append(program.eval_step(params, as_global(tokens), as_global(weights), token_bytes))
    dispatched.add(outputs[-1])
  outputs = jax.device_get(outputs)
  losses = np.concatenate([o["token_losses"] for o in outputs])
  scored = eval_set.segments >= 0
  part_sums = np.bincount(
    eval_set.segments[scored],
    weights=losses[scored].astype(np.float64),
    minlength=len(eval_set.segment_tokens),
  )
  loss, sem = eval_stats.cluster_ratio_mean(
    part_sums, eval_set.segment_tokens, eval_set.segment_documents
  )
  if losses_path is not None and jax.process_index() == 0:
    losses_path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(
      losses_path,
      "".join(
        json.dumps({"row": int(r), "document": int(d), "loss_sum": float(y), "tokens": int(n)})
        + "\n"
        for r, d, y, n in zip(
          eval_set.segment_rows, eval_set.segment_documents, part_sums, eval_set.segment_tokens
        )
      ),
    )
  return {
    "eval_loss": loss,
    "eval_loss_sem": sem,
    "eval_ppl": math.exp(loss),
    "eval_bits_per_byte": part_sums.sum() / math.log(2) / sum(float(o["bytes"]) for o in outputs),
  }


def _evaluate_task(
  program: Program, params: Any, batches: list[objectives.Batch], objective: str
) -> dict[str, float]:
  """A task objective's eval over every held-out example: accuracy with its binomial
  standard error and the mean task loss (classify, choice), or the masked loss (sft)."""
  if objective == "sft":
    return _evaluate_sft(program, params, batches)
  sums, counts = {}, {}
  for batch in batches:
    s, c = jax.device_get(program.objective_eval(params, _global_batch(program, batch)))
    sums = {k: sums.get(k, 0.0) + float(v) for k, v in s.items()}
    counts = {k: counts.get(k, 0.0) + float(v) for k, v in c.items()}
  n = counts["task"]
  accuracy = sums["correct"] / n
  return {
    "eval_loss": sums["task"] / n,
    "eval_accuracy": accuracy,
    "eval_accuracy_se": math.sqrt(accuracy * (1 - accuracy) / n),
    "eval_lm_loss": sums["lm"] / max(counts["lm"], 1),
    "eval_examples": int(n),
  }


def _evaluate_sft(
  program: Program, params: Any, batches: list[objectives.Batch]
) -> dict[str, float]:
  """SFT's held-out loss: the mean over every response target, with its standard error
  taken over examples as clusters (gptjax.eval_stats), since the targets of one response
  are not independent samples. nan (recorded as null) with fewer than two examples."""
  parts = []  # (loss sums, target counts) of each batch's examples
  for batch in batches:
    losses, weights, examples = jax.device_get(
      program.scored_targets(params, _global_batch(program, batch))
    )
    ids, inverse = np.unique(examples[weights > 0], return_inverse=True)
    parts.append(
      (
        np.bincount(inverse, weights=losses[weights > 0].astype(np.float64), minlength=len(ids)),
        np.bincount(inverse, weights=weights[weights > 0].astype(np.float64), minlength=len(ids)),
      )
    )
  loss_sums = np.concatenate([p[0] for p in parts])
  targets = np.concatenate([p[1] for p in parts])
  loss, sem = eval_stats.cluster_ratio_mean(loss_sums, targets, np.arange(len(targets)))
  return {
    "eval_loss": loss,
    "eval_loss_sem": sem,
    "eval_targets": int(targets.sum()),
    "eval_examples": len(targets),
  }


def _global_batch(program: Program, batch: objectives.Batch) -> objectives.Batch:
  """This process's part of a task batch as global arrays on the objective's shardings."""
  return {
    k: jax.make_array_from_process_local_data(program.batch_shardings[k], v)
    for k, v in batch.items()
  }


def _task_tokenizer(config: ml_collections.ConfigDict) -> Any:
  """A fine-tuning run's tokenizer: its source run's, else one that needs no corpus."""
  spec = config.train.init_from
  if spec.startswith("run:"):
    _, directory, _ = init_from.parse(spec)
    return data.load_saved(str(epath.Path(directory) / "tokenizer"))
  if config.data.tokenizer in ("sentencepiece", "bpe"):
    raise ValueError(
      f"data.tokenizer={config.data.tokenizer!r}: a fine-tuning run without "
      "train.init_from=run:DIR cannot train a tokenizer; use 'bytes', 'hf:PATH' "
      "or a .model file"
    )
  return data._make_tokenizer(config.data, "", ())  # pylint: disable=protected-access


def _load_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
  """Tokenizer and batches; process 0 prepares the caches while the others wait."""
  if config.train.objective not in ("lm", "distill"):
    load = lambda: (lambda tok: (tok, tasks.load(config, tok)))(_task_tokenizer(config))
  else:
    load = functools.partial(data.load, config.data, config.model.seq_len, config.train.seed)
  if jax.process_index() == 0:
    tokenizer, lm_data = load()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("data prepared by process 0")
  if jax.process_index() != 0:
    tokenizer, lm_data = load()
  if jax.process_count() > 1:
    # Every process tokenized on its own: a stale cache or another corpus on one host would
    # silently feed it other rows, so all must hold byte-identical data and tokenizer.
    digest = hashlib.sha256(f"{lm_data.fingerprint}|{tokenizer.fingerprint()}".encode()).digest()
    multihost_utils.assert_equal(
      np.frombuffer(digest, np.uint8).astype(np.int32),
      fail_message="processes hold different data or tokenizers "
      f"(process {jax.process_index()}: data {lm_data.fingerprint}, "
      f"tokenizer {tokenizer.fingerprint()}); check data.* and the "
      "caches on every host",
    )
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(
      f"model.vocab_size={config.model.vocab_size}: smaller than the tokenizer's vocabulary "
      f"({tokenizer.vocab_size}); set model.vocab_size >= {tokenizer.vocab_size}"
    )
  if config.train.objective in ("lm", "distill"):
    logging.info(
      "baseline: a unigram model of the train split scores %.4f nats/token on validation",
      lm_data.unigram_cross_entropy(),
    )
  return tokenizer, lm_data


def _log_model(config: ml_collections.ConfigDict) -> None:
  counts = flops.param_counts(config.model)
  logging.info(
    "parameters: %s total, %s non-embedding (tied embedding counted once, "
    "%d embedding rows for vocab %d)",
    f"{counts['n_params']:,}",
    f"{counts['n_params_non_embedding']:,}",
    padded_vocab_size(config.model),
    config.model.vocab_size,
  )
  logging.info(
    "training FLOPs/token: %s (6*N_matmul + 6*n_layer*d_model*seq_len)",
    f"{flops.flops_per_token(config.model):,}",
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary it writes.

  Raises ValueError for settings the run cannot start with (before anything in
  the run directory changes), Diverged for a non-finite loss and
  checkpoint.SaveFailed for a failed checkpoint write.
  """
  validate(config)
  if config.model.attention_impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(
      f"model.attention_impl='cudnn' needs a GPU (this backend is {jax.default_backend()}); "
      "set model.attention_impl='blocks' or 'xla'"
    )
  config = init_from.resolve(config)  # a source of another shape is refused here, before any work
  config = branch.resolve(config, workdir)  # likewise a branch its source cannot continue
  config = distill.resolve(config)
  rundir.check(workdir)
  interrupts = _Interrupts()
  mesh = sharding.make_mesh(config.mesh)
  logging.info(
    "mesh %s over %d devices in %d processes (%s)",
    dict(mesh.shape),
    mesh.size,
    jax.process_count(),
    jax.devices()[0].device_kind,
  )
  one_host_cpu = jax.process_count() == 1 and jax.default_backend() == "cpu"
  for warning in sharding.ineffective_settings(config, mesh, replication_expected=one_host_cpu):
    logging.warning(warning)
  with _writer_lock(workdir) as lock:
    return _run_locked(config, workdir, mesh, interrupts, lock)


@contextlib.contextmanager
def _writer_lock(workdir: str) -> Iterator[rundir.RunLock | None]:
  """Process 0 holds WORKDIR's lock for the whole run; if it is refused, every process stops."""
  lock = rundir.RunLock(workdir) if jax.process_index() == 0 else None
  refusal = None
  if lock is not None:
    try:
      lock.acquire()
    except ValueError as e:
      refusal = e
  if (
    jax.process_count() > 1
    and int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
    and refusal is None
  ):
    raise ValueError(f"--workdir={workdir}: process 0 could not lock it; see its log")
  if refusal is not None:
    raise refusal
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()


def _run_locked(
  config: ml_collections.ConfigDict,
  workdir: str,
  mesh: Mesh,
  interrupts: _Interrupts,
  lock: rundir.RunLock | None,
) -> dict[str, Any]:
  tokenizer, lm_data = _load_data(config, workdir)
  if config.train.epochs:
    config = config.copy_and_resolve_references()
    config.train.steps, config.train.tokens = (
      lm_data.steps_for(config.train.epochs, config.train.batch_size),
      0,
    )
    logging.info(
      "train.epochs=%d: %d steps of %d over %d training rows",
      config.train.epochs,
      config.train.steps,
      config.train.batch_size,
      lm_data.rows,
    )
  distill.check_tokenizer(config, tokenizer)
  _log_model(config)
  program = build(config, mesh, tokenizer.eos_id, tokenizer.vocab_size)
  with sharding.active(mesh, program.axis_rules):
    mngr = checkpoint.manager(workdir, config)
    try:
      found = checkpoint.restore_latest(
        mngr,
        workdir,
        config,
        program.abstract_state,
        check=lambda meta: lm_data.check_state(meta["data"]),
      )
      branching = found is None and bool(config.train.branch_from)  # a branch's first start
      if branching:
        found = branch.restore(
          config, program.abstract_state, check=lambda meta: lm_data.check_state(meta["data"])
        )
      start_step = 0 if found is None else found[0]
      if start_step == train_steps(config) and _finished(workdir, config):
        logging.info(
          "%s is already complete at step %d: nothing to train or evaluate", workdir, start_step
        )
        summary = json.loads((epath.Path(workdir) / "summary.json").read_text())
      else:
        _record_start(workdir, config, None if branching else found)
        data.save_tokenizer(tokenizer, workdir)
        ahead = _compile_ahead(config, program, start_step)
        if found is None:
          seed = np.int32(config.train.seed)
          init = trace_cache.compiled(
            program.init, (seed,), name="init", config=config, enabled=config.train.compile_cache
          )
          state = init(seed)
        else:
          state = found[2]
        if found is None and config.train.init_from:
          # A fresh optimizer state does not depend on parameter values (zero moments), so
          # swapping the parameters in after init is the same as initialising from them.
          # Fine-tuning's task head and special-token rows keep their fresh initialisation.
          pretrained = init_from.load_params(
            config, objectives.gpt_params(program.state_shardings.params)
          )
          state = state.replace(
            params=jax.jit(
              functools.partial(objectives.graft, vocab_size=config.model.vocab_size),
              out_shardings=program.state_shardings.params,
            )(state.params, pretrained)
          )
        teacher = (
          None
          if program.teacher_shardings is None
          else distill.load_params(config, program.teacher_shardings)
        )
        summary = _train(
          config,
          workdir,
          program,
          mngr,
          state,
          start_step,
          tokenizer,
          lm_data,
          interrupts,
          lock,
          ahead,
          teacher,
          # A resume continues the checkpoint's unfinished row window (a branch starts its own).
          None if found is None or branching else found[1].get("window"),
        )
    except BaseException:
      try:  # closing waits for pending saves; a failed one would hide the error in flight
        mngr.close()
      except Exception:  # pylint: disable=broad-exception-caught
        pass
      raise
    mngr.close()
    return summary


def _compile_ahead(
  config: ml_collections.ConfigDict, program: Program, start_step: int
) -> dict[tuple[int, int], concurrent.futures.Future]:
  """The first stage's train step, compiled on a worker thread while the state is made.

  The init and the train step are independent programs: a warm start loads both at once
  (loading an executable mostly runs outside the GIL), a cold one has XLA compile both at
  once. Only the LM objective's batch follows from the config alone (a task's fields and a
  teacher come from files), so the other objectives compile in the loop as before.
  """
  if config.train.objective != "lm":
    return {}
  stage = batch_shape.stage_at(batch_shape.table(config.train, config.model.seq_len), start_step)
  replicated = sharding.replicated(program.mesh)
  args = (
    program.abstract_state,
    jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), Window.zeros()
    ),
    program.abstract_batch(stage.batch_size, stage.seq_len),
  )

  def compile_train_step() -> jax.stages.Compiled:
    with sharding.active(program.mesh, program.axis_rules):  # thread-local, like the mesh
      return trace_cache.compiled(
        program.train_step,
        args,
        name="train_step",
        config=config,
        enabled=config.train.compile_cache,
      )

  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gptjax-compile")
  future = pool.submit(compile_train_step)
  pool.shutdown(wait=False)  # the thread ends with its one job
  return {(stage.batch_size, stage.seq_len): future}


def _finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether summary.json says completed and the final eval with today's settings exists."""
  path = epath.Path(workdir) / "summary.json"
  if not path.exists() or json.loads(path.read_text()).get("status") != "completed":
    return False
  return any(
    r.get("step") == train_steps(config)
    and "eval_loss" in r
    and (
      config.train.objective not in ("lm", "distill")
      or r.get("eval_sequences") == config.data.eval_sequences
    )
    for r in metrics.read_rows(workdir)
  )


def _record_start(
  workdir: str, config: ml_collections.ConfigDict, found: tuple[int, dict[str, Any], Any] | None
) -> None:
  """Writes config.json, and on a resume appends what changed to resumes.jsonl.

  Called only once every check has passed, so a refused start never overwrites
  the record of what the run was.
  """
  run_dir = epath.Path(workdir)
  resolved = json.loads(config.to_json_best_effort())
  if found is not None:
    step, meta, _ = found
    previous = (
      json.loads((run_dir / "config.json").read_text())
      if (run_dir / "config.json").exists()
      else {}
    )
    changes = {
      k: [v, _flat(resolved).get(k)]
      for k, v in _flat(previous).items()
      if v != _flat(resolved).get(k)
    }
    if config.train.extend:
      changes.update(_schedule_change(config, meta, step))
    logging.info(
      "resumed from %s at step %d%s",
      checkpoint.checkpoint_dir(workdir),
      step,
      "; changed: " + ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changes.items())
      if changes
      else "",
    )
    if jax.process_index() == 0:
      rundir.append_line(
        run_dir / "resumes.jsonl",
        json.dumps(
          {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "step": step,
            "host": socket.gethostname(),
            "changes": changes,
          }
        ),
      )
  metrics.write_json(run_dir / "config.json", resolved)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _schedule_change(
  config: ml_collections.ConfigDict, meta: dict[str, Any], step: int
) -> dict[str, list[float]]:
  """train.extend: logs how the learning rate moves at `step` under the new schedule."""
  old = override(config, meta.get("schedule", {}))
  before = float(optim.schedule(old)(step))
  after = float(optim.schedule(config)(step))
  logging.warning(
    "train.extend: the schedule is recomputed for %d steps (was %d): the "
    "learning rate of step %d goes from %.3e to %.3e",
    train_steps(config),
    train_steps(old),
    step,
    before,
    after,
  )
  return {"lr_at_resume": [before, after]}


def _train(
  config: ml_collections.ConfigDict,
  workdir: str,
  program: Program,
  mngr: Any,
  state: TrainState,
  start_step: int,
  tokenizer: Any,
  lm_data: Any,
  interrupts: _Interrupts,
  lock: rundir.RunLock | None,
  ahead: dict[tuple[int, int], concurrent.futures.Future],
  teacher: Any = None,
  saved_window: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """The host loop: dispatch steps, read rows one step late, eval, checkpoint, stop.

  `ahead` holds train steps already being compiled, by stage shape (`_compile_ahead`);
  `teacher` (distill) is the frozen teacher's parameters, an extra argument of every step;
  `saved_window` the sums of the row window the resumed checkpoint was inside, so its
  first row covers the same steps as an uninterrupted run's (Window.to_json).
  """
  tc, total_steps = config.train, train_steps(config)
  frozen = () if teacher is None else (teacher,)

  lm = tc.objective in ("lm", "distill")  # a distilled student is scored on the true data
  eval_batch_size = tc.batch_size // tc.grad_accum_steps

  stages = batch_shape.table(tc, config.model.seq_len)
  boundaries = {s.first_step for s in stages[1:]}

  def global_batch(step: int) -> objectives.Batch:
    stage = batch_shape.stage_at(stages, step)
    local = lm_data.train_rows(
      batch_shape.rows_before(stages, step),
      stage.batch_size,
      jax.process_index(),
      jax.process_count(),
    )
    if lm:  # a sequence-length warmup stage trains on each row's first tokens
      local = {"tokens": local[:, : stage.seq_len + 1]}
    return {
      k: jax.make_array_from_process_local_data(program.batch_shardings[k], v)
      for k, v in local.items()
    }

  if lm:
    # On the device at the first eval: putting it there is a program of its own (0.1 s).
    token_bytes = functools.cache(lambda: jnp.asarray(tokenizer.token_byte_lengths()))
    eval_set = lm_data.eval_batches(
      eval_batch_size, config.data.eval_sequences, jax.process_index(), jax.process_count()
    )
  else:
    task_batches = lm_data.eval_batches(eval_batch_size, jax.process_index(), jax.process_count())

  def run_eval(step: int) -> None:
    start = time.perf_counter()
    if lm:
      values = _evaluate(
        program,
        state.params,
        eval_set,
        token_bytes(),
        epath.Path(workdir) / "eval" / str(step) / f"lm_losses_{config.data.eval_sequences}.jsonl",
      )
      values["eval_sequences"] = config.data.eval_sequences
    else:
      values = _evaluate_task(program, state.params, task_batches, tc.objective)
    record.eval_row(step, values, time.perf_counter() - start)

  peak_tflops, peak_note = flops.device_peak(tc.peak_tflops, config.model.dtype)
  logging.info("MFU divides by %s, %d of them", peak_note, flops.peak_units())
  teacher_flops = 0 if teacher is None else distill.flops_per_token(config)
  if teacher_flops:
    logging.info(
      "tokens/s and MFU count the student's training FLOPs only; mfu_with_teacher adds "
      "the teacher's forward pass (%s FLOPs/token)",
      f"{teacher_flops:,}",
    )
  record = metrics.RunRecord(
    config, workdir, start_step, total_steps, peak_tflops * flops.peak_units(), teacher_flops
  )
  zero_window = jax.device_put(Window.zeros(), sharding.replicated(program.mesh))
  window = (
    zero_window
    if saved_window is None
    else jax.device_put(Window.from_json(saved_window), sharding.replicated(program.mesh))
  )
  pending = None  # (step, window) read after the next dispatch
  dispatched = in_flight.InFlight()  # each step's window: the host stays a few steps ahead
  step, status = start_step, "failed"
  profiler = profiling.StepProfiler(tc.profile_steps, workdir)

  def read_rows(current: Window | None = None) -> None:
    """Writes the pending row; with `current`, checks the steps since it too."""
    nonlocal pending
    if pending is not None:
      row_step, row_window = pending
      pending = None
      values = jax.device_get(row_window)
      record.train_row(row_step, values)
      _check_finite(values, mngr, config)
    if current is not None:
      values = jax.device_get(current)
      if values.nonfinite_steps:
        record.train_row(step, values)
        _check_finite(values, mngr, config)

  try:
    if not lm and step == 0:
      run_eval(0)  # a fine-tuning curve starts at its source model
    compiled: dict[tuple[int, int], Any] = {}  # one executable per stage shape (batch_shape)
    while step < total_steps:
      batch = global_batch(step)
      stage = batch_shape.stage_at(stages, step)
      shape = (stage.batch_size, stage.seq_len)
      if shape not in compiled:
        read_rows()  # the last stage's row is timed before the compile pauses the clock
        compile_start = time.perf_counter()
        future = ahead.pop(shape, None)
        compiled[shape] = (
          future.result()
          if future is not None
          else trace_cache.compiled(
            program.train_step,
            (state, zero_window, batch, *frozen),
            name="train_step",
            config=config,
            enabled=tc.compile_cache,
          )
        )
        logging.info(
          "compiled the train step for %d sequences of %d tokens per update in %.1f s",
          *shape,
          time.perf_counter() - compile_start,
        )
        record.restart_clock()
      checkpoint.check_saves(mngr)
      profiler.before(step, state)
      state, window = compiled[shape](state, window, batch, *frozen)
      dispatched.add(window)
      step += 1
      profiler.after(step, state)
      read_rows()
      if step % tc.log_every == 0 or step == total_steps or step in boundaries:
        pending, window = (step, window), zero_window
      evaluate = (tc.eval_every and step % tc.eval_every == 0) or step == total_steps
      preempted = interrupts.reached(step)
      save = step % tc.checkpoint_every == 0 or step == total_steps or preempted
      if evaluate or save:
        read_rows(current=window)
      if evaluate:
        run_eval(step)
      if save:
        if not program.all_finite(state):
          raise Diverged(
            _divergence_message(
              "the parameters or optimizer state hold NaN or inf", step, mngr, config
            )
          )
        # The rows a resume from this checkpoint keeps, this step's included, are stored
        # first: on GCS they are only rewritten now and then, and a row missing here would
        # never be written again.
        if lock is not None:
          lock.check()  # still ours: never write into a directory another process took
        record.sync()
        checkpoint.save(
          mngr, step, state, config, lm_data.state(step), jax.device_get(window).to_json()
        )
      if preempted and step < total_steps:
        logging.warning("interrupted: checkpointed step %d; rerun the same command to resume", step)
        break
    profiler.stop(state)  # a run that ends inside the traced steps
    read_rows()
    checkpoint.wait(mngr)
    completed = step == total_steps
    if completed and record.last_eval_step != total_steps:
      run_eval(total_steps)
    if (
      completed
      and tc.num_samples
      and not (start_step == total_steps and (epath.Path(workdir) / "samples.txt").exists())
    ):
      _write_samples(workdir, program.model, state.params, tokenizer, tc)
    status = "completed" if completed else "running"
  except Diverged:
    status = "diverged"
    raise
  finally:
    summary = record.close(step, status)
  return summary


def _check_finite(values: Window, mngr: Any, config: ml_collections.ConfigDict) -> None:
  """Raises Diverged if the window read from the device saw a non-finite value."""
  if not values.nonfinite_steps:
    return
  what = " and ".join(
    name
    for name, bad in (
      ("train_loss", values.nonfinite_loss),
      ("grad_norm", values.nonfinite_grad_norm),
    )
    if bad
  )
  raise Diverged(
    _divergence_message(f"{what} became NaN or inf", int(values.first_nonfinite_step), mngr, config)
  )


def _divergence_message(what: str, step: int, mngr: Any, config: ml_collections.ConfigDict) -> str:
  checkpoint.wait(mngr)
  last = mngr.latest_step()
  kept = (
    f"the last checkpoint, step {last} in {mngr.directory}, is finite"
    if last is not None
    else "no checkpoint was written before it"
  )
  return (
    f"diverged at step {step}: {what}; no checkpoint of the non-finite state was "
    f"written and {kept}; try a lower optim.lr (now {config.optim.lr:g}), a longer "
    f"optim.warmup_steps (now {config.optim.warmup_steps}) or optim.clip_norm > 0 "
    f"(now {config.optim.clip_norm:g}), in a fresh --workdir"
  )


def _write_samples(
  workdir: str, model: GPT, params: Any, tokenizer: Any, tc: ml_collections.ConfigDict
) -> None:
  """Samples continuing an end-of-text token, i.e. fresh documents, decoded by the same code
  as `python -m gptjax.generate`; samples.txt starts with the strategy and its settings."""
  settings = generate.Settings(
    strategy=tc.sample_strategy,
    temperature=tc.sample_temperature,
    top_k=tc.sample_top_k,
    top_p=tc.sample_top_p,
    num_beams=tc.sample_num_beams,
    seed=tc.seed + 1,
    max_new_tokens=min(tc.sample_tokens, model.config.seq_len - 1),
    # Every sample continues the same prompt: greedy decoding has one to write.
    num_return_sequences=1 if tc.sample_strategy == "greedy" else tc.num_samples,
  )
  [completions] = generate.generate(model, params, tokenizer, [[tokenizer.eos_id]], settings)
  texts = [c.text for c in completions]
  for i, text in enumerate(texts):
    logging.info("sample %d:\n%s", i, text)
  if jax.process_index() == 0:
    header = f"decoding: {json.dumps(settings.describe())}\n\n"
    (epath.Path(workdir) / "samples.txt").write_text(header + "\n\n========\n\n".join(texts) + "\n")
