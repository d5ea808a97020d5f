"""The optimizer: AdamW with warmup and a decay schedule, weight decay by structure, clipping.

Gradient accumulation is not an optax wrapper here: train.py sums micro-batch
gradients inside one jitted step, so one optimizer update is one step and the
schedule counts updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec

from gptjax import batch_shape
from gptjax.config import train_steps

_LAYERS = "layers"  # nn.scan's stacking axis: not a dimension of the weight itself
_EMBEDDING_AXES = ("vocab", "length")  # wte is (vocab, embed), wpe is (length, embed)


SCHEDULES = ("cosine", "linear", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")


def warmup_steps(optim: ml_collections.ConfigDict, tokens_per_step: int) -> int:
  """Warmup updates: optim.warmup_tokens rounded up to whole updates when set (so the peak
  is where the tokens seen first reach it), else optim.warmup_steps."""
  if optim.warmup_tokens > 0:
    return math.ceil(optim.warmup_tokens / tokens_per_step)
  return optim.warmup_steps


def learning_rate(
  optim: ml_collections.ConfigDict, total_steps: int, tokens_per_step: int
) -> optax.Schedule:
  """The learning rate of update s (0-based).

  Warmup gives update s lr * (s + 1) / warmup, so no update is spent at lr 0. The
  decay then ends at exactly lr * min_lr_ratio on its last update: the run's last
  update, or with optim.decay_tokens the update where the tokens seen first reach
  it, flat after that (GPT-3: 10% at 260B of 300B tokens). 'cosine' and 'linear'
  decay from the peak on; 'wsd' (warmup-stable-decay, Hägele et al. 2024) holds the
  peak and decays over the last optim.decay_fraction of the updates (to the decay's
  end), linearly or as
  1 - sqrt; 'constant' holds the peak. Runs no longer than the warmup end at or
  before the peak.
  """
  warmup = min(warmup_steps(optim, tokens_per_step), total_steps)
  end = math.ceil(optim.decay_tokens / tokens_per_step) if optim.decay_tokens > 0 else total_steps
  floor = optim.lr * optim.min_lr_ratio
  if optim.schedule == "constant":
    phases = [optax.constant_schedule(optim.lr)]
  elif optim.schedule == "wsd":
    length = min(round(optim.decay_fraction * end), end - warmup)
    phases = [optax.constant_schedule(optim.lr)]
    if length == 1:  # the decay's one update is its last: at the floor
      phases.append(optax.constant_schedule(floor))
    elif length:
      power = 0.5 if optim.decay_shape == "1-sqrt" else 1.0
      phases.append(
        lambda s: optim.lr - (optim.lr - floor) * (jnp.clip(s / (length - 1), 0.0, 1.0) ** power)
      )
    boundaries = [end - length - warmup] if length else []
    phases = [optax.join_schedules(phases, boundaries)] if boundaries else phases
  elif end - 1 - warmup <= 0:  # a decay of one update (or none): that update is the floor
    phases = [optax.constant_schedule(floor)]
  elif optim.schedule == "linear":  # GPT-1's fine-tuning decay
    phases = [optax.linear_schedule(optim.lr, floor, end - 1 - warmup)]
  else:
    phases = [optax.cosine_decay_schedule(optim.lr, end - 1 - warmup, optim.min_lr_ratio)]
  if warmup == 0:
    return phases[0]
  ramp = optax.linear_schedule(optim.lr / warmup, optim.lr, max(warmup - 1, 1))
  return optax.join_schedules([ramp, phases[0]], [warmup])


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate of a run's updates: learning_rate with the run's length and batch.

  Under a batch ramp or a sequence-length warmup the learning rate is a function of
  tokens seen, not of updates: update s is placed at the fractional full-batch update
  its tokens reach, tokens_after(s) / full_batch_tokens - 1 (an integer s for a
  constant shape), so warmup, decay and the run's end fall where the tokens seen reach
  them, whatever the early batches were: the peak is the first update whose tokens
  seen reach optim.warmup_tokens, held until the decay starts (at most one full batch
  later). Tokens are counted in units of the greatest common divisor of every stage's
  tokens per update, which keeps the int32 arithmetic exact far past 2**31 tokens.
  """
  tc = config.train
  stages = batch_shape.table(tc, config.model.seq_len)
  full = tc.batch_size * config.model.seq_len  # tokens per full-batch update
  total = train_steps(config)
  if len(stages) == 1:
    return learning_rate(config.optim, total, full)
  horizon = math.ceil(batch_shape.tokens_before(stages, total) / full)
  base = learning_rate(config.optim, horizon, full)
  warmup = min(warmup_steps(config.optim, full), horizon)  # where the decay starts
  if config.optim.warmup_tokens > 0:  # the peak: where tokens seen first reach warmup_tokens
    peak = min(config.optim.warmup_tokens / full, warmup)
  else:
    peak = warmup
  unit = math.gcd(full, *(s.tokens_per_update for s in stages))
  first_steps = jnp.array([s.first_step for s in stages])
  first_units = jnp.array([s.first_token // unit for s in stages])
  units_per_update = jnp.array([s.tokens_per_update // unit for s in stages])
  full_units = full // unit

  def lr(step: jax.Array) -> jax.Array:
    k = jnp.searchsorted(first_steps, step, side="right") - 1
    after = first_units[k] + (step - first_steps[k] + 1) * units_per_update[k]
    v = (after // full_units - 1) + (after % full_units) / full_units  # exact in int32 units
    if warmup == 0:
      return base(v)
    rising = config.optim.lr * (v + 1) / peak
    return jnp.where(v + 1 < peak, rising, jnp.where(v < warmup, config.optim.lr, base(v)))

  return lr


def decays(axes: Sequence[str | None], decay_embeddings: bool) -> bool:
  """Whether a parameter with these logical axes gets weight decay.

  Decided by structure, not by name, so a parameter added later is classified by
  what it is: a weight maps to or from the residual stream, so it has the 'embed'
  axis and at least one other dimension (the scan's 'layers' axis not counted). That
  is every kernel, task heads included. Biases and LayerNorm parameters are vectors
  over one feature axis, or have no 'embed' axis at all (qkv_bias is [3, heads, kv]):
  GPT-2/3 practice leaves them undecayed. Embedding tables decay only on request.
  """
  dims = [a for a in axes if a != _LAYERS]
  if any(a in _EMBEDDING_AXES for a in dims):
    return decay_embeddings
  return "embed" in dims and len(dims) >= 2


def weight_decay_mask(param_axes: Any, decay_embeddings: bool) -> Callable[[Any], Any]:
  """optax's mask for a parameter tree whose logical axes are `param_axes`.

  `param_axes` is `nn.get_partition_spec` of the (abstract) parameters. optax calls
  the mask on boxed parameters at init and on plain arrays at update, so the axes
  are looked up by the parameter's dict path, which both share.
  """
  by_path = {
    _dict_path(path): tuple(spec)
    for path, spec in jax.tree_util.tree_flatten_with_path(
      param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )[0]
  }

  def mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
      lambda path, _: decays(by_path[_dict_path(path)], decay_embeddings), params
    )

  return mask


def _dict_path(path: tuple[Any, ...]) -> tuple[str, ...]:
  return tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))


def make(config: ml_collections.ConfigDict, param_axes: Any) -> optax.GradientTransformation:
  """The full update rule of a run; the schedule is exposed again via schedule().

  `param_axes` (the parameters' logical PartitionSpecs) decides which decay.
  """
  optim = config.optim
  adamw = optax.adamw(
    schedule(config),
    b1=optim.b1,
    b2=optim.b2,
    eps=optim.eps,
    weight_decay=optim.weight_decay,
    mask=weight_decay_mask(param_axes, optim.decay_embeddings),
  )
  if optim.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw)
  return adamw
