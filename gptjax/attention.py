"""Causal attention that never computes the masked half: `model.attention_impl='blocks'`.

`jax.nn.dot_product_attention` (implementation 'xla') scores every query against every
key, masks the future, and differentiates through the softmax: on CPU that spent about a
fifth of a small GPT's step on the attention core (issue 18's profile at 16M parameters:
21% of thunk time, mostly elementwise passes and reductions over the [T, T] scores).
Here the queries go in `_block_rows` blocks and block i is scored only against keys
0..end of block i, so the upper triangle above the diagonal blocks is never computed
(3/8 of the scores skipped at four blocks), and the backward is written out
(`jax.custom_vjp`) over the same blocks.

The softmax's backward uses rowsum(dP * P), as autodiff does, not FlashAttention's
rowsum(dO * O): the two are equal in exact arithmetic, but when a row's softmax saturates
(one key takes all the weight, as in a diverging run) the latter leaves a rounding error of
|dO| |V| that the query and key gradients then multiply (measured: a gradient of 1.3 where
the exact one is 0.0009), and on CPU the former was also the faster (0.71 against 1.22 ms
at 64 positions, 29 against 42 ms at 256, one core).

The probabilities are kept from the forward pass for the backward, as autodiff of the
'xla' path keeps them, so memory is the same or less (the skipped blocks are not kept).
Results equal the 'xla' path's to float rounding (the same exponentials and sums, in a
different order); tests/test_attention.py checks values and gradients.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Query rows per block: a quarter of the context, at least this many. Four blocks skip 3/8
# of the scores; smaller blocks cost more in per-op overhead than they save. Measured on one
# CPU core (forward and backward of the attention alone): at 64 positions two blocks of 32
# were fastest (0.62 ms; 16 rows 0.73), at 256 two and four blocks were within 0-15% of each
# other, and at 1024 four blocks of 256 were fastest (148 ms; 8 blocks 150, 2 blocks 153).
_MIN_BLOCK_ROWS = 32
_BLOCKS = 4


def _block_rows(length: int) -> int:
  return max(_MIN_BLOCK_ROWS, math.ceil(length / _BLOCKS))


def _spans(length: int) -> list[tuple[int, int]]:
  """The [start, end) query rows of each block; block i sees keys [0, end)."""
  rows = _block_rows(length)
  return [(start, min(length, start + rows)) for start in range(0, length, rows)]


def causal_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """Softmax(q k^T / sqrt(d)) v over keys at or before each query.

  q, k, v: [batch, length, heads, head_dim], one length for queries and keys (training,
  eval, a prefill into an empty cache). `mask` [batch, 1, length, length] further limits
  which keys a query sees (packed documents); it must itself be causal, since keys after
  a query's block are never scored, and allow each query at least one key.
  """
  # Heads before positions, once, so that every block's slice and product below is
  # contiguous per (batch, head) instead of a strided copy per block.
  heads_first = lambda t: jnp.swapaxes(t, 1, 2)
  out = _attention(heads_first(q), heads_first(k), heads_first(v), mask)
  return heads_first(out)


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
  """q, k, v and the result: [batch, heads, length, head_dim]."""
  return _forward(q, k, v, mask)[0]


def _probabilities(
  q: jax.Array, k: jax.Array, mask: jax.Array | None, start: int, end: int
) -> jax.Array:
  """float32 probabilities [batch, heads, end - start, end] of query rows [start, end)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum(
    "bhqd,bhkd->bhqk", q[:, :, start:end], k[:, :, :end], preferred_element_type=jnp.float32
  )
  if mask is None:
    allowed = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
  else:
    allowed = mask[:, :, start:end, :end]
  scores = jnp.where(allowed, scores * scale, jnp.finfo(jnp.float32).min)
  weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _concat_rows(blocks: list[jax.Array]) -> jax.Array:
  return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=2)


def _forward(
  q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, tuple]:
  probs, outs = [], []
  for start, end in _spans(q.shape[2]):
    p = _probabilities(q, k, mask, start, end)
    outs.append(jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v[:, :, :end]))
    probs.append(p)
  out = _concat_rows(outs)
  return out, (q, k, v, mask, probs)


def _backward(residuals: tuple, d_out: jax.Array) -> tuple:
  """dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dP * P)); dQ = dS K; dK = dS^T Q (with
  the 1/sqrt(d) scale), block by block."""
  q, k, v, mask, probs = residuals
  scale = 1.0 / math.sqrt(q.shape[-1])
  f32 = jnp.float32
  d_q = []
  d_k = jnp.zeros(k.shape, f32)
  d_v = jnp.zeros(v.shape, f32)
  for (start, end), p in zip(_spans(q.shape[2]), probs):
    d_o = d_out[:, :, start:end]
    d_v = d_v.at[:, :, :end].add(
      jnp.einsum("bhqk,bhqd->bhkd", p.astype(d_out.dtype), d_o, preferred_element_type=f32)
    )
    d_p = jnp.einsum("bhqd,bhkd->bhqk", d_o, v[:, :, :end], preferred_element_type=f32)
    d_s = (p * (d_p - jnp.sum(d_p * p, axis=-1, keepdims=True)) * scale).astype(q.dtype)
    d_q.append(jnp.einsum("bhqk,bhkd->bhqd", d_s, k[:, :, :end], preferred_element_type=f32))
    d_k = d_k.at[:, :, :end].add(
      jnp.einsum("bhqk,bhqd->bhkd", d_s, q[:, :, start:end], preferred_element_type=f32)
    )
  # None: the mask (bool) has no cotangent.
  return _concat_rows(d_q).astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_attention.defvjp(_forward, _backward)
