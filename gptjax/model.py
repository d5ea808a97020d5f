"""The GPT decoder: GPT-1 (post-LN) and GPT-2/GPT-3 (pre-LN) blocks in Flax linen.

Parameters and key activations carry logical axis names only (see sharding.py);
which mesh axes they land on is decided by the config's rules, never here.

The model optionally takes a key/value cache so generation reuses the same
weights and code path as training: `cache=None` is a training/eval forward pass,
a cache plus `index` (the position of the first token given, one for the batch or
one per row) is a prefill or decode step. Per-row positions let prompts of
different lengths share a batch: row i's tokens sit in cache slots 0, 1, ... of
row i whatever the other rows hold, and a query sees only its row's slots before
`index` and the new tokens up to itself, so stale slots past a row's length are
never read. Layers only read the cache; every layer's new keys and values are
written into it once, in place, after the last layer.
Packed rows can carry `segment_ids`, so attention and positions restart at every
document instead of running across the end-of-text token into the previous one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gptjax import attention
from gptjax.config import padded_vocab_size

Cache = dict[str, jax.Array]  # {'k', 'v'}: [n_layer, batch, max_len, n_head, head_dim]

_REMAT_POLICIES = {
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


def _param(
  module: nn.Module,
  name: str,
  shape: tuple[int, ...],
  axes: tuple[str | None, ...],
  init: Any,
  dtype: Any,
) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _layer_norm(cfg: ml_collections.ConfigDict, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=1e-5,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
  )


def _residual_std(cfg: ml_collections.ConfigDict) -> float:
  """GPT-2 scales the init of projections that write into the residual stream, so
  its variance stays O(1) however deep the stack is."""
  return cfg.init_std / (2 * cfg.n_layer) ** 0.5


class CausalSelfAttention(nn.Module):
  config: ml_collections.ConfigDict
  deterministic: bool

  @nn.compact
  def __call__(
    self, x: jax.Array, cache: Cache | None, index: jax.Array | None, mask: jax.Array | None
  ) -> tuple[jax.Array, Cache | None]:
    """`mask` [batch, 1, q, k] replaces the plain causal mask when rows hold several documents."""
    cfg = self.config
    head_dim = cfg.d_model // cfg.n_head
    normal = nn.initializers.normal(cfg.init_std)
    w_qkv = _param(
      self,
      "qkv_kernel",
      (cfg.d_model, 3, cfg.n_head, head_dim),
      ("embed", None, "heads", "kv"),
      normal,
      cfg.param_dtype,
    )
    b_qkv = _param(
      self,
      "qkv_bias",
      (3, cfg.n_head, head_dim),
      (None, "heads", "kv"),
      nn.initializers.zeros,
      cfg.param_dtype,
    )
    qkv = jnp.einsum("btd,dshk->sbthk", x, w_qkv.astype(cfg.dtype))
    qkv = qkv + b_qkv[:, None, None].astype(cfg.dtype)
    q, k, v = (nn.with_logical_constraint(t, ("batch", "length", "heads", "kv")) for t in qkv)

    if cache is not None and not (isinstance(index, int) and index == 0):
      out = _attend_with_cache(q, k, v, cache, index)
    elif cfg.attn_dropout > 0 and not self.deterministic:
      # jax.nn.dot_product_attention has no dropout, so this path spells the softmax out.
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
      scores = scores / jnp.sqrt(head_dim).astype(jnp.float32)
      allowed = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool)) if mask is None else mask
      probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)
      probs = nn.Dropout(cfg.attn_dropout, deterministic=False)(probs)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    elif cfg.attention_impl == "blocks":  # training, eval, a prefill into an empty cache
      out = attention.causal_attention(q, k, v, mask)
    else:
      out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=mask is None, implementation=cfg.attention_impl
      )
    if cache is not None:
      cache = {"k": k, "v": v}  # only the new entries: GPT writes all layers' at once
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))

    w_o = _param(
      self,
      "out_kernel",
      (cfg.n_head, head_dim, cfg.d_model),
      ("heads", "kv", "embed"),
      nn.initializers.normal(_residual_std(cfg)),
      cfg.param_dtype,
    )
    b_o = _param(
      self, "out_bias", (cfg.d_model,), ("embed",), nn.initializers.zeros, cfg.param_dtype
    )
    y = jnp.einsum("bthk,hkd->btd", out, w_o.astype(cfg.dtype)) + b_o.astype(cfg.dtype)
    return y, cache


def _attend_with_cache(
  q: jax.Array, k: jax.Array, v: jax.Array, cache: Cache, index: jax.Array | int
) -> jax.Array:
  """Attention of new queries over each row's cached keys before `index` and, causally, over
  the new keys, under one softmax.

  The cache is only read here (GPT writes the new keys into it after the last layer), so a
  decode step reads the cache once instead of copying it in every layer.
  """
  batch, length, _, head_dim = q.shape
  scale = 1 / jnp.sqrt(head_dim).astype(jnp.float32)
  scores = lambda keys: (
    jnp.einsum("bqhd,bkhd->bhqk", q, keys.astype(q.dtype), preferred_element_type=jnp.float32)
    * scale
  )
  slots = cache["k"].shape[1]
  earlier = jnp.arange(slots)[None, :] < jnp.broadcast_to(index, (batch,))[:, None]
  causal = jnp.tril(jnp.ones((length, length), bool))
  masked = jnp.finfo(jnp.float32).min
  probs = jax.nn.softmax(
    jnp.concatenate(
      [
        jnp.where(earlier[:, None, None, :], scores(cache["k"]), masked),
        jnp.where(causal, scores(k), masked),
      ],
      axis=-1,
    ),
    axis=-1,
  ).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs[..., :slots], cache["v"].astype(v.dtype)) + jnp.einsum(
    "bhqk,bkhd->bqhd", probs[..., slots:], v
  )


def _cache_write(cache: jax.Array, new: jax.Array, index: jax.Array | int) -> jax.Array:
  """Writes `new` [n_layer, batch, t, ...] into `cache` [n_layer, batch, max_len, ...] at slot
  `index` on: one shared index is one contiguous update, per-row indices (a ragged batch)
  update each row at its own slot. Both update the cache in place (a vmapped
  dynamic_update_slice would not: XLA:CPU copied the whole cache for it)."""
  new = new.astype(cache.dtype)
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis=2)
  rows = jnp.arange(new.shape[1])[:, None]
  return cache.at[:, rows, index[:, None] + jnp.arange(new.shape[2])].set(new)


class Mlp(nn.Module):
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    w_fc = _param(
      self,
      "fc_kernel",
      (cfg.d_model, cfg.d_ff),
      ("embed", "mlp"),
      nn.initializers.normal(cfg.init_std),
      cfg.param_dtype,
    )
    b_fc = _param(self, "fc_bias", (cfg.d_ff,), ("mlp",), nn.initializers.zeros, cfg.param_dtype)
    h = jnp.einsum("btd,df->btf", x, w_fc.astype(cfg.dtype)) + b_fc.astype(cfg.dtype)
    h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
    w_proj = _param(
      self,
      "proj_kernel",
      (cfg.d_ff, cfg.d_model),
      ("mlp", "embed"),
      nn.initializers.normal(_residual_std(cfg)),
      cfg.param_dtype,
    )
    b_proj = _param(
      self, "proj_bias", (cfg.d_model,), ("embed",), nn.initializers.zeros, cfg.param_dtype
    )
    return jnp.einsum("btf,fd->btd", h, w_proj.astype(cfg.dtype)) + b_proj.astype(cfg.dtype)


class Block(nn.Module):
  """One transformer block; GPT-1 normalises after each residual add, GPT-2 before."""

  config: ml_collections.ConfigDict
  deterministic: bool

  @nn.compact
  def __call__(
    self, x: jax.Array, cache: Cache | None, index: jax.Array | None, mask: jax.Array | None
  ) -> tuple[jax.Array, Cache | None]:
    cfg = self.config
    attn = CausalSelfAttention(cfg, self.deterministic, name="attn")
    mlp = Mlp(cfg, name="mlp")
    ln_1, ln_2 = _layer_norm(cfg, "ln_1"), _layer_norm(cfg, "ln_2")
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    if cfg.architecture == "gpt2":
      h, cache = attn(ln_1(x), cache, index, mask)
      x = x + drop(h)
      x = x + drop(mlp(ln_2(x)))
    else:
      h, cache = attn(x, cache, index, mask)
      x = ln_1(x + drop(h))
      x = ln_2(x + drop(mlp(x)))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


class GPT(nn.Module):
  """Decoder-only language model with tied input/output embeddings.

  `config` is the `model` group of the run config, with dtype names already
  turned into dtypes by `model_config()`.
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(
    self,
    tokens: jax.Array,
    *,
    deterministic: bool = True,
    cache: Cache | None = None,
    index: jax.Array | int = 0,
    segment_ids: jax.Array | None = None,
    logits_at: jax.Array | None = None,
  ) -> tuple[jax.Array, Cache | None]:
    """Returns float32 logits [batch, length, vocab_size + special_tokens] and the updated cache.

    `index` is the position of the first token, a scalar or one per row [batch].
    `segment_ids` [batch, length] (training and eval only) numbers the documents
    in each row; see `document_segments`. `logits_at` [batch] keeps only the
    logits at one position per row ([batch, 1, vocab_size]): a prefill needs just
    each prompt's last one, and all of them would be batch x length x vocab floats.
    """
    cfg = self.config
    normal = nn.initializers.normal(cfg.init_std)
    wte = _param(
      self,
      "wte",
      (padded_vocab_size(cfg), cfg.d_model),
      ("vocab", "embed"),
      normal,
      cfg.param_dtype,
    )
    wpe = _param(
      self, "wpe", (cfg.seq_len, cfg.d_model), ("length", "embed"), normal, cfg.param_dtype
    )
    mask = None
    if jnp.ndim(index) == 1:
      positions = jnp.take(wpe, index[:, None] + jnp.arange(tokens.shape[1]), axis=0)
    elif segment_ids is None:
      positions = jax.lax.dynamic_slice_in_dim(wpe, index, tokens.shape[1], axis=0)[None]
    else:
      same_document = segment_ids[:, :, None] == segment_ids[:, None, :]
      mask = (same_document & jnp.tril(jnp.ones(same_document.shape[1:], bool)))[:, None]
      positions = jnp.take(wpe, document_positions(segment_ids), axis=0)
    x = (jnp.take(wte, tokens, axis=0) + positions).astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(
        Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
      )
    if cfg.scan_layers:
      stack = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=cfg.n_layer,
        unroll=scan_unroll(cfg),
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, new_entries = stack(cfg, deterministic, name="blocks")(x, cache, index, mask)
    else:
      layer_entries = []
      for i in range(cfg.n_layer):
        layer_cache = None if cache is None else jax.tree.map(lambda a, i=i: a[i], cache)
        x, entries = block(cfg, deterministic, name=f"block_{i}")(x, layer_cache, index, mask)
        layer_entries.append(entries)
      new_entries = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *layer_entries)
    if cache is not None:
      cache = jax.tree.map(lambda c, n: _cache_write(c, n, index), cache, new_entries)

    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)
    if cfg.architecture == "gpt2":
      x = _layer_norm(cfg, "ln_f")(x)
    # Task heads read the final hidden state; sown only when applied with mutable=["intermediates"].
    self.sow("intermediates", "hidden", x)
    logits = jnp.einsum("btd,vd->btv", x, wte.astype(cfg.dtype), preferred_element_type=jnp.float32)
    logits = logits[..., : cfg.vocab_size + cfg.special_tokens]
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits, cache


class TaskHead(nn.Module):
  """GPT-1's classifier: dropout, then a linear map of the extract token's final hidden state.

  Zero-initialised, so fine-tuning starts from uniform task predictions and the
  pretrained features rather than a random projection of them.
  """

  config: ml_collections.ConfigDict
  outputs: int

  @nn.compact
  def __call__(self, features: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """float32 scores [..., outputs] of features [..., d_model]."""
    cfg = self.config
    features = nn.Dropout(cfg.dropout, deterministic=deterministic)(features)
    kernel = _param(
      self,
      "kernel",
      (cfg.d_model, self.outputs),
      ("embed", None),
      nn.initializers.zeros,
      cfg.param_dtype,
    )
    bias = _param(self, "bias", (self.outputs,), (None,), nn.initializers.zeros, cfg.param_dtype)
    return jnp.einsum(
      "...d,dc->...c", features.astype(jnp.float32), kernel.astype(jnp.float32)
    ) + bias.astype(jnp.float32)


def scan_unroll(cfg: ml_collections.ConfigDict) -> int:
  """Layers per iteration of the scan over blocks (model.scan_unroll; 0 = by backend).

  Unrolling changes only the compiled program: the parameters stay stacked on the
  'layers' axis, so checkpoints, sharding and numerics are those of the scan. On CPU
  the loop's per-iteration slices and copies of the stacked parameters cost more than
  a longer compile (benchmarks/throughput.py), so 0 unrolls every layer there and
  keeps the loop (one compiled block) on accelerators, where compile time grows with
  depth and the loop costs little.
  """
  if cfg.scan_unroll:
    return min(cfg.scan_unroll, cfg.n_layer)
  return cfg.n_layer if jax.default_backend() == "cpu" else 1


def model_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model group with dtype names resolved, frozen so modules can hash it."""
  resolved = model.to_dict()
  resolved["dtype"] = jnp.dtype(model.dtype)
  resolved["param_dtype"] = jnp.dtype(model.param_dtype)
  return ml_collections.FrozenConfigDict(resolved)


def init_cache(cfg: ml_collections.ConfigDict, batch: int, max_len: int) -> Cache:
  """An empty key/value cache for `batch` sequences of up to `max_len` tokens."""
  shape = (cfg.n_layer, batch, max_len, cfg.n_head, cfg.d_model // cfg.n_head)
  return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}


def document_segments(inputs: jax.Array, eos_id: int) -> jax.Array:
  """Document ids [batch, length] for packed rows, counting from 1 in each row.

  An end-of-text input starts a segment: every document is predicted from the
  end-of-text token before it, so that token belongs to the document it opens.
  """
  return jnp.cumsum(inputs == eos_id, axis=1, dtype=jnp.int32) + (inputs[:, :1] != eos_id)


def document_positions(segment_ids: jax.Array) -> jax.Array:
  """Positions [batch, length] restarting at 0 where each segment starts."""
  index = jnp.arange(segment_ids.shape[1])
  starts = jnp.concatenate(
    [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
  )
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
