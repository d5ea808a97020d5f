"""Tests for gptjax.optim: which parameters decay, the learning-rate schedule, and
the exact AdamW + clipping update against a numpy reference."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from gptjax import optim
from gptjax.config import base_config
from gptjax.model import GPT, model_config

KERNELS = {"qkv_kernel", "out_kernel", "fc_kernel", "proj_kernel"}
NEVER_DECAYED = {"qkv_bias", "out_bias", "fc_bias", "proj_bias", "scale", "bias"}


def leaf_name(path) -> str:
  return [p.key for p in path if isinstance(p, jax.tree_util.DictKey)][-1]


def model_param_axes(scan_layers: bool) -> dict:
  """The logical axes of a real GPT's parameters: the mask must work on what model.py builds."""
  c = base_config().model
  c.update(
    dict(
      n_layer=2, d_model=32, n_head=4, d_ff=64, vocab_size=100, seq_len=16, scan_layers=scan_layers
    )
  )
  model = GPT(model_config(c))
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  return nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])


def optim_config(**overrides) -> ml_collections.ConfigDict:
  c = base_config().optim
  c.update(overrides)
  return c


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_weight_decay_mask(scan_layers: bool, decay_embeddings: bool) -> None:
  """Decaying biases or LayerNorm gains hurts training (GPT-2/3 practice decays only
  weight matrices); embeddings are decayed only when asked. The mask is the same on the
  boxed tree optax sees at init and on the plain arrays it sees at update."""
  axes = model_param_axes(scan_layers)
  mask_of = optim.weight_decay_mask(axes, decay_embeddings=decay_embeddings)
  params = jax.tree.map(
    lambda spec: np.zeros(len(spec)), axes, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )
  mask = mask_of(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  seen = set()
  for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
    name = leaf_name(path)
    seen.add(name)
    if name in KERNELS:
      assert decayed is True, jax.tree_util.keystr(path)
    elif name in NEVER_DECAYED:
      assert decayed is False, jax.tree_util.keystr(path)
    else:
      assert name in ("wte", "wpe"), jax.tree_util.keystr(path)
      assert decayed is decay_embeddings, jax.tree_util.keystr(path)
  assert seen == KERNELS | NEVER_DECAYED | {"wte", "wpe"}


class _WithNewParameters(nn.Module):
  """A module as a later change might write it: names the old suffix rule never knew."""

  @nn.compact
  def __call__(self, x):
    gate = self.param(
      "gate", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],)
    )
    head = self.param(
      "classifier",
      nn.with_logical_partitioning(nn.initializers.normal(), ("embed", None)),
      (x.shape[-1], 3),
    )
    return (x * gate) @ head


def test_new_parameters_are_decayed_by_structure_not_name() -> None:
  """A new vector (a gate over d_model) is not decayed, a new matrix (a task head) is,
  whatever their names: the rule reads logical axes, and scan's 'layers' axis is not a
  dimension of the weight."""
  boxed = jax.eval_shape(
    _WithNewParameters().init, jax.random.key(0), jax.ShapeDtypeStruct((2, 8), jnp.float32)
  )["params"]
  mask = optim.weight_decay_mask(nn.get_partition_spec(boxed), decay_embeddings=False)
  assert mask(nn.unbox(boxed)) == {"gate": False, "classifier": True}
  assert nn.unbox(mask(boxed)) == {"gate": False, "classifier": True}
  assert optim.decays(("layers", "embed"), decay_embeddings=False) is False
  assert optim.decays(("layers", "embed", "mlp"), decay_embeddings=False) is True


def test_learning_rate_schedule() -> None:
  """Linear warmup, then cosine to exactly lr * min_lr_ratio on the last update: the
  shape every GPT recipe (and the scaling-law runs) assumes. Update s (0-based) gets
  lr * (s + 1) / warmup_steps, so no update is wasted at lr 0 (optim.py's contract)."""
  lr, warmup, total, ratio = 6e-4, 10, 110, 0.1
  sched = optim.learning_rate(optim_config(lr=lr, warmup_steps=warmup, min_lr_ratio=ratio), total)
  values = np.array([float(sched(s)) for s in range(total)])
  assert values[0] > 0.0
  np.testing.assert_allclose(values[:warmup], lr * np.arange(1, warmup + 1) / warmup, rtol=1e-6)
  np.testing.assert_allclose(values[warmup - 1], lr, rtol=1e-6)
  np.testing.assert_allclose(values[warmup], lr, rtol=1e-6)
  np.testing.assert_allclose(values[total - 1], lr * ratio, rtol=1e-6)
  span = total - 1 - warmup  # updates the cosine takes from lr down to lr * ratio
  half = np.arange(span + 1) / span
  cosine = lr * ratio + (lr - lr * ratio) * 0.5 * (1 + np.cos(np.pi * half))
  np.testing.assert_allclose(values[warmup:], cosine, rtol=1e-5)
  assert np.all(np.diff(values[:warmup]) > 0)
  assert np.all(np.diff(values[warmup:]) < 0)
  np.testing.assert_allclose(float(sched(total + 50)), lr * ratio, rtol=1e-6)


def test_schedule_without_warmup_starts_at_peak() -> None:
  """warmup_steps=0 means the very first update runs at the peak learning rate."""
  sched = optim.learning_rate(optim_config(lr=1e-3, warmup_steps=0, min_lr_ratio=0.1), 50)
  np.testing.assert_allclose(float(sched(0)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(sched(49)), 1e-4, rtol=1e-6)


def numpy_adamw(
  params: dict,
  grads_seq: list[dict],
  decayed: dict,
  *,
  lr: float,
  b1: float,
  b2: float,
  eps: float,
  wd: float,
  clip: float,
) -> dict:
  """AdamW (Loshchilov & Hutter) with global-norm clipping, written out in float64."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  nu = {k: np.zeros_like(v) for k, v in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    if clip > 0:
      norm = np.sqrt(sum((v**2).sum() for v in g.values()))
      g = {k: v * min(1.0, clip / norm) for k, v in g.items()}
    for k in p:
      mu[k] = b1 * mu[k] + (1 - b1) * g[k]
      nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
      update = (mu[k] / (1 - b1**t)) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
      p[k] = p[k] - lr * (update + (wd * p[k] if decayed[k] else 0.0))
  return p


def run_optimizer(tx, params: dict, grads_seq: list[dict]) -> dict:
  state = tx.init(params)
  for grads in grads_seq:
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


@pytest.mark.parametrize("warmup_steps", [0, 4])
def test_zero_gradient_step_is_pure_decoupled_decay(warmup_steps: int) -> None:
  """AdamW's decay is decoupled from the gradient: with g = 0 a decayed weight
  shrinks by exactly lr_0*wd*w, where lr_0 = learning_rate(...)(0) is the first
  update's rate, and a bias or LayerNorm scale does not move at all."""
  cfg = optim_config(lr=1e-2, warmup_steps=warmup_steps, weight_decay=0.1, clip_norm=1.0)
  axes = {
    "fc_kernel": PartitionSpec("embed", "mlp"),
    "fc_bias": PartitionSpec("mlp"),
    "scale": PartitionSpec("embed"),
  }
  tx = optim.make(cfg, total_steps=100, param_axes=axes)
  lr_0 = 1e-2 / max(warmup_steps, 1)
  assert float(optim.learning_rate(cfg, 100)(0)) == pytest.approx(lr_0, rel=1e-6)
  params = {
    "fc_kernel": jnp.array([[2.0, -3.0], [0.5, 4.0]]),
    "fc_bias": jnp.array([1.0, -2.0]),
    "scale": jnp.array([1.5, 0.7]),
  }
  zeros = jax.tree.map(jnp.zeros_like, params)
  new = run_optimizer(tx, params, [zeros])
  np.testing.assert_allclose(new["fc_kernel"], params["fc_kernel"] * (1 - lr_0 * 0.1), rtol=1e-6)
  np.testing.assert_array_equal(new["fc_bias"], params["fc_bias"])
  np.testing.assert_array_equal(new["scale"], params["scale"])


@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_update_matches_numpy_adamw_with_clipping(clip_norm: float) -> None:
  """optim.make must be exactly clip-by-global-norm followed by AdamW with the mask.
  Gradients of very different norms make clipping change Adam's moment ratios,
  so a missing, misplaced or per-leaf clip shows up after the second step."""
  cfg = optim_config(
    lr=1e-2,
    warmup_steps=0,
    min_lr_ratio=1.0,
    weight_decay=0.1,
    clip_norm=clip_norm,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
  )
  rng = np.random.default_rng(0)
  params = {
    "qkv_kernel": rng.standard_normal((4, 3)).astype(np.float32),
    "qkv_bias": rng.standard_normal(3).astype(np.float32),
    "wte": rng.standard_normal((5, 4)).astype(np.float32),
  }
  decayed = {"qkv_kernel": True, "qkv_bias": False, "wte": False}
  grads_seq = []
  for scale in (50.0, 0.3, 20.0):
    grads_seq.append(
      {k: (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in params.items()}
    )
  axes = {
    "qkv_kernel": PartitionSpec("embed", "heads"),
    "qkv_bias": PartitionSpec("heads"),
    "wte": PartitionSpec("vocab", "embed"),
  }
  got = run_optimizer(
    optim.make(cfg, total_steps=10, param_axes=axes), jax.tree.map(jnp.asarray, params), grads_seq
  )
  kwargs = dict(lr=1e-2, b1=0.9, b2=0.95, eps=1e-8, wd=0.1)
  expected = numpy_adamw(params, grads_seq, decayed, clip=clip_norm, **kwargs)
  other = numpy_adamw(params, grads_seq, decayed, clip=1.0 - clip_norm, **kwargs)
  for k in params:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The reference itself distinguishes clipped from unclipped, so the test can fail.
  assert max(np.abs(expected[k] - other[k]).max() for k in params) > 1e-3
