"""The optimizer: AdamW with warmup + cosine decay, weight decay by structure, and clipping.

Gradient accumulation is not an optax wrapper here: train.py sums micro-batch
gradients inside one jitted step, so one optimizer update is one step and the
schedule counts updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import PartitionSpec

_LAYERS = "layers"  # nn.scan's stacking axis: not a dimension of the weight itself
_EMBEDDING_AXES = ("vocab", "length")  # wte is (vocab, embed), wpe is (length, embed)


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


def make(
  optim: ml_collections.ConfigDict, total_steps: int, param_axes: Any
) -> optax.GradientTransformation:
  """The full update rule; the schedule is exposed again via learning_rate().

  `param_axes` (the parameters' logical PartitionSpecs) decides which decay.
  """
  adamw = optax.adamw(
    learning_rate(optim, total_steps),
    b1=optim.b1,
    b2=optim.b2,
    eps=optim.eps,
    weight_decay=optim.weight_decay,
    mask=weight_decay_mask(param_axes, optim.decay_embeddings),
  )
  if optim.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw)
  return adamw
