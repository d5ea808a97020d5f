"""Sampling with a key/value cache: one compiled scan, one token per iteration.

The prompt is fed through the same loop (its tokens are forced instead of
sampled), so there is a single code path and a single compilation.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gptjax.model import GPT, init_cache


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int,
                  vocab_limit: int | None = None) -> jax.Array:
  """One token per row of `logits` [batch, vocab]; temperature 0 is greedy.

  `vocab_limit` excludes ids the tokenizer does not have, for models whose
  embedding table is larger than the tokenizer's vocabulary.
  """
  if vocab_limit is not None and vocab_limit < logits.shape[-1]:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k",
                                             "vocab_limit"))
def generate(model: GPT, params: Any, prompt: jax.Array, rng: jax.Array, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             vocab_limit: int | None = None) -> jax.Array:
  """Extends `prompt` [batch, prompt_len] by max_new_tokens; returns all tokens."""
  batch, prompt_len = prompt.shape
  total = prompt_len + max_new_tokens
  if total > model.config.seq_len:
    raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds "
                     f"model.seq_len={model.config.seq_len}; ask for fewer tokens")
  tokens = jnp.zeros((batch, total), prompt.dtype).at[:, :prompt_len].set(prompt)

  def step(carry, pos):
    tokens, cache, rng = carry
    current = jax.lax.dynamic_slice_in_dim(tokens, pos, 1, axis=1)
    logits, cache = model.apply({"params": params}, current, cache=cache, index=pos)
    rng, key = jax.random.split(rng)
    sampled = sample_logits(logits[:, -1], key, temperature, top_k,
                            vocab_limit).astype(tokens.dtype)
    forced = jax.lax.dynamic_slice_in_dim(tokens, jnp.minimum(pos + 1, total - 1), 1, axis=1)[:, 0]
    chosen = jnp.where(pos + 1 < prompt_len, forced, sampled)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], pos + 1, axis=1)
    return (tokens, cache, rng), None

  cache = init_cache(model.config, batch, total)
  (tokens, _, _), _ = jax.lax.scan(step, (tokens, cache, rng), jnp.arange(total - 1))
  return tokens
