"""Cooldown sweeps: one stable run per size, branched into K cooldowns at K token budgets.

Hägele et al. (2024) find that a warmup-stable-decay run's loss after a short
cooldown matches a cosine run of the same length. So a Chinchilla-style grid over
(N, D) needs one long constant-lr run per size plus one cooldown per budget, not one
full run per (N, D): the stable phase is trained once and shared.

`branches` turns size members (sizes.ladder / family output) into those members:
'{size}-stable' first, then '{size}-t{tokens}' branches that name it as
`train.branch_from='{size}-stable@STEP'`. The sweep runner reads a branch_from whose
directory is another member's name as that member's run directory, and starts the
branch only once it has completed (gptjax/sweep.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from gptjax import branch
from gptjax.config import override, train_steps

STABLE_SUFFIX = "-stable"


def branches(
  members: dict[str, dict[str, object]],
  base: ml_collections.ConfigDict,
  fractions: Sequence[float],
  *,
  every: int,
  decay_fraction: float = 0.2,
  decay_shape: str = "linear",
) -> dict[str, dict[str, object]]:
  """{member name: overrides}: per size member, a stable run and its cooldown branches.

  Each size's budgets are `fractions` of its own train.tokens, rounded to whole updates.
  A budget's branch is a WSD run (`decay_fraction`, `decay_shape`) over that budget; it
  branches from the stable run at its decay start rounded down to a multiple of `every`
  (it then holds the peak for the few updates left before decaying, as the stable run
  would have). The stable run holds the peak (optim.schedule='constant') up to the
  latest branch point, checkpointing every `every` updates and keeping every checkpoint,
  so each branch point is still there when its branch starts.
  """
  if not fractions or any(not 0 < f <= 1 for f in fractions):
    raise ValueError(f"fractions={list(fractions)!r}: give one or more fractions in (0, 1]")
  if not isinstance(every, int) or every < 1:
    raise ValueError(f"every={every!r}: the stable run's checkpoint cadence must be >= 1 update")
  out = {}
  for name, overrides in members.items():
    size = override(base, overrides)
    per_step = size.train.batch_size * size.model.seq_len
    cooled = {}
    for fraction in sorted(fractions):
      steps = max(1, round(fraction * train_steps(size)))
      tokens = steps * per_step
      schedule = {
        "optim.schedule": "wsd",
        "optim.decay_fraction": decay_fraction,
        "optim.decay_shape": decay_shape,
        "train.tokens": tokens,
      }
      point = branch.decay_start(override(size, schedule)) // every * every
      if point < 1:
        raise ValueError(
          f"member {name!r}: the {tokens}-token budget decays from update "
          f"{branch.decay_start(override(size, schedule))}, before the first checkpoint at "
          f"{every}; lower `every` or drop the fraction {fraction}"
        )
      cooled[f"{name}-t{tokens}"] = (point, schedule)
    stable = f"{name}{STABLE_SUFFIX}"
    last = max(point for point, _ in cooled.values())
    out[stable] = {
      **overrides,
      "optim.schedule": "constant",
      "train.tokens": last * per_step,
      "train.checkpoint_every": every,
      "train.keep_checkpoints": last // every + 1,
    }
    for member, (point, schedule) in cooled.items():
      out[member] = {**overrides, **schedule, "train.branch_from": f"{stable}@{point}"}
  return out
