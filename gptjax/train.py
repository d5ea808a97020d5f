"""Training: a pure, jitted train step and eval step, and the thin host loop around them.

Everything inside jit is a function of (state, batch). The loop only moves data
in, metrics out and checkpoints to disk, and it never waits on the device for
the step it has just dispatched: step t's metrics are read after step t+1 is
queued.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import time
from typing import Any, Callable

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

from gptjax import checkpoint, data, flops, generate, optim, run_record, rundir, sharding
from gptjax.config import padded_vocab_size, train_steps, validate
from gptjax.model import GPT, document_segments, model_config


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step and micro-batch are folded in, so it never changes


def loss_sums(model: GPT, params: Any, tokens: jax.Array, weights: jax.Array | None,
              rng: jax.Array | None, document_eos_id: int | None) -> jax.Array:
  """Per-sequence summed next-token cross-entropy [batch] of rows [batch, seq_len + 1].

  With `document_eos_id`, attention and positions restart after each end-of-text
  token, so packed documents do not see each other.
  """
  inputs = tokens[:, :-1]
  segment_ids = None if document_eos_id is None else document_segments(inputs, document_eos_id)
  logits, _ = model.apply({"params": params}, inputs, deterministic=rng is None,
                          rngs=None if rng is None else {"dropout": rng}, segment_ids=segment_ids)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  if weights is not None:
    losses = losses * weights
  return losses.sum(axis=-1)


def train_step(state: TrainState, batch: jax.Array, *, model: GPT,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int, use_dropout: bool, document_eos_id: int | None = None,
               grad_shardings: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the global batch [batch_size, seq_len + 1].

  Micro-batch gradients of sum(loss) / (all target tokens) are summed, which is
  exactly the gradient of the mean loss over the whole global batch. The running
  sum is pinned to the parameters' shardings (`grad_shardings`); left to itself,
  XLA may keep a replicated float32 copy of every gradient on each device.
  """
  def constrain(grads):
    return grads if grad_shardings is None else jax.lax.with_sharding_constraint(
        grads, grad_shardings)

  # Micro-batch m takes rows m, m + accum, m + 2 * accum, ...: every device's block of
  # the batch then holds an equal share of every micro-batch, so each one stays spread
  # over all data-parallel devices (a plain reshape would put whole micro-batches on
  # single devices and make the others wait or duplicate the work).
  micro_batches = batch.reshape(-1, grad_accum_steps, batch.shape[-1]).swapaxes(0, 1)
  micro_batches = nn.with_logical_constraint(micro_batches, (None, "batch", "length"))
  n_targets = batch.shape[0] * (batch.shape[1] - 1)
  step_rng = jax.random.fold_in(state.rng, state.step)

  def accumulate(carry, xs):
    tokens, index = xs
    rng = jax.random.fold_in(step_rng, index) if use_dropout else None
    loss, grads = jax.value_and_grad(
        lambda p: loss_sums(model, p, tokens, None, rng, document_eos_id).sum() / n_targets
    )(state.params)
    return jax.tree.map(jnp.add, carry, (loss, constrain(grads))), None

  zeros = (jnp.zeros((), jnp.float32), constrain(jax.tree.map(jnp.zeros_like, state.params)))
  (loss, grads), _ = jax.lax.scan(accumulate, zeros,
                                  (micro_batches, jnp.arange(grad_accum_steps)))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {"train_loss": loss, "grad_norm": optax.tree.norm(grads),
                     "lr": schedule(state.step)}


def eval_step(params: Any, tokens: jax.Array, weights: jax.Array, token_bytes: jax.Array,
              *, model: GPT, document_eos_id: int | None = None) -> dict[str, jax.Array]:
  """Sums over one eval batch; _evaluate() turns them into means, SEM and bits per byte."""
  per_sequence = loss_sums(model, params, tokens, weights, None, document_eos_id)
  counts = weights.sum(axis=-1)
  return {"loss_sum": per_sequence.sum(), "tokens": counts.sum(),
          "bytes": (token_bytes[tokens[:, 1:]] * weights).sum(),
          "sequence_means": per_sequence / jnp.maximum(counts, 1), "sequence_tokens": counts}


def _init_state(rng: jax.Array, *, model: GPT, tx: optax.GradientTransformation,
                seq_len: int) -> TrainState:
  params = model.init({"params": rng}, jnp.zeros((1, seq_len), jnp.int32))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.fold_in(rng, 1))


@dataclasses.dataclass(frozen=True)
class Program:
  """The jitted functions of a run and the shardings of everything they touch.

  Built from abstract shapes only, so the same object serves training and the
  dry run's ahead-of-time compile without allocating a parameter.
  """
  model: GPT
  mesh: Mesh
  axis_rules: sharding.Rules
  state_shardings: TrainState
  batch_sharding: NamedSharding
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
  eval_step: Callable[..., dict[str, jax.Array]]

  def abstract_batch(self, batch_size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch_size, self.model.config.seq_len + 1), jnp.int32,
                                sharding=self.batch_sharding)


def build(config: ml_collections.ConfigDict, mesh: Mesh, eos_id: int) -> Program:
  """eval_shape -> logical specs -> mesh shardings -> jit with explicit shardings.

  `eos_id` is the tokenizer's end-of-text id, used when data.document_mask is on.
  """
  model = GPT(model_config(config.model))
  document_eos_id = eos_id if config.data.document_mask else None
  total_steps = train_steps(config)
  tx = optim.make(config.optim, total_steps)
  axis_rules = sharding.rules(config.mesh)
  init_fn = functools.partial(_init_state, model=model, tx=tx, seq_len=config.model.seq_len)
  with sharding.active(mesh, axis_rules):
    abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_shardings = sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh,
                                                 axis_rules)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(abstract),
      state_shardings)
  sharding.check_divisible(config, abstract_state, mesh)
  batch_sharding = sharding.batch_sharding(mesh, axis_rules)
  replicated = sharding.replicated(mesh)
  step = functools.partial(
      train_step, model=model, tx=tx, schedule=optim.learning_rate(config.optim, total_steps),
      grad_accum_steps=config.train.grad_accum_steps,
      use_dropout=config.model.dropout > 0 or config.model.attn_dropout > 0,
      document_eos_id=document_eos_id, grad_shardings=state_shardings.params)
  return Program(
      model=model, mesh=mesh, axis_rules=axis_rules, state_shardings=state_shardings,
      batch_sharding=batch_sharding, abstract_state=abstract_state,
      init=jax.jit(lambda rng: nn.unbox(init_fn(rng)), out_shardings=state_shardings),
      train_step=jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0),
      eval_step=jax.jit(functools.partial(eval_step, model=model,
                                          document_eos_id=document_eos_id),
                        in_shardings=(state_shardings.params, batch_sharding, batch_sharding,
                                      replicated),
                        out_shardings=replicated))


class _Preemption:
  """Whether to checkpoint and stop now, agreed by every process.

  With several processes, jax.distributed's preemption service catches SIGTERM
  and picks one step at which all hosts stop; alone, a SIGTERM handler sets a flag.
  SIGTERM is what TPU VMs and SLURM send before reclaiming a host.
  """

  def __init__(self):
    self._requested = False
    self._multihost = jax.process_count() > 1
    if not self._multihost:
      try:
        signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. some test runners)
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested


def _evaluate(program: Program, params: Any, eval_set: list, token_bytes: jax.Array
              ) -> dict[str, float]:
  """Eval loss over the fixed validation rows, with its standard error and bits per byte.

  The SEM treats each validation sequence as one sample: tokens within a sequence
  are not independent, so a per-token SEM would be too small.
  """
  as_global = functools.partial(jax.make_array_from_process_local_data, program.batch_sharding)
  sums = jax.device_get([
      program.eval_step(params, as_global(tokens), as_global(weights), token_bytes)
      for tokens, weights in eval_set])
  loss_sum = sum(float(s["loss_sum"]) for s in sums)
  loss = loss_sum / sum(float(s["tokens"]) for s in sums)
  means = np.concatenate([s["sequence_means"][s["sequence_tokens"] > 0] for s in sums])
  return {"eval_loss": loss, "eval_loss_sem": float(means.std(ddof=1) / math.sqrt(len(means))),
          "eval_ppl": math.exp(loss),
          "eval_bits_per_byte": loss_sum / math.log(2) / sum(float(s["bytes"]) for s in sums)}


def _load_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
  """Tokenizer and batches; process 0 prepares the caches while the others wait."""
  load = functools.partial(data.load, config.data, config.model.seq_len, workdir,
                           config.train.seed)
  if jax.process_index() == 0:
    tokenizer, lm_data = load()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("data prepared by process 0")
  if jax.process_index() != 0:
    tokenizer, lm_data = load()
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(
        f"model.vocab_size={config.model.vocab_size}: smaller than the tokenizer's vocabulary "
        f"({tokenizer.vocab_size}); set model.vocab_size >= {tokenizer.vocab_size}")
  logging.info("baseline: a unigram model of the train split scores %.4f nats/token on "
               "validation", lm_data.unigram_cross_entropy())
  return tokenizer, lm_data


def _log_model(config: ml_collections.ConfigDict) -> None:
  counts = flops.param_counts(config.model)
  logging.info("parameters: %s total, %s non-embedding (tied embedding counted once, "
               "%d embedding rows for vocab %d)", f"{counts['n_params']:,}",
               f"{counts['n_params_non_embedding']:,}", padded_vocab_size(config.model),
               config.model.vocab_size)
  logging.info("training FLOPs/token: %s (6*N_matmul + 6*n_layer*d_model*seq_len)",
               f"{flops.flops_per_token(config.model):,}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary it writes."""
  validate(config)
  rundir.check(workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  run_record.write_json(epath.Path(workdir) / "config.json",
                        json.loads(config.to_json_best_effort()))
  total_steps = train_steps(config)
  tc = config.train

  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices in %d processes (%s)", dict(mesh.shape), mesh.size,
               jax.process_count(), jax.devices()[0].device_kind)
  for warning in sharding.ineffective_settings(config, mesh):
    logging.warning(warning)
  tokenizer, lm_data = _load_data(config, workdir)
  _log_model(config)
  program = build(config, mesh, tokenizer.eos_id)

  with sharding.active(mesh, program.axis_rules):
    mngr = checkpoint.manager(workdir, config)
    found = checkpoint.latest(mngr, config)
    if found is None:
      state, start_step = program.init(jax.random.PRNGKey(tc.seed)), 0
    else:
      start_step, meta = found
      lm_data.check_state(meta["data"])
      state = checkpoint.restore(mngr, start_step, program.abstract_state)
      logging.info("resumed from %s at step %d", mngr.directory, start_step)

    def global_batch(step: int) -> jax.Array:
      local = lm_data.train_batch(step, tc.batch_size, jax.process_index(), jax.process_count())
      return jax.make_array_from_process_local_data(program.batch_sharding, local)

    token_bytes = jnp.asarray(tokenizer.token_byte_lengths())
    eval_set = lm_data.eval_batches(tc.batch_size // tc.grad_accum_steps, config.data.eval_sequences,
                                    jax.process_index(), jax.process_count())

    def run_eval(step: int) -> None:
      start = time.perf_counter()
      values = _evaluate(program, state.params, eval_set, token_bytes)
      record.eval_row(step, values, time.perf_counter() - start)

    peak_tflops, peak_note = flops.device_peak(tc.peak_tflops)
    logging.info("MFU divides by %s per device, %d devices", peak_note, jax.device_count())
    compile_start = time.perf_counter()
    step_fn = program.train_step.lower(state, program.abstract_batch(tc.batch_size)).compile()
    logging.info("compiled the train step in %.1f s", time.perf_counter() - compile_start)
    record = run_record.RunRecord(config, workdir, start_step, total_steps, peak_tflops)
    preemption = _Preemption()
    pending = None  # (step, device metrics), read only after the next step is dispatched
    step, status = start_step, "failed"
    try:
      while step < total_steps:
        state, step_metrics = step_fn(state, global_batch(step))
        step += 1
        if pending is not None:
          record.train_row(*pending)
          pending = None
        if step % tc.log_every == 0 or step == total_steps:
          pending = (step, step_metrics)
        if (tc.eval_every and step % tc.eval_every == 0) or step == total_steps:
          if pending is not None:
            record.train_row(*pending)
            pending = None
          run_eval(step)
        preempted = preemption.reached(step)
        if step % tc.checkpoint_every == 0 or step == total_steps or preempted:
          # The rows a resume from this checkpoint keeps, this step's included (the save
          # waits for it anyway), are stored first: on GCS they are only rewritten now
          # and then, and a row missing here would never be written again.
          if pending is not None:
            record.train_row(*pending)
            pending = None
          record.sync()
          checkpoint.save(mngr, step, state, config, lm_data.state(step))
        if preempted and step < total_steps:
          logging.warning("preempted: checkpointed step %d; rerun the same command to resume", step)
          break
      if pending is not None:
        record.train_row(*pending)
      mngr.wait_until_finished()
      completed = step == total_steps
      if completed and record.last_eval_step != total_steps:
        run_eval(total_steps)
      if completed and tc.num_samples:
        _write_samples(workdir, program.model, state.params, tokenizer, tc)
      status = "completed" if completed else "running"
    finally:
      summary = record.close(step, status)
      mngr.close()
  return summary


def _write_samples(workdir: str, model: GPT, params: Any, tokenizer: Any,
                   tc: ml_collections.ConfigDict) -> None:
  """Samples continuing an end-of-text token, i.e. fresh documents, decoded by the same code
  as `python -m gptjax.generate`; samples.txt starts with the strategy and its settings."""
  settings = generate.Settings(
      strategy=tc.sample_strategy, temperature=tc.sample_temperature, top_k=tc.sample_top_k,
      top_p=tc.sample_top_p, num_beams=tc.sample_num_beams, seed=tc.seed + 1,
      max_new_tokens=min(tc.sample_tokens, model.config.seq_len - 1),
      # Every sample continues the same prompt: greedy decoding has one to write.
      num_return_sequences=1 if tc.sample_strategy == "greedy" else tc.num_samples)
  [completions] = generate.generate(model, params, tokenizer, [[tokenizer.eos_id]], settings)
  texts = [c.text for c in completions]
  for i, text in enumerate(texts):
    logging.info("sample %d:\n%s", i, text)
  if jax.process_index() == 0:
    header = f"decoding: {json.dumps(settings.describe())}\n\n"
    (epath.Path(workdir) / "samples.txt").write_text(
        header + "\n\n========\n\n".join(texts) + "\n")
