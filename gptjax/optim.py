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
  """The learning rate of update s (0-based).

  Warmup gives update s lr * (s + 1) / warmup_steps, so no update is spent at
  lr 0; cosine (or, with optim.schedule='linear', linear) decay then reaches exactly lr * min_lr_ratio on the last update
  (for runs longer than warmup_steps + 1; shorter ones end at or before the peak).
  """
  warmup = min(optim.warmup_steps, total_steps)
  decay_steps = max(total_steps - 1 - warmup, 1)
  if optim.schedule == "linear":  # GPT-1's fine-tuning decay
    decay = optax.linear_schedule(optim.lr, optim.lr * optim.min_lr_ratio, decay_steps)
  else:
    decay = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.min_lr_ratio)
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(optim.lr / warmup, optim.lr, max(warmup - 1, 1))
  return optax.join_schedules([ramp, decay], [warmup])


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
