"""Decoding: greedy, sampling (temperature, top-k, top-p) and beam search, with a KV cache.

    python -m gptjax.generate --workdir=DIR [--step=N] --prompt=TEXT [--prompt=TEXT ...]

How a batch is decoded:
- Prompts of different lengths share a batch, right-padded to a length bucket (a
  power of two). Each row has its own positions and its own cache length
  (model.py), so row i produces exactly what its prompt produces alone.
- Prefill: the whole padded prompt goes through one forward pass that fills the
  KV cache and yields the first new token; then one compiled step per new token,
  all inside one `lax.while_loop` that ends when every row has finished.
- A row finishes at the end-of-text token, at a stop string, or at
  `max_new_tokens`; a finished row stops changing. Stop strings are text, so the
  host looks for them between chunks of steps and tells the loop which rows to end.
- Sampling applies temperature, then top-k, then top-p (`filter_logits`).
- Beam search keeps `num_beams` live hypotheses per prompt, chosen each step from
  the best 2 x num_beams expansions, and re-gathers the KV cache by parent beam.
  A hypothesis ends at end-of-text (counted when among the num_beams best
  expansions, as in HF transformers), at a stop string or at max_new_tokens, and
  joins a pool of the num_beams best finished ones, scored by
  sum of generated log-probs / generated length ** length_penalty (the prompt
  excluded, end-of-text included). See `_beams_done` for when a prompt is done.
- Compilation: once per (strategy, batch shape, length bucket). Sampler values
  (temperature, top-k, top-p, seed, length penalty) are inputs, not constants.

Every strategy scores tokens with the model's own distribution over the ids the
tokenizer has: `logprobs` are log-softmax of the raw logits (temperature 1),
whatever the sampler did. Embedding rows past the tokenizer's vocabulary can
never be chosen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath

from gptjax import compile_cache
from gptjax.load import load
from gptjax.model import GPT, Cache, init_cache

STRATEGIES = ("greedy", "sample", "beam")
MIN_BUCKET = 16  # shortest padded prompt length: short prompts share one compile
STOP_CHUNK = 16  # sampling steps between the host's checks for stop strings
# Why a sequence ended, as stored on the device and in Completion.finish_reason.
LENGTH, EOS, STOP = 0, 1, 2
FINISH_REASONS = ("length", "eos", "stop")


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to decode; the command line has one flag per field, of the same name."""

  strategy: str = "greedy"  # 'greedy', 'sample' or 'beam'
  temperature: float = 1.0  # sample: divides the logits; 0 means greedy
  top_k: int = 0  # sample: keep only the k most likely tokens; 0 keeps all
  top_p: float = 1.0  # sample: keep the smallest set of tokens with probability mass >= top_p
  num_beams: int = 4  # beam: live hypotheses per prompt
  length_penalty: float = 1.0  # beam: score = sum of log-probs / generated length ** length_penalty
  num_return_sequences: int = 1  # completions per prompt: independent samples, or the best beams
  max_new_tokens: int = 64  # new tokens at most, end-of-text included
  seed: int = 0  # sample: row j of prompt i draws from fold_in(seed, i * num_return_sequences + j)

  @property
  def greedy(self) -> bool:
    return self.strategy == "greedy" or (self.strategy == "sample" and self.temperature == 0)

  def describe(self) -> dict[str, Any]:
    """The strategy and the settings that affect it, as recorded in outputs."""
    if self.greedy:
      return {"strategy": "greedy", "max_new_tokens": self.max_new_tokens}
    names = (
      ("temperature", "top_k", "top_p", "seed")
      if self.strategy == "sample"
      else ("num_beams", "length_penalty")
    )
    return {
      "strategy": self.strategy,
      **{n: getattr(self, n) for n in names},
      "num_return_sequences": self.num_return_sequences,
      "max_new_tokens": self.max_new_tokens,
    }

  def check(self) -> None:
    """Raises ValueError, one line per problem, naming the flag, its value and the fix."""
    errors = []
    if self.strategy not in STRATEGIES:
      errors.append(f"--strategy={self.strategy!r}: unknown; use one of {', '.join(STRATEGIES)}")
    if self.temperature < 0:
      errors.append(f"--temperature={self.temperature}: must be >= 0 (0 = greedy)")
    if self.top_k < 0:
      errors.append(f"--top_k={self.top_k}: must be >= 0 (0 keeps every token)")
    if not 0 < self.top_p <= 1:
      errors.append(f"--top_p={self.top_p}: must be in (0, 1] (1 keeps every token)")
    if self.num_beams < 1:
      errors.append(f"--num_beams={self.num_beams}: must be >= 1")
    if self.max_new_tokens < 1:
      errors.append(f"--max_new_tokens={self.max_new_tokens}: must be >= 1")
    if self.num_return_sequences < 1:
      errors.append(f"--num_return_sequences={self.num_return_sequences}: must be >= 1")
    elif self.strategy == "beam" and self.num_return_sequences > self.num_beams:
      errors.append(
        f"--num_return_sequences={self.num_return_sequences}: beam search returns at most "
        f"--num_beams={self.num_beams} hypotheses; raise --num_beams or lower "
        "--num_return_sequences"
      )
    elif self.greedy and self.num_return_sequences > 1:
      errors.append(
        f"--num_return_sequences={self.num_return_sequences}: greedy decoding has one answer "
        "per prompt; use --strategy=sample (temperature > 0) or --strategy=beam"
      )
    if errors:
      raise ValueError("\n".join(errors))


@dataclasses.dataclass(frozen=True)
class Completion:
  """One generated sequence."""

  text: str  # the new text, cut before a stop string
  tokens: list[int]  # new ids, including the end-of-text or stop-completing token that ended it
  logprobs: list[float]  # the model's log-probability of each of `tokens`
  finish_reason: str  # 'eos', 'stop' or 'length'
  score: float | None  # beam search: sum(logprobs) / len(tokens) ** length_penalty


@dataclasses.dataclass
class Stats:
  """Work and time of a Decoder's calls, compilation timed apart."""

  prompt_tokens: int = 0  # real (unpadded) prompt tokens prefilled
  prefill_s: float = 0.0  # prefill passes, each of which also picks the first new token
  decode_tokens: int = 0  # rows x steps after the prefill (a finished row still costs its slot)
  decode_s: float = 0.0
  compiles: int = 0
  compile_s: float = 0.0


def bucket(length: int, limit: int) -> int:
  """The padded prompt length: a power of two >= `length`, at least MIN_BUCKET, at most `limit`."""
  return min(max(MIN_BUCKET, 1 << (length - 1).bit_length()), limit)


def check_stop(stop: Sequence[str]) -> None:
  """Refuses an empty stop string: every text contains it, so it would end every
  completion before its first token."""
  if any(s == "" for s in stop):
    raise ValueError("--stop='': an empty stop string ends every completion at once; drop it")


def check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, seq_len: int) -> None:
  """Raises ValueError for no prompt, an empty one, or one that leaves no room for
  max_new_tokens."""
  if not prompts:
    raise ValueError("no prompt to decode: give at least one")
  for i, prompt in enumerate(prompts):
    if not prompt:
      raise ValueError(f"prompt {i} is empty: give it at least one token")
    if len(prompt) + max_new_tokens > seq_len:
      raise ValueError(
        f"prompt {i} has {len(prompt)} tokens: with --max_new_tokens={max_new_tokens} that is "
        f"{len(prompt) + max_new_tokens}, more than the model's context (model.seq_len="
        f"{seq_len}); shorten the prompt or set --max_new_tokens <= "
        f"{max(seq_len - len(prompt), 0)}"
      )


# ------------------------------------------------------------------ samplers


def mask_vocab(logits: jax.Array, vocab_limit: int) -> jax.Array:
  """-inf at ids >= vocab_limit: embedding rows no tokenizer id maps to."""
  if vocab_limit >= logits.shape[-1]:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)


def filter_logits(
  logits: jax.Array,
  temperature: jax.Array | float,
  top_k: jax.Array | int,
  top_p: jax.Array | float,
) -> jax.Array:
  """Temperature, then top-k, then top-p, in that order; dropped tokens get -inf.

  Top-p keeps the smallest set of most likely tokens whose probability (after
  temperature and top-k) reaches top_p: the token that crosses top_p is kept, and
  so is the most likely token whatever top_p is. top_k=0 and top_p=1 are off.
  Values may be traced, so one compile serves every setting.
  """
  logits = logits / temperature
  vocab = logits.shape[-1]
  rank = jnp.arange(vocab)
  ordered = -jnp.sort(-logits, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  ordered = jnp.where(rank < k, ordered, -jnp.inf)
  probs = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (rank < k) & ((mass_before < top_p) | (rank == 0) | (top_p >= 1))
  cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


# ------------------------------------------------------------------ device state and steps


class _Rows(NamedTuple):
  """Greedy/sampling state; one row per (prompt, return sequence)."""

  step: jax.Array  # new tokens chosen so far
  cache: Cache
  lengths: jax.Array  # [rows] prompt lengths: token s is fed at position length + s
  tokens: jax.Array  # [rows, max_new_tokens]
  logprobs: jax.Array  # [rows, max_new_tokens]
  done: jax.Array  # [rows]
  keys: jax.Array  # [rows, 2] each row's own PRNG key


class _Beams(NamedTuple):
  """Beam-search state: `num_beams` live hypotheses and a pool of finished ones per prompt."""

  step: jax.Array
  cache: Cache  # [n_layer, prompts * num_beams, ...]
  lengths: jax.Array  # [prompts * num_beams]
  tokens: jax.Array  # [prompts, num_beams, max_new_tokens] live hypotheses
  logprobs: jax.Array
  scores: jax.Array  # [prompts, num_beams] sum of log-probs; -inf for an empty slot
  fin_tokens: jax.Array  # [prompts, num_beams, max_new_tokens] finished, best first
  fin_logprobs: jax.Array
  fin_lengths: jax.Array  # [prompts, num_beams]
  fin_scores: jax.Array  # [prompts, num_beams] length-penalised; -inf for an empty slot
  fin_reasons: jax.Array  # [prompts, num_beams] LENGTH, EOS or STOP
  done: jax.Array  # [prompts]


def _prefill_logits(
  model: GPT, params: Any, prompts: jax.Array, lengths: jax.Array, cache_len: int, copies: int
) -> tuple[jax.Array, Cache]:
  """One forward pass over the padded prompts [batch, bucket]: next-token logits of each
  prompt's last token and a filled cache, each repeated `copies` times per prompt."""
  cache = init_cache(model.config, prompts.shape[0], cache_len)
  logits, cache = model.apply(
    {"params": params}, prompts, cache=cache, index=0, logits_at=lengths - 1
  )
  return (
    jnp.repeat(logits[:, 0], copies, axis=0),
    jax.tree.map(lambda c: jnp.repeat(c, copies, axis=1), cache),
  )


def _next_logits(
  model: GPT, params: Any, cache: Cache, last: jax.Array, positions: jax.Array
) -> tuple[jax.Array, Cache]:
  """One decode step: each row's last token [rows] at its own position."""
  logits, cache = model.apply({"params": params}, last[:, None], cache=cache, index=positions)
  return logits[:, 0], cache


def pick_tokens(
  logits: jax.Array,
  keys: jax.Array,
  temperature: jax.Array | float,
  top_k: jax.Array | int,
  top_p: jax.Array | float,
  *,
  vocab_limit: int,
  greedy: bool,
  truncate: bool = True,
) -> jax.Array:
  """One token per row of `logits` [rows, vocab]: the argmax if `greedy` (keys unused),
  else a draw with row r's key from `filter_logits`. `truncate=False` skips the sort
  when top_k=0 and top_p=1. Ids >= vocab_limit are never picked."""
  logits = mask_vocab(logits, vocab_limit)
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = filter_logits(logits, temperature, top_k, top_p) if truncate else logits / temperature
  return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)


def _choose(
  state: _Rows,
  logits: jax.Array,
  temperature: jax.Array,
  top_k: jax.Array,
  top_p: jax.Array,
  *,
  vocab_limit: int,
  eos_id: int,
  greedy: bool,
  truncate: bool,
) -> _Rows:
  """Picks token number `state.step` of every row; finished rows get end-of-text again."""
  keys = jax.vmap(jax.random.fold_in, (0, None))(state.keys, state.step)
  token = pick_tokens(
    logits,
    keys,
    temperature,
    top_k,
    top_p,
    vocab_limit=vocab_limit,
    greedy=greedy,
    truncate=truncate,
  )
  token = jnp.where(state.done, eos_id, token)
  logprob = jnp.take_along_axis(
    jax.nn.log_softmax(mask_vocab(logits, vocab_limit)), token[:, None], axis=-1
  )[:, 0]
  logprob = jnp.where(state.done, 0.0, logprob)
  at = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v[:, None], state.step, axis=1)
  return state._replace(
    step=state.step + 1,
    tokens=at(state.tokens, token),
    logprobs=at(state.logprobs, logprob),
    done=state.done | (token == eos_id),
  )


def _rows_prefill(
  model: GPT,
  params: Any,
  prompts: jax.Array,
  lengths: jax.Array,
  row_ids: jax.Array,
  seed: jax.Array,
  temperature: jax.Array,
  top_k: jax.Array,
  top_p: jax.Array,
  *,
  max_new_tokens: int,
  copies: int,
  **choose,
) -> _Rows:
  logits, cache = _prefill_logits(
    model, params, prompts, lengths, prompts.shape[1] + max_new_tokens, copies
  )
  rows = logits.shape[0]
  state = _Rows(
    step=jnp.zeros((), jnp.int32),
    cache=cache,
    lengths=jnp.repeat(lengths, copies),
    tokens=jnp.zeros((rows, max_new_tokens), jnp.int32),
    logprobs=jnp.zeros((rows, max_new_tokens), jnp.float32),
    done=jnp.zeros(rows, bool),
    keys=jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(seed), row_ids),
  )
  return _choose(state, logits, temperature, top_k, top_p, **choose)


def _rows_decode(
  model: GPT,
  params: Any,
  state: _Rows,
  stopped: jax.Array,
  until: jax.Array,
  temperature: jax.Array,
  top_k: jax.Array,
  top_p: jax.Array,
  **choose,
) -> _Rows:
  """Steps until `until` tokens or every row is done; `stopped` rows (stop strings) end first."""

  def body(s: _Rows) -> _Rows:
    logits, cache = _next_logits(
      model, params, s.cache, s.tokens[:, s.step - 1], s.lengths + s.step - 1
    )
    return _choose(s._replace(cache=cache), logits, temperature, top_k, top_p, **choose)

  state = state._replace(done=state.done | stopped)
  return jax.lax.while_loop(lambda s: (s.step < until) & ~jnp.all(s.done), body, state)


def _add_finished(
  s: _Beams,
  scores: jax.Array,
  tokens: jax.Array,
  logprobs: jax.Array,
  lengths: jax.Array,
  reasons: jax.Array,
) -> _Beams:
  """Merges candidate finished hypotheses ([prompts, c, ...]; score -inf: not finished) into
  the pool, which keeps the num_beams best, best first."""
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  best, pick = jax.lax.top_k(cat(s.fin_scores, scores), s.fin_scores.shape[1])
  take = lambda a, b: jnp.take_along_axis(
    cat(a, b), pick.reshape(pick.shape + (1,) * (a.ndim - 2)), axis=1
  )
  return s._replace(
    fin_scores=best,
    fin_tokens=take(s.fin_tokens, tokens),
    fin_logprobs=take(s.fin_logprobs, logprobs),
    fin_lengths=take(s.fin_lengths, lengths),
    fin_reasons=take(s.fin_reasons, reasons),
  )


def _penalised(scores: jax.Array, length: jax.Array, length_penalty: jax.Array) -> jax.Array:
  return scores / length.astype(jnp.float32) ** length_penalty


def _beams_done(s: _Beams, length_penalty: jax.Array) -> jax.Array:
  """A prompt is done once it has num_beams finished hypotheses and its best live one, scored
  as it stands, is no better than the worst of them (HF transformers' rule when
  early_stopping=False), or when nothing is left alive. With one beam this stops exactly
  where greedy decoding stops."""
  best_live = jnp.max(_penalised(s.scores, s.step, length_penalty), axis=1)
  full = jnp.all(jnp.isfinite(s.fin_scores), axis=1)
  return (
    s.done
    | (full & (best_live <= jnp.min(s.fin_scores, axis=1)))
    | ~jnp.any(jnp.isfinite(s.scores), axis=1)
  )


def _beam_choose(
  s: _Beams, logits: jax.Array, length_penalty: jax.Array, *, vocab_limit: int, eos_id: int
) -> _Beams:
  """One beam step: expand every live hypothesis, finish, select, and re-gather the cache."""
  prompts, beams, max_new = s.tokens.shape
  vocab = logits.shape[-1]
  logp = jax.nn.log_softmax(mask_vocab(logits, vocab_limit)).reshape(prompts, beams * vocab)
  # The best 2 x num_beams expansions hold at least num_beams that do not end (each parent
  # has one end-of-text child), so finishing hypotheses never starve the live ones.
  expanded = (s.scores[:, :, None] + logp.reshape(prompts, beams, vocab)).reshape(prompts, -1)
  cand_scores, idx = jax.lax.top_k(expanded, 2 * beams)
  parent, token = idx // vocab, (idx % vocab).astype(jnp.int32)
  extend = lambda a, v: jax.lax.dynamic_update_slice_in_dim(
    jnp.take_along_axis(a, parent[:, :, None], axis=1), v[:, :, None], s.step, axis=2
  )
  tokens = extend(s.tokens, token)
  logprobs = extend(s.logprobs, jnp.take_along_axis(logp, idx, axis=1))
  length = s.step + 1
  is_eos = token == eos_id
  # As in HF transformers, an end-of-text expansion counts only among the num_beams best;
  # at the last step every expansion is a finished hypothesis.
  finishing = jnp.isfinite(cand_scores) & (
    (is_eos & (jnp.arange(2 * beams) < beams)) | (length == max_new)
  )
  new = _add_finished(
    s,
    jnp.where(finishing, _penalised(cand_scores, length, length_penalty), -jnp.inf),
    tokens,
    logprobs,
    jnp.full(token.shape, length),
    jnp.where(is_eos, EOS, LENGTH).astype(jnp.int32),
  )
  scores, sel = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, cand_scores), beams)
  pick = lambda a: jnp.take_along_axis(a, sel[:, :, None], axis=1)
  parent = jnp.take_along_axis(parent, sel, axis=1)
  new = new._replace(tokens=pick(tokens), logprobs=pick(logprobs), scores=scores)
  # Finished prompts stop changing: their fields, and their cache rows, stay as they were.
  frozen = lambda a, b: jnp.where(s.done.reshape((-1,) + (1,) * (a.ndim - 1)), b, a)
  new = jax.tree.map(
    frozen,
    new._replace(cache=None, step=None, lengths=None),
    s._replace(cache=None, step=None, lengths=None),
  )
  parent = jnp.where(s.done[:, None], jnp.arange(beams), parent)
  rows = (jnp.arange(prompts)[:, None] * beams + parent).reshape(-1)
  new = new._replace(
    step=length, lengths=s.lengths, cache=jax.tree.map(lambda c: jnp.take(c, rows, axis=1), s.cache)
  )
  return new._replace(done=_beams_done(new, length_penalty))


def _beam_prefill(
  model: GPT,
  params: Any,
  prompts: jax.Array,
  lengths: jax.Array,
  length_penalty: jax.Array,
  *,
  max_new_tokens: int,
  num_beams: int,
  **choose,
) -> _Beams:
  logits, cache = _prefill_logits(
    model, params, prompts, lengths, prompts.shape[1] + max_new_tokens, num_beams
  )
  batch = prompts.shape[0]
  shape = (batch, num_beams, max_new_tokens)
  no_hypotheses = jnp.full((batch, num_beams), -jnp.inf)
  state = _Beams(
    step=jnp.zeros((), jnp.int32),
    cache=cache,
    lengths=jnp.repeat(lengths, num_beams),
    tokens=jnp.zeros(shape, jnp.int32),
    logprobs=jnp.zeros(shape, jnp.float32),
    scores=no_hypotheses.at[:, 0].set(0.0),  # one live beam: its copies would be duplicates
    fin_tokens=jnp.zeros(shape, jnp.int32),
    fin_logprobs=jnp.zeros(shape, jnp.float32),
    fin_lengths=jnp.zeros((batch, num_beams), jnp.int32),
    fin_scores=no_hypotheses,
    fin_reasons=jnp.zeros((batch, num_beams), jnp.int32),
    done=jnp.zeros(batch, bool),
  )
  return _beam_choose(state, logits, length_penalty, **choose)


def _beam_decode(
  model: GPT,
  params: Any,
  state: _Beams,
  stopped: jax.Array,
  until: jax.Array,
  length_penalty: jax.Array,
  **choose,
) -> _Beams:
  """Beam steps until `until` tokens or every prompt is done. `stopped` live hypotheses
  (their text holds a stop string) first move to the finished pool."""
  retired = jnp.where(stopped, _penalised(state.scores, state.step, length_penalty), -jnp.inf)
  state = _add_finished(
    state._replace(scores=jnp.where(stopped, -jnp.inf, state.scores)),
    retired,
    state.tokens,
    state.logprobs,
    jnp.full(stopped.shape, state.step),
    jnp.full(stopped.shape, STOP, jnp.int32),
  )
  state = state._replace(done=_beams_done(state, length_penalty))

  def body(s: _Beams) -> _Beams:
    logits, cache = _next_logits(
      model, params, s.cache, s.tokens[:, :, s.step - 1].reshape(-1), s.lengths + s.step - 1
    )
    return _beam_choose(s._replace(cache=cache), logits, length_penalty, **choose)

  return jax.lax.while_loop(lambda s: (s.step < until) & ~jnp.all(s.done), body, state)


# ------------------------------------------------------------------ host side


class Decoder:
  """Decodes token prompts with one model, its parameters and its tokenizer.

  It keeps the compiled prefill and decode loop of each (strategy, batch shape,
  length bucket), so compilation is paid once and timed apart from decoding
  (`stats`). Call it inside `sharding.active(...)` (e.g. `gptjax.load(...).active()`)
  for the model's logical shardings to apply.
  """

  def __init__(self, model: GPT, params: Any, tokenizer: Any):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.vocab_limit = min(tokenizer.vocab_size, model.config.vocab_size)
    self.stats = Stats()
    self._compiled: dict[tuple[Any, ...], Any] = {}

  def generate(
    self,
    prompts: Sequence[Sequence[int]],
    settings: Settings,
    *,
    stop: Sequence[str] = (),
    batch_size: int | None = None,
  ) -> list[list[Completion]]:
    """Completions of each prompt (token ids): num_return_sequences each, best first for beams.

    Prompts are decoded `batch_size` at a time (default: all at once); a short last
    batch is padded with copies of its first prompt so it reuses the compiled shape.
    A completion ends at the tokenizer's end-of-text token or at any of `stop`.
    """
    settings.check()
    check_stop(stop)
    check_prompts(prompts, settings.max_new_tokens, self.model.config.seq_len)
    if batch_size is not None and batch_size < 1:
      raise ValueError(f"--batch_size={batch_size}: must be >= 1")
    batch = min(batch_size or len(prompts), len(prompts))
    completions = []
    for first in range(0, len(prompts), batch):
      chunk = [list(p) for p in prompts[first : first + batch]]
      real = len(chunk)
      chunk += [chunk[0]] * (batch - real)
      completions += self._batch(chunk, real, first, settings, tuple(stop))[:real]
    return completions

  def _compile(
    self,
    key: tuple[Any, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    donate: tuple[int, ...] = (),
    out_like: Any = None,
  ) -> Any:
    """`fn` compiled for `args` once per key. `out_like` pins the output shardings to those
    of an input, so a loop's output can be fed back to the same executable."""
    if key not in self._compiled:
      start = time.perf_counter()
      out_shardings = None if out_like is None else jax.tree.map(lambda a: a.sharding, out_like)
      self._compiled[key] = (
        jax.jit(fn, donate_argnums=donate, out_shardings=out_shardings).lower(*args).compile()
      )
      self.stats.compiles += 1
      self.stats.compile_s += time.perf_counter() - start
    return self._compiled[key]

  def _batch(
    self, prompts: list[list[int]], real: int, first: int, settings: Settings, stop: tuple[str, ...]
  ) -> list[list[Completion]]:
    n_new = settings.max_new_tokens
    lengths = np.array([len(p) for p in prompts], np.int32)
    width = bucket(int(lengths.max()), self.model.config.seq_len - n_new)
    padded = np.full((len(prompts), width), self.tokenizer.eos_id, np.int32)
    for i, prompt in enumerate(prompts):
      padded[i, : len(prompt)] = prompt
    self.stats.prompt_tokens += int(lengths[:real].sum())
    if settings.strategy == "beam":
      return self._beams(padded, lengths, settings, stop)
    return self._rows(padded, lengths, first, settings, stop)

  def _prefill(self, key: tuple[Any, ...], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    compiled = self._compile(key + ("prefill",), fn, args)
    start = time.perf_counter()
    state = jax.block_until_ready(compiled(*args))
    self.stats.prefill_s += time.perf_counter() - start
    return state

  def _decode(
    self,
    key: tuple[Any, ...],
    fn: Callable[..., Any],
    state: Any,
    values: tuple[Any, ...],
    n_new: int,
    chunk: int,
    check: Callable[[int, Any], tuple[np.ndarray, bool]],
  ) -> Any:
    """Runs the compiled step loop, `chunk` steps per call, until `check(step, state)` says
    decoding is over; between calls it names the rows (or beams) the host ends."""
    start, compile_s = time.perf_counter(), self.stats.compile_s
    while True:
      step = int(state.step)
      stopped, over = check(step, state)
      if over:
        break
      args = (self.params, state, stopped, np.int32(min(step + chunk, n_new)), *values)
      state = self._compile(key + ("decode",), fn, args, donate=(1,), out_like=state)(*args)
    self.stats.decode_s += time.perf_counter() - start - (self.stats.compile_s - compile_s)
    self.stats.decode_tokens += len(state.lengths) * (step - 1)
    return state

  def _rows(
    self,
    padded: np.ndarray,
    lengths: np.ndarray,
    first: int,
    settings: Settings,
    stop: tuple[str, ...],
  ) -> list[list[Completion]]:
    batch, width = padded.shape
    n_new, copies = settings.max_new_tokens, settings.num_return_sequences
    greedy = settings.greedy
    truncate = not greedy and (settings.top_k > 0 or settings.top_p < 1)
    choose = dict(
      vocab_limit=self.vocab_limit, eos_id=self.tokenizer.eos_id, greedy=greedy, truncate=truncate
    )
    values = (
      np.float32(1.0 if greedy else settings.temperature),
      np.int32(settings.top_k),
      np.float32(settings.top_p),
    )
    row_ids = ((first + np.arange(batch))[:, None] * copies + np.arange(copies)).reshape(-1)
    key = ("rows", batch, width, n_new, copies, greedy, truncate)
    state = self._prefill(
      key,
      functools.partial(_rows_prefill, self.model, max_new_tokens=n_new, copies=copies, **choose),
      (self.params, padded, lengths, row_ids.astype(np.int32), np.int32(settings.seed), *values),
    )
    eos = self.tokenizer.eos_id
    rows = batch * copies
    stop_at: list[int | None] = [None] * rows  # tokens kept where a stop string ended a row

    def check(step: int, state: _Rows) -> tuple[np.ndarray, bool]:
      if stop:
        tokens = jax.device_get(state.tokens)
        for r in range(rows):
          if stop_at[r] is None:
            stop_at[r] = self._stop_index(_until_eos(tokens[r, :step], eos), stop)
      stopped = np.array([s is not None for s in stop_at])
      return stopped, step >= n_new or bool(np.all(jax.device_get(state.done) | stopped))

    state = self._decode(
      key,
      functools.partial(_rows_decode, self.model, **choose),
      state,
      values,
      n_new,
      STOP_CHUNK if stop else n_new,
      check,
    )
    step = int(state.step)
    tokens, logprobs = jax.device_get((state.tokens, state.logprobs))
    completions = []
    for r in range(rows):
      ids = _until_eos(tokens[r, :step], eos)
      if stop_at[r] is not None:
        kept, reason = stop_at[r], "stop"
      elif len(ids) < step:
        kept, reason = len(ids) + 1, "eos"
      else:
        kept, reason = step, "length"
      completions.append(self._completion(tokens[r, :kept], logprobs[r, :kept], reason, None, stop))
    return [completions[i * copies : (i + 1) * copies] for i in range(batch)]

  def _beams(
    self, padded: np.ndarray, lengths: np.ndarray, settings: Settings, stop: tuple[str, ...]
  ) -> list[list[Completion]]:
    batch, width = padded.shape
    n_new, beams = settings.max_new_tokens, settings.num_beams
    choose = dict(vocab_limit=self.vocab_limit, eos_id=self.tokenizer.eos_id)
    penalty = np.float32(settings.length_penalty)
    key = ("beam", batch, width, n_new, beams)
    state = self._prefill(
      key,
      functools.partial(_beam_prefill, self.model, max_new_tokens=n_new, num_beams=beams, **choose),
      (self.params, padded, lengths, penalty),
    )

    def check(step: int, state: _Beams) -> tuple[np.ndarray, bool]:
      tokens, scores, done = jax.device_get((state.tokens, state.scores, state.done))
      stopped = np.zeros((batch, beams), bool)
      if stop:
        for b, k in zip(*np.nonzero(np.isfinite(scores) & ~done[:, None])):
          stopped[b, k] = self._stop_index(list(tokens[b, k, :step]), stop) is not None
      return stopped, step >= n_new or bool(np.all(done))

    # Beams reorder every step, so with stop strings the host looks after every step.
    state = self._decode(
      key,
      functools.partial(_beam_decode, self.model, **choose),
      state,
      (penalty,),
      n_new,
      1 if stop else n_new,
      check,
    )
    fin_tokens, fin_logprobs, fin_lengths, fin_scores, fin_reasons = jax.device_get(
      (state.fin_tokens, state.fin_logprobs, state.fin_lengths, state.fin_scores, state.fin_reasons)
    )
    completions = []
    for b in range(batch):
      best = [k for k in range(beams) if np.isfinite(fin_scores[b, k])]
      completions.append(
        [
          self._completion(
            fin_tokens[b, k, : fin_lengths[b, k]],
            fin_logprobs[b, k, : fin_lengths[b, k]],
            FINISH_REASONS[fin_reasons[b, k]],
            float(fin_scores[b, k]),
            stop,
          )
          for k in best[: settings.num_return_sequences]
        ]
      )
    return completions

  def _stop_index(self, ids: list[int], stop: tuple[str, ...]) -> int | None:
    """The fewest leading tokens of `ids` whose text holds a stop string; None if it has none."""
    decode = self.tokenizer.decode
    if not any(s in decode(ids) for s in stop):
      return None
    return next(j for j in range(1, len(ids) + 1) if any(s in decode(ids[:j]) for s in stop))

  def _completion(
    self,
    tokens: np.ndarray,
    logprobs: np.ndarray,
    reason: str,
    score: float | None,
    stop: tuple[str, ...],
  ) -> Completion:
    tokens = [int(t) for t in tokens]
    text = self.tokenizer.decode(_until_eos(tokens, self.tokenizer.eos_id))
    cuts = [text.find(s) for s in stop if s in text]
    if cuts:
      text, reason = text[: min(cuts)], "stop"
    return Completion(
      text=text,
      tokens=tokens,
      logprobs=[float(x) for x in logprobs],
      finish_reason=reason,
      score=score,
    )


def _until_eos(tokens: Sequence[int], eos_id: int) -> list[int]:
  """The ids before the first end-of-text token."""
  ids = [int(t) for t in tokens]
  return ids[: ids.index(eos_id)] if eos_id in ids else ids


def generate(
  model: GPT,
  params: Any,
  tokenizer: Any,
  prompts: Sequence[Sequence[int]],
  settings: Settings,
  *,
  stop: Sequence[str] = (),
  batch_size: int | None = None,
) -> list[list[Completion]]:
  """Completions of each token prompt; see Decoder.generate."""
  return Decoder(model, params, tokenizer).generate(
    prompts, settings, stop=stop, batch_size=batch_size
  )


# ------------------------------------------------------------------ command line


def define_flags() -> None:
  """The command line's flags, one per Settings field and of the same name. Defined only when
  this module runs as a program: training imports it, and gptjax.main has its own --workdir."""
  defaults = Settings()
  flags.DEFINE_string("workdir", None, "Run directory to decode from (local or gs://).")
  flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the newest.")
  flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
  flags.DEFINE_string(
    "prompts_file", None, "One prompt per line, or a .jsonl file whose objects have a 'prompt'."
  )
  flags.DEFINE_string("strategy", defaults.strategy, "greedy, sample or beam.")
  flags.DEFINE_float(
    "temperature", defaults.temperature, "sample: divides the logits (applied first); 0 = greedy."
  )
  flags.DEFINE_integer(
    "top_k", defaults.top_k, "sample: keep the k most likely tokens (applied second); 0 = all."
  )
  flags.DEFINE_float(
    "top_p",
    defaults.top_p,
    "sample: keep the smallest set of tokens with probability >= top_p (applied last); 1 = all.",
  )
  flags.DEFINE_integer("num_beams", defaults.num_beams, "beam: live hypotheses.")
  flags.DEFINE_float(
    "length_penalty",
    defaults.length_penalty,
    "beam: score = sum of generated log-probs / generated length ** this.",
  )
  flags.DEFINE_integer(
    "num_return_sequences",
    defaults.num_return_sequences,
    "Completions per prompt: independent samples, or the best beams.",
  )
  flags.DEFINE_integer(
    "max_new_tokens", defaults.max_new_tokens, "New tokens at most per completion."
  )
  flags.DEFINE_multi_string(
    "stop", [], "A string that ends a completion (repeatable); end-of-text always does."
  )
  flags.DEFINE_integer("seed", defaults.seed, "sample: the random seed.")
  flags.DEFINE_integer("batch_size", 16, "Prompts decoded together.")
  flags.DEFINE_string(
    "output",
    None,
    "A .jsonl file: one line per completion with its prompt, "
    "text, tokens, token log-probabilities, strategy, settings and checkpoint "
    "step.",
  )


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
  """--prompt values, then --prompts_file's prompts; raises ValueError for none or an empty one."""
  texts = list(prompts)
  for i, text in enumerate(texts):
    if not text:
      raise ValueError(f"--prompt number {i + 1} is empty; give it some text")
  if prompts_file:
    path = epath.Path(prompts_file)
    if not path.is_file():
      raise ValueError(f"--prompts_file={prompts_file}: no such file")
    for n, line in enumerate(path.read_text().splitlines(), 1):
      where = f"--prompts_file={prompts_file}: line {n}"
      if prompts_file.endswith(".jsonl"):
        try:
          text = json.loads(line)["prompt"] if line.strip() else ""
        except (json.JSONDecodeError, KeyError, TypeError):
          raise ValueError(f"{where} is not a JSON object with a 'prompt' field") from None
      else:
        text = line
      if not text:
        raise ValueError(f"{where} is an empty prompt; remove the line or give it text")
      texts.append(text)
  if not texts:
    raise ValueError("no prompt: give --prompt=TEXT (repeatable) or --prompts_file=FILE")
  return texts


def _rate(tokens: int, seconds: float) -> str:
  return f"{tokens / seconds:,.0f} tokens/s" if seconds > 0 else "n/a"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args["verbosity"].present:  # orbax logs every restore at INFO
    logging.set_verbosity(logging.WARNING)
  settings = Settings(**{f.name: args[f.name].value for f in dataclasses.fields(Settings)})
  try:
    settings.check()
    check_stop(args.stop)
    texts = read_prompts(args.prompt, args.prompts_file)
    loaded = load(args.workdir, args.step)
    compile_cache.enable(loaded.config.train.compile_cache)  # the run's choice, as training's
    tokenizer = loaded.tokenizer
    # Training puts end-of-text before every document, so a prompt starts after one.
    prompts = [[tokenizer.eos_id] + tokenizer.encode(text) for text in texts]
    check_prompts(prompts, settings.max_new_tokens, loaded.config.model.seq_len)
  except ValueError as e:
    sys.exit(f"error: {e}")

  decoder = Decoder(loaded.model, loaded.params, tokenizer)
  with loaded.active():
    completions = decoder.generate(prompts, settings, stop=args.stop, batch_size=args.batch_size)
  described = settings.describe()
  records = []
  for i, (text, outs) in enumerate(zip(texts, completions)):
    for j, c in enumerate(outs):
      score = "" if c.score is None else f", score {c.score:.4f}"
      print(f"=== prompt {i}, completion {j} ({c.finish_reason}{score}) ===\n{text}{c.text}")
      records.append(
        {
          "prompt": text,
          "completion": c.text,
          "tokens": c.tokens,
          "token_logprobs": c.logprobs,
          "finish_reason": c.finish_reason,
          "score": c.score,
          "prompt_index": i,
          "completion_index": j,
          "strategy": described["strategy"],
          "settings": described,
          "stop": list(args.stop),
          "step": loaded.step,
          "workdir": args.workdir,
        }
      )
  stats = decoder.stats
  print(
    f"prefill: {stats.prompt_tokens:,} prompt tokens, "
    f"{_rate(stats.prompt_tokens, stats.prefill_s)} | decode: {stats.decode_tokens:,} "
    f"tokens, {_rate(stats.decode_tokens, stats.decode_s)}"
    f" | {stats.compiles} programs compiled in {stats.compile_s:.1f} s (not counted)",
    file=sys.stderr,
  )
  if args.output:
    epath.Path(args.output).write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
