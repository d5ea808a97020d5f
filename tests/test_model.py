"""Tests for gptjax.model: the flax GPT against an independent numpy GPT, plus the
properties (causality, scan/remat equivalence, cached decoding, init, dtypes,
dropout, logical axes) that training and generation silently rely on."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gptjax.config import base_config
from gptjax.model import GPT, document_positions, document_segments, init_cache, model_config

Params = dict

VOCAB = 100
SEQ_LEN = 16
LOGICAL_AXES = {"batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers", None}
BLOCK_KERNELS = ("qkv_kernel", "out_kernel", "fc_kernel", "proj_kernel")


def tiny_model(**overrides) -> GPT:
  """A 2-layer, d_model 32 GPT built from base_config() with `overrides` applied."""
  c = base_config().model
  c.update(dict(n_layer=2, d_model=32, n_head=4, d_ff=128, vocab_size=VOCAB, seq_len=SEQ_LEN))
  c.update(overrides)
  return GPT(model_config(c))


def init_params(model: GPT, seed: int = 0) -> Params:
  """The model's real initialisation (slow to compile on CPU: used only where init matters)."""
  tokens = jnp.zeros((1, model.config.seq_len), jnp.int32)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), tokens)["params"])


def boxed_shapes(model: GPT) -> Params:
  """The boxed parameter tree as ShapeDtypeStructs: structure, shapes and axis names, no compile."""
  tokens = jax.ShapeDtypeStruct((1, model.config.seq_len), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]


def random_params(model: GPT, seed: int = 1) -> Params:
  """Random values in the model's own parameter layout (see randomize)."""
  return randomize(nn.unbox(boxed_shapes(model)), seed)


@functools.partial(jax.jit, static_argnums=0)
def forward(model: GPT, params: Params, tokens: jax.Array) -> jax.Array:
  """Deterministic logits; jitted with the model static so equal configs share a compile."""
  return model.apply({"params": params}, tokens, deterministic=True)[0]


def leaf_name(path) -> str:
  return [p.key for p in path if isinstance(p, jax.tree_util.DictKey)][-1]


def randomize(params: Params, seed: int = 1) -> Params:
  """Replaces every leaf with random values: nonzero biases, LayerNorm scales away
  from one and weights large enough that attention is far from uniform, so a
  reference comparison exercises every parameter."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    name = leaf_name(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == "scale":
      value = 1.0 + 0.2 * noise
    elif name.endswith("bias"):
      value = 0.1 * noise
    else:
      value = 0.3 * noise
    out.append(jnp.asarray(value, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def random_tokens(batch: int = 2, length: int = SEQ_LEN, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


def layer_params(params: Params, scan_layers: bool, i: int) -> Params:
  if scan_layers:
    return jax.tree.map(lambda a: a[i], params["blocks"])
  return params[f"block_{i}"]


def stack_layers(params: Params, n_layer: int) -> Params:
  """The non-scan tree rearranged into the scan layout: block_i leaves stacked under 'blocks'."""
  out = {k: v for k, v in params.items() if not k.startswith("block_")}
  out["blocks"] = jax.tree.map(
    lambda *a: np.stack(a), *[params[f"block_{i}"] for i in range(n_layer)]
  )
  return out


# ---------------------------------------------------------------- numpy reference


def np_layer_norm(x: np.ndarray, p: Params) -> np.ndarray:
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_gelu(x: np.ndarray) -> np.ndarray:
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_attention(x: np.ndarray, p: Params, n_head: int) -> np.ndarray:
  b, t, d = x.shape
  hd = d // n_head
  w = p["qkv_kernel"].reshape(d, 3, d)  # [d, (q|k|v), heads*head_dim]
  bias = p["qkv_bias"].reshape(3, d)
  q, k, v = (
    (x @ w[:, s] + bias[s]).reshape(b, t, n_head, hd).transpose(0, 2, 1, 3) for s in range(3)
  )
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
  scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  heads = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
  return heads @ p["out_kernel"].reshape(d, d) + p["out_bias"]


def np_mlp(x: np.ndarray, p: Params) -> np.ndarray:
  return np_gelu(x @ p["fc_kernel"] + p["fc_bias"]) @ p["proj_kernel"] + p["proj_bias"]


def np_gpt(params: Params, cfg: ml_collections.ConfigDict, tokens: np.ndarray) -> np.ndarray:
  """GPT-1/GPT-2 forward in float64 numpy, written from the papers, not from model.py."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  t = tokens.shape[1]
  x = p["wte"][tokens] + p["wpe"][:t][None]
  for i in range(cfg.n_layer):
    lp = layer_params(p, cfg.scan_layers, i)
    if cfg.architecture == "gpt2":
      x = x + np_attention(np_layer_norm(x, lp["ln_1"]), lp["attn"], cfg.n_head)
      x = x + np_mlp(np_layer_norm(x, lp["ln_2"]), lp["mlp"])
    else:
      x = np_layer_norm(x + np_attention(x, lp["attn"], cfg.n_head), lp["ln_1"])
      x = np_layer_norm(x + np_mlp(x, lp["mlp"]), lp["ln_2"])
  if cfg.architecture == "gpt2":
    x = np_layer_norm(x, p["ln_f"])
  return x @ p["wte"][: cfg.vocab_size].T


# ---------------------------------------------------------------- helpers for loss/grad


def loss_fn(model: GPT):
  def loss(params: Params, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    logits, _ = model.apply({"params": params}, tokens, deterministic=True)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()

  return loss


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(model: GPT, params: Params, tokens: jax.Array, targets: jax.Array):
  return jax.value_and_grad(loss_fn(model))(params, tokens, targets)


def value_and_grad(model: GPT, params: Params) -> tuple[jax.Array, Params]:
  return _value_and_grad(model, params, random_tokens(seed=3), random_tokens(seed=4))


def assert_trees_close(a: Params, b: Params, rtol: float, atol: float) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
    )


def primitive_names(jaxpr) -> set[str]:
  """Every primitive in a jaxpr, recursing into scan/remat/pjit sub-jaxprs."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns"):
          names |= primitive_names(sub)
        elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
          names |= primitive_names(sub.jaxpr)
  return names


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(
  "architecture,pad_vocab_multiple,scan_layers,attention_impl",
  [
    ("gpt2", 1, True, "blocks"),
    ("gpt1", 1, True, "blocks"),
    ("gpt2", 128, False, "blocks"),
    ("gpt1", 128, True, "blocks"),
    ("gpt2", 1, True, "xla"),
  ],
)
def test_logits_match_numpy_reference(
  architecture: str, pad_vocab_multiple: int, scan_layers: bool, attention_impl: str
) -> None:
  """The flax model must compute exactly GPT as published (pre-LN GPT-2, post-LN
  GPT-1, tied head); an independent float64 implementation catches wrong residual
  wiring, LN placement, attention scaling, head layout or a leaked padded vocab row."""
  model = tiny_model(
    architecture=architecture,
    pad_vocab_multiple=pad_vocab_multiple,
    scan_layers=scan_layers,
    attention_impl=attention_impl,
  )
  params = random_params(model)
  if pad_vocab_multiple > 1:
    assert params["wte"].shape[0] == 128
  assert ("ln_f" in params) == (architecture == "gpt2")
  tokens = random_tokens()
  logits = forward(model, params, tokens)
  assert logits.shape == (2, SEQ_LEN, VOCAB) and logits.dtype == jnp.float32
  expected = np_gpt(params, model.config, np.asarray(tokens))
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_causality_by_gradient(scan_layers: bool) -> None:
  """Position t must not see position j > t: the Jacobian of logits[t] with respect
  to wpe[j] (which only enters at position j) is exactly zero above the diagonal,
  and nonzero on and below it (proof the test can see a dependence at all)."""
  model = tiny_model(scan_layers=scan_layers)
  params = random_params(model)
  tokens = random_tokens(batch=1)
  weights = jnp.asarray(np.random.default_rng(5).standard_normal(VOCAB), jnp.float32)

  def per_position(wpe: jax.Array) -> jax.Array:
    logits, _ = model.apply({"params": {**params, "wpe": wpe}}, tokens, deterministic=True)
    return logits[0] @ weights  # [T]

  jac = np.asarray(jax.jit(jax.jacrev(per_position))(params["wpe"]))  # [T, T, d]
  strength = np.abs(jac).sum(-1)  # [t, j]
  future = np.triu(np.ones((SEQ_LEN, SEQ_LEN), bool), k=1)
  assert np.all(strength[future] == 0.0)
  assert np.all(strength[~future] > 0.0)


@pytest.mark.slow
def test_scan_layers_matches_unrolled_layers() -> None:
  """nn.scan over blocks is a performance choice; with the same weights it must give
  the same loss and gradients as the unrolled Python loop."""
  loop_model = tiny_model(scan_layers=False)
  scan_model = tiny_model(scan_layers=True)
  loop_params = random_params(loop_model)
  scan_params = stack_layers(loop_params, n_layer=2)

  # The flag is real: the two models' own parameter trees are laid out differently,
  # and the stacked tree is exactly the scan model's layout.
  own_scan = nn.unbox(boxed_shapes(scan_model))
  assert "blocks" in own_scan and "block_0" not in own_scan
  assert "block_0" in loop_params and "block_1" in loop_params and "blocks" not in loop_params
  assert jax.tree.structure(own_scan) == jax.tree.structure(scan_params)
  assert jax.tree.map(np.shape, own_scan) == jax.tree.map(np.shape, scan_params)

  loop_loss, loop_grads = value_and_grad(loop_model, loop_params)
  scan_loss, scan_grads = value_and_grad(scan_model, scan_params)
  np.testing.assert_allclose(scan_loss, loop_loss, rtol=1e-6, atol=1e-6)
  assert_trees_close(scan_grads, stack_layers(loop_grads, n_layer=2), rtol=1e-5, atol=1e-6)

  # Unrolling the scan (model.scan_unroll) keeps the stacked layout and the math; the jaxpr
  # shows the loop really has one iteration per layer, or one in all.
  for unroll, iterations in ((1, 2), (2, 1)):
    model = tiny_model(scan_layers=True, scan_unroll=unroll)
    assert jax.tree.map(np.shape, nn.unbox(boxed_shapes(model))) == jax.tree.map(
      np.shape, scan_params
    )
    loss, grads = value_and_grad(model, scan_params)
    np.testing.assert_allclose(loss, loop_loss, rtol=1e-6, atol=1e-6)
    assert_trees_close(grads, stack_layers(loop_grads, n_layer=2), rtol=1e-5, atol=1e-6)
    jaxpr = jax.make_jaxpr(lambda p, t, m=model: m.apply({"params": p}, t))(
      scan_params, jnp.zeros((1, SEQ_LEN), jnp.int32)
    )
    (scan,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert scan.params["length"] // scan.params["unroll"] == iterations


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("policy", ["dots_with_no_batch_dims_saveable", "nothing_saveable"])
def test_remat_policies_change_memory_not_math(policy: str, scan_layers: bool) -> None:
  """Rematerialisation trades compute for memory and must not change loss or
  gradients; the jaxpr check proves the flag actually inserts a checkpoint."""
  plain = tiny_model(scan_layers=scan_layers)
  remat = tiny_model(scan_layers=scan_layers, remat_policy=policy)
  params = random_params(plain)
  plain_loss, plain_grads = value_and_grad(plain, params)
  remat_loss, remat_grads = value_and_grad(remat, params)
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6, atol=1e-6)
  assert_trees_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-6)

  tokens, targets = random_tokens(seed=3), random_tokens(seed=4)
  plain_prims = primitive_names(
    jax.make_jaxpr(jax.grad(loss_fn(plain)))(params, tokens, targets).jaxpr
  )
  remat_prims = primitive_names(
    jax.make_jaxpr(jax.grad(loss_fn(remat)))(params, tokens, targets).jaxpr
  )
  is_remat = lambda names: any("checkpoint" in n or "remat" in n for n in names)
  assert is_remat(remat_prims), sorted(remat_prims)
  assert not is_remat(plain_prims), sorted(plain_prims)


@pytest.mark.parametrize(
  "architecture,scan_layers", [("gpt2", True), ("gpt2", False), ("gpt1", True)]
)
def test_cached_decoding_equals_full_forward(architecture: str, scan_layers: bool) -> None:
  """Generation runs the model one token at a time through the KV cache; every
  position's logits must equal the full (training) forward pass, both for
  single-token steps and for a multi-token prefill followed by steps."""
  model = tiny_model(architecture=architecture, scan_layers=scan_layers)
  params = random_params(model)
  tokens = random_tokens()
  full = forward(model, params, tokens)

  @jax.jit
  def step(chunk, cache, index):
    return model.apply({"params": params}, chunk, cache=cache, index=index)

  cache = init_cache(model.config, 2, SEQ_LEN)
  stepped = []
  for pos in range(SEQ_LEN):
    logits, cache = step(tokens[:, pos : pos + 1], cache, jnp.int32(pos))
    stepped.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(stepped, 1), full, rtol=1e-5, atol=1e-5)
  assert cache["k"].shape == (2, 2, SEQ_LEN, 4, 8)

  prefill = 5
  cache = init_cache(model.config, 2, SEQ_LEN)
  logits, cache = step(tokens[:, :prefill], cache, jnp.int32(0))
  chunks = [logits]
  for pos in range(prefill, SEQ_LEN):
    logits, cache = step(tokens[:, pos : pos + 1], cache, jnp.int32(pos))
    chunks.append(logits)
  np.testing.assert_allclose(np.concatenate(chunks, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_init_follows_gpt2() -> None:
  """GPT-2's init (N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer),
  zero biases, unit LayerNorm) is what keeps deep stacks trainable at the
  published learning rates."""
  n_layer = 4
  model = tiny_model(
    n_layer=n_layer, d_model=256, n_head=4, d_ff=1024, vocab_size=1000, seq_len=128
  )
  params = init_params(model)
  residual_std = 0.02 / np.sqrt(2 * n_layer)
  checked = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name, value = leaf_name(path), np.asarray(leaf)
    where = jax.tree_util.keystr(path)
    if name == "scale":
      assert np.all(value == 1.0), where
    elif name.endswith("bias"):
      assert np.all(value == 0.0), where
    else:
      expected = residual_std if name in ("out_kernel", "proj_kernel") else 0.02
      for layer in value if name in BLOCK_KERNELS else (value,):  # each scanned layer alone
        assert abs(layer.std() / expected - 1) < 0.05, (where, layer.std(), expected)
        assert abs(layer.mean()) < 0.1 * expected, where
    checked.add(name)
  assert checked >= {"wte", "wpe", "scale", "bias", *BLOCK_KERNELS}
  # nn.scan must split the init rng: identical layers would be a silent waste of depth.
  qkv = np.asarray(params["blocks"]["attn"]["qkv_kernel"])
  assert not np.allclose(qkv[0], qkv[1])


def test_bfloat16_compute_keeps_float32_params_and_logits() -> None:
  """Mixed precision must only change the compute dtype: parameters (and so the
  optimizer state) stay float32, the loss sees float32 logits, and the values are
  close to float32 but really computed in bfloat16."""
  f32 = tiny_model()
  bf16 = tiny_model(dtype="bfloat16")
  params = jax.tree.map(lambda a: 0.1 * a, random_params(bf16))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  tokens = random_tokens()
  logits16 = forward(bf16, params, tokens)
  logits32 = forward(f32, params, tokens)
  assert logits16.dtype == jnp.float32 and logits16.shape == (2, SEQ_LEN, VOCAB)
  scale = float(np.abs(logits32).max())
  diff = float(np.abs(logits16 - logits32).max())
  assert diff < 0.05 * scale, (diff, scale)
  assert diff > 0.0  # bfloat16 really was used
  assert init_cache(bf16.config, 1, 4)["k"].dtype == jnp.bfloat16


@pytest.mark.slow
def test_attention_dropout_path_matches_fused_attention() -> None:
  """Attention dropout needs a hand-written softmax path; at a negligible rate it
  must equal jax.nn.dot_product_attention (the deterministic path), and at rate
  0.5 it must actually drop something."""
  tokens = random_tokens()
  tiny_rate = tiny_model(attn_dropout=1e-7)
  params = random_params(tiny_rate)
  fused = forward(tiny_rate, params, tokens)
  explicit_fn = lambda p, t, key: tiny_rate.apply(
    {"params": p}, t, deterministic=False, rngs={"dropout": key}
  )[0]
  explicit = jax.jit(explicit_fn)(params, tokens, jax.random.key(0))
  np.testing.assert_allclose(explicit, fused, rtol=1e-5, atol=1e-5)
  # The non-deterministic call really went through a dropout (random bits drawn).
  prims = primitive_names(jax.make_jaxpr(explicit_fn)(params, tokens, jax.random.key(0)).jaxpr)
  assert any("random" in p or "threefry" in p for p in prims), sorted(prims)

  half = tiny_model(attn_dropout=0.5)
  dropped = jax.jit(
    lambda p, t, key: half.apply({"params": p}, t, deterministic=False, rngs={"dropout": key})[0]
  )(params, tokens, jax.random.key(0))
  # model.dropout is 0, so only the attention probabilities can have been dropped.
  assert np.all(np.isfinite(np.asarray(dropped)))
  assert np.abs(np.asarray(dropped) - np.asarray(fused)).max() > 1e-2


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_has_logical_axis_names(scan_layers: bool) -> None:
  """Sharding rules map logical names to mesh axes; a parameter without names (or
  with an unknown one) would silently be replicated or fail to shard."""
  model = tiny_model(scan_layers=scan_layers)
  boxed = boxed_shapes(model)
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
  assert leaves and all(is_box(leaf) for _, leaf in leaves)
  specs = nn.get_partition_spec(boxed)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(spec_leaves) == len(leaves)
  for (path, leaf), spec in zip(leaves, spec_leaves):
    where = jax.tree_util.keystr(path)
    names = tuple(spec)
    assert set(names) <= LOGICAL_AXES, where
    assert len(names) == len(leaf.value.shape), where
    in_stack = scan_layers and path[0].key == "blocks"
    assert (names[0] == "layers") == in_stack, where
    assert "layers" not in names[1:], where
  unboxed = nn.unbox(boxed)
  block = unboxed["blocks"] if scan_layers else unboxed["block_0"]
  prefix = ("layers",) if scan_layers else ()
  assert tuple(specs["wte"]) == ("vocab", "embed")
  assert tuple(specs["wpe"]) == ("length", "embed")
  block_specs = specs["blocks"] if scan_layers else specs["block_0"]
  assert tuple(block_specs["attn"]["qkv_kernel"]) == prefix + ("embed", None, "heads", "kv")
  assert tuple(block_specs["attn"]["out_kernel"]) == prefix + ("heads", "kv", "embed")
  assert tuple(block_specs["mlp"]["fc_kernel"]) == prefix + ("embed", "mlp")
  assert tuple(block_specs["mlp"]["proj_kernel"]) == prefix + ("mlp", "embed")
  n_stack = (2,) if scan_layers else ()
  assert block["attn"]["qkv_kernel"].shape == n_stack + (32, 3, 4, 8)


def test_document_segments_and_positions():
  """An end-of-text input opens the document it predicts; ids count from 1 per row."""
  inputs = jnp.array([[7, 8, 1, 5, 6, 1, 1, 9], [3] * 8, [1, 2, 3, 1, 4, 5, 6, 7]])
  segment_ids = document_segments(inputs, eos_id=1)
  assert segment_ids.tolist() == [[1, 1, 2, 2, 2, 3, 4, 4], [1] * 8, [1, 1, 1, 2, 2, 2, 2, 2]]
  assert document_positions(segment_ids).tolist() == [
    [0, 1, 0, 1, 2, 0, 0, 1],
    list(range(8)),
    [0, 1, 2, 0, 1, 2, 3, 4],
  ]


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True, False])
def test_document_mask_makes_packed_documents_independent(scan):
  """With segment ids, each packed document gets exactly the logits it gets alone."""
  model = tiny_model(scan_layers=scan)
  params = init_params(model)
  eos = 1
  first, second = jnp.array([[eos, 5, 9, 4, 7]]), jnp.array([[eos, 3, 8]])
  packed = jnp.concatenate([first, second], axis=1)
  logits, _ = model.apply({"params": params}, packed, segment_ids=document_segments(packed, eos))
  alone_first, _ = model.apply({"params": params}, first)
  alone_second, _ = model.apply({"params": params}, second)
  np.testing.assert_allclose(logits[:, :5], alone_first, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[:, 5:], alone_second, atol=1e-5, rtol=1e-5)
  unmasked, _ = model.apply({"params": params}, packed)
  assert not np.allclose(unmasked[:, 5:], alone_second, atol=1e-3)  # without it they interact
