"""Tests for gptjax.attention (model.attention_impl='blocks'): values against an independent
float64 NumPy attention, gradients against autodiff of jax.nn.dot_product_attention, and the
point of it, that the masked upper blocks are never scored."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from gptjax.attention import causal_attention

BATCH, HEADS, HEAD_DIM = 2, 3, 8


def qkv(length: int, dtype=jnp.float32, seed: int = 0) -> tuple[jax.Array, ...]:
  rng = np.random.default_rng(seed)
  shape = (BATCH, length, HEADS, HEAD_DIM)
  return tuple(jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))


def document_mask(length: int, seed: int = 1) -> jax.Array:
  """[batch, 1, length, length]: causal within documents that start at random positions."""
  starts = np.random.default_rng(seed).random((BATCH, length)) < 0.1
  segments = np.cumsum(starts, axis=1)
  same = segments[:, :, None] == segments[:, None, :]
  return jnp.asarray(same & np.tril(np.ones((length, length), bool)))[:, None]


def numpy_attention(q, k, v, mask) -> np.ndarray:
  """Float64 softmax attention, written from the definition."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  length = q.shape[1]
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  allowed = np.tril(np.ones((length, length), bool)) if mask is None else np.asarray(mask)
  scores = np.where(allowed, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


# 16 is one block; 64 two of 32 rows; 70 three, the last of 6 rows; 130 four, the last of 31.
@pytest.mark.parametrize("length", [16, 64, 70, 130])
@pytest.mark.parametrize("masked", [False, True])
def test_values_match_numpy_attention(length: int, masked: bool) -> None:
  q, k, v = qkv(length)
  mask = document_mask(length) if masked else None
  out = jax.jit(causal_attention)(q, k, v, mask)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [64, 70])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_match_autodiff_of_dot_product_attention(length: int, masked: bool) -> None:
  """The hand-written backward against JAX differentiating its own attention."""
  q, k, v = qkv(length)
  mask = document_mask(length) if masked else None
  weights = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

  def loss(attend):
    return jax.jit(
      jax.value_and_grad(lambda q, k, v: jnp.sum(attend(q, k, v) * weights), argnums=(0, 1, 2))
    )(q, k, v)

  value, grads = loss(lambda q, k, v: causal_attention(q, k, v, mask))
  ref_value, ref_grads = loss(
    lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=mask is None)
  )
  np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
  for grad, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_saturated_softmax_gradients_stay_exact() -> None:
  """Scores in the thousands make most rows' softmax one-hot, where the query and key
  gradients vanish. FlashAttention's rowsum(dO * O) shortcut leaves a rounding error of
  |dO| |V| in those rows, which K and Q then multiply (it fails this test); rowsum(dP * P)
  cancels exactly there, as autodiff of the full attention does."""
  q, k, v = (100 * t for t in qkv(64))
  weights = 100 * jnp.asarray(np.random.default_rng(3).standard_normal(q.shape), jnp.float32)

  def grads(attend):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * weights), (0, 1, 2)))(q, k, v)

  ref = grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
  # rtol: scores of about 1e4 carry a rounding of about 1e-3, which a row whose top two
  # scores nearly tie passes on to its softmax; the shortcut's errors reach 0.6.
  for grad, expected in zip(grads(causal_attention), ref):
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=2e-3, atol=1e-3)


def test_bfloat16_inputs_give_bfloat16_output_close_to_float32() -> None:
  q, k, v = qkv(70, jnp.bfloat16)
  out = jax.jit(causal_attention)(q, k, v)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(out, np.float32), numpy_attention(q, k, v, None), rtol=0, atol=3e-2
  )
  grads = jax.grad(lambda q: jnp.sum(causal_attention(q, k, v).astype(jnp.float32)))(q)
  assert grads.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grads, np.float32)))


def dot_products(fn, length: int) -> int:
  """Multiply-adds of every dot_general in the forward and backward of `fn`."""
  q, k, v = qkv(length)
  grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
  total = 0

  def visit(jaxpr) -> None:
    nonlocal total
    for eqn in jaxpr.eqns:
      for sub in jaxprs_in_params(eqn.params):
        visit(sub)
      if eqn.primitive.name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)

  visit(jax.make_jaxpr(grads)(q, k, v).jaxpr)
  return total


def test_masked_upper_blocks_are_never_scored() -> None:
  """At 128 positions the queries go in four blocks of 32 rows that see 32, 64, 96 and 128
  keys, so each of attention's six [q, k] products (QK^T and PV forward; dO V^T, P^T dO,
  dS K and dS^T Q backward) covers 5/8 of the [128, 128] square the full attention computes."""
  length = 128
  per_pair = BATCH * HEADS * HEAD_DIM
  full = dot_products(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), length)
  blocks = dot_products(causal_attention, length)
  assert full == 6 * per_pair * length * length
  assert blocks == 6 * per_pair * 32 * (32 + 64 + 96 + 128)
