"""The optimizer: AdamW with warmup + cosine decay, a weight-decay mask and clipping.

Gradient accumulation is not an optax wrapper here: train.py sums micro-batch
gradients inside one jitted step, so one optimizer update is one step and the
schedule counts updates.
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import optax

_NEVER_DECAYED = ("bias", "scale")  # LayerNorm scales and every bias
_EMBEDDINGS = ("wte", "wpe")


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to optim.lr, then cosine decay to lr * min_lr_ratio at total_steps."""
  warmup = min(optim.warmup_steps, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)


def weight_decay_mask(params, decay_embeddings: bool):
  # A parameter's kind is read from its leaf name, which model.py keeps uniform.
  """True for weight matrices: not biases or LayerNorm, embeddings only on request."""
  def decayed(path, _) -> bool:
    name = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)][-1]
    if any(name.endswith(s) for s in _NEVER_DECAYED):
      return False
    return decay_embeddings or name not in _EMBEDDINGS
  return jax.tree_util.tree_map_with_path(decayed, params)


def make(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The full update rule; the schedule is exposed again via learning_rate()."""
  adamw = optax.adamw(
      learning_rate(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
      weight_decay=optim.weight_decay,
      mask=functools.partial(weight_decay_mask, decay_embeddings=optim.decay_embeddings))
  if optim.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw)
  return adamw
