"""Tests for gptjax.optim: which parameters decay, the learning-rate schedule, and
the exact AdamW + clipping update against a numpy reference."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from gptjax import config, optim
from gptjax.config import base_config
from gptjax.model import GPT, model_config
from gptjax.scaling import families

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


def run_config(optim_group: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """A whole run config with this optim group, `steps` updates long."""
  c = base_config()
  c.optim, c.train.steps, c.train.tokens = optim_group, steps, 0
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
  sched = optim.learning_rate(
    optim_config(lr=lr, warmup_steps=warmup, min_lr_ratio=ratio), total, tokens_per_step=1
  )
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
  sched = optim.learning_rate(optim_config(lr=1e-3, warmup_steps=0, min_lr_ratio=0.1), 50, 1)
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
  tx = optim.make(run_config(cfg, steps=100), param_axes=axes)
  lr_0 = 1e-2 / max(warmup_steps, 1)
  assert float(optim.schedule(run_config(cfg, steps=100))(0)) == pytest.approx(lr_0, rel=1e-6)
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
    optim.make(run_config(cfg, steps=10), param_axes=axes),
    jax.tree.map(jnp.asarray, params),
    grads_seq,
  )
  kwargs = dict(lr=1e-2, b1=0.9, b2=0.95, eps=1e-8, wd=0.1)
  expected = numpy_adamw(params, grads_seq, decayed, clip=clip_norm, **kwargs)
  other = numpy_adamw(params, grads_seq, decayed, clip=1.0 - clip_norm, **kwargs)
  for k in params:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The reference itself distinguishes clipped from unclipped, so the test can fail.
  assert max(np.abs(expected[k] - other[k]).max() for k in params) > 1e-3


def test_wsd_holds_the_peak_then_decays_over_its_fraction() -> None:
  """Warmup-stable-decay: the peak from the end of warmup until the last decay_fraction of
  the updates, then linear or 1 - sqrt to lr * min_lr_ratio on the last update; fraction 0
  is exactly the constant schedule."""
  lr, warmup, total, ratio = 1e-3, 10, 100, 0.1
  for shape, power in (("linear", 1.0), ("1-sqrt", 0.5)):
    c = optim_config(
      lr=lr, warmup_steps=warmup, min_lr_ratio=ratio, schedule="wsd", decay_fraction=0.2
    )
    c.decay_shape = shape
    values = np.array([float(optim.learning_rate(c, total, 1)(s)) for s in range(total + 5)])
    np.testing.assert_allclose(values[:warmup], lr * np.arange(1, warmup + 1) / warmup, rtol=1e-6)
    np.testing.assert_allclose(values[warmup - 1 : 81], lr, rtol=1e-6)  # stable: updates 9..80
    t = np.arange(20) / 19  # 20 decaying updates, 80..99
    np.testing.assert_allclose(values[80:100], lr - (lr - lr * ratio) * t**power, rtol=1e-5)
    np.testing.assert_allclose(values[99:], lr * ratio, rtol=1e-6)  # flat after the end
  wsd0 = optim_config(lr=lr, warmup_steps=warmup, schedule="wsd", decay_fraction=0.0)
  constant = optim_config(lr=lr, warmup_steps=warmup, schedule="constant")
  np.testing.assert_array_equal(
    [float(optim.learning_rate(wsd0, total, 1)(s)) for s in range(total)],
    [float(optim.learning_rate(constant, total, 1)(s)) for s in range(total)],
  )


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_a_decay_one_update_long_ends_at_the_floor(schedule: str) -> None:
  """The decay's last update is at lr * min_lr_ratio even when it is also its first: after
  2 warmup updates, a 3-update run (and wsd's 10% of 10 updates) ends at the floor."""
  lr, ratio = 1e-3, 0.1
  c = optim_config(lr=lr, warmup_steps=2, min_lr_ratio=ratio, schedule=schedule)
  total = 3
  if schedule == "wsd":
    c.decay_fraction, total = 0.1, 10
  values = [float(optim.learning_rate(c, total, 1)(s)) for s in range(total)]
  np.testing.assert_allclose(values[:2], [lr / 2, lr], rtol=1e-6)
  np.testing.assert_allclose(values[-2:], [lr, lr * ratio], rtol=1e-6)


def test_gpt3_125m_schedule_in_tokens() -> None:
  """GPT-3 (Brown et al. 2020): warmup over 375M tokens, cosine to 10% at 260B tokens, flat to
  300B. With 125M's 0.5M-token batch the peak is on the update after which the tokens seen
  first reach 375M, 10% on the one where they first reach 260B, and the same after that."""
  c = families.gpt3("125m")  # the paper's token counts are the family's settings
  assert (c.optim.warmup_tokens, c.optim.decay_tokens) == (375_000_000, 260_000_000_000)
  per_step = c.train.batch_size * c.model.seq_len
  assert per_step == 524_288
  lr = optim.schedule(c)
  peak_at = math.ceil(375e6 / per_step) - 1  # 0-based update
  assert peak_at * per_step < 375e6 <= (peak_at + 1) * per_step
  assert float(lr(peak_at)) == pytest.approx(6e-4, rel=1e-6)
  assert float(lr(peak_at - 1)) < 6e-4 and float(lr(peak_at + 1)) == pytest.approx(6e-4, rel=1e-6)
  floor_at = math.ceil(260e9 / per_step) - 1
  assert floor_at * per_step < 260e9 <= (floor_at + 1) * per_step
  assert float(lr(floor_at)) == pytest.approx(6e-5, rel=1e-5)
  # float32 cannot tell the last few cosine updates from the floor, so the end is pinned
  # 20,000 updates before it, where one update more or less moves the value by 1e-4.
  s, span = floor_at - 20_000, floor_at - (peak_at + 1)
  cosine = 0.5 * (1 + math.cos(math.pi * (s - peak_at - 1) / span))
  assert float(lr(s)) - 6e-5 == pytest.approx(5.4e-4 * cosine, rel=2e-5)
  last = config.train_steps(c) - 1
  assert (last + 1) * per_step >= 300e9 and float(lr(last)) == pytest.approx(6e-5, rel=1e-5)


def test_schedule_settings_are_checked() -> None:
  c = base_config()
  c.optim.update(dict(schedule="step", decay_fraction=1.5, decay_shape="cos", warmup_tokens=-1))
  with pytest.raises(ValueError) as e:
    config.validate(c)
  for field in ("optim.schedule='step'", "optim.decay_fraction=1.5", "optim.decay_shape='cos'"):
    assert field in str(e.value)
  assert "optim.warmup_tokens=-1: must be a token count >= 0" in str(e.value)
