"""Size families: from a parameter target (or a layer ladder) to per-member overrides.

A scaling sweep varies N along one shape rule so that loss differences come from
size, not from aspect ratio: d_model = ratio * n_layer (Kaplan et al. 2020 find
loss flat over a wide range of ratios; 64 and 128 are the usual picks), d_head 64
and d_ff = 4 * d_model. N is Kaplan's non-embedding count from `flops.param_counts`.
Each member's peak lr and token budget come from a named rule, so a sweep file
says which convention it follows instead of hand-picking numbers per size.
"""

from __future__ import annotations

import math
import os

import ml_collections

from gptjax import flops, init_from
from gptjax.config import base_config
from gptjax.scaling import runs
from gptjax.scaling.families import (
  GPT2_VOCAB,
  GPT3_CONTEXT,
  GPT3_SIZES,
  interpolate_loglog,
  kaplan_lr,
)

RATIOS = (64, 128)
D_HEAD = 64
LR_RULES = ("gpt3", "kaplan", "constant")
TOKEN_RULES = ("fixed", "ratio", "isoflop")
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal D ~ 20 N


def shape(n_layer: int, ratio: int = 64) -> dict[str, int]:
  """`model.*` overrides of the n_layer member: d_model = ratio * n_layer, d_head 64, d_ff 4x."""
  if ratio not in RATIOS:
    raise ValueError(f"ratio={ratio!r}: unknown aspect ratio; use one of {RATIOS}")
  return free_shape(n_layer, ratio * n_layer)


def free_shape(n_layer: int, d_model: int) -> dict[str, int]:
  """`model.*` overrides of any (n_layer, d_model) with d_head 64 and d_ff 4x.

  For ladders that need finer steps in N than a fixed aspect ratio gives (N grows
  as n_layer^3 along one, so 1 -> 2 layers is 8x); Kaplan et al. 2020 find loss
  nearly flat in the aspect ratio, so mixing ratios costs little. A d_model below
  64 (a model smaller than any 64-wide head allows) gets one head of d_model.
  """
  if not isinstance(n_layer, int) or n_layer < 1:
    raise ValueError(f"n_layer={n_layer!r}: must be an integer >= 1")
  if not isinstance(d_model, int) or d_model < 8 or d_model % min(d_model, D_HEAD):
    raise ValueError(
      f"d_model={d_model!r}: must be a positive multiple of the head size "
      f"{D_HEAD}, or below {D_HEAD} for a single head"
    )
  return {
    "model.n_layer": n_layer,
    "model.d_model": d_model,
    "model.n_head": max(1, d_model // D_HEAD),
    "model.d_ff": 4 * d_model,
  }


def model_config(
  overrides: dict[str, object], base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """`base`'s model group (default: base_config()'s) with the `model.*` overrides applied."""
  model = ml_collections.ConfigDict((base or base_config()).model.to_dict())
  for key, value in overrides.items():
    group, _, name = key.partition(".")
    if group == "model":
      model[name] = value
  return model


def non_embedding_params(
  overrides: dict[str, object], base: ml_collections.ConfigDict | None = None
) -> int:
  """Kaplan's N of a shape given as overrides."""
  return flops.param_counts(model_config(overrides, base))["n_params_non_embedding"]


def shape_for_params(target: float, ratio: int = 64, max_layers: int = 256) -> dict[str, int]:
  """The shape whose N is closest to `target`, measured in log N.

  Log distance, because a sweep spaces sizes geometrically: 2x too big and 2x too
  small are equally far off.
  """
  if target <= 0:
    raise ValueError(f"target={target!r}: a non-embedding parameter count must be > 0")
  candidates = [shape(n, ratio) for n in range(1, max_layers + 1)]
  return min(candidates, key=lambda s: abs(math.log(non_embedding_params(s) / target)))


def _gpt3_table() -> list[tuple[float, float]]:
  """(non-embedding N, peak lr) of GPT-3 Table 2.1, ascending in N."""
  base = base_config()
  base.model.vocab_size, base.model.seq_len = GPT2_VOCAB, GPT3_CONTEXT
  table = []
  for n_layer, d_model, n_head, _, lr, _ in GPT3_SIZES.values():
    n = non_embedding_params(
      {
        "model.n_layer": n_layer,
        "model.d_model": d_model,
        "model.n_head": n_head,
        "model.d_ff": 4 * d_model,
      },
      base,
    )
    table.append((float(n), lr))
  return sorted(table)


def peak_lr(n: float, rule: str, value: float = 0.0) -> float:
  """Peak lr for non-embedding size `n` by `rule`.

  'gpt3': GPT-3 Table 2.1, linear in log N between its sizes and clamped to the end
  rows outside them (the table says nothing about smaller or larger models).
  'kaplan': LR(N) = 0.003239 - 0.0001395 ln N (Kaplan et al. 2020, eq. D.1).
  'constant': `value` for every size.
  """
  if rule == "gpt3":
    table = _gpt3_table()
    if n <= table[0][0]:
      return table[0][1]
    if n >= table[-1][0]:
      return table[-1][1]
    return interpolate_loglog(table, n)
  if rule == "kaplan":
    lr = kaplan_lr(n)
    if lr <= 0:
      raise ValueError(f"lr rule 'kaplan' gives lr={lr:.3g} <= 0 at N={n:.3g}; use 'gpt3' there")
    return lr
  if rule == "constant":
    if value <= 0:
      raise ValueError(f"lr rule 'constant' needs a value > 0, got {value!r}; pass lr_value=1e-3")
    return value
  raise ValueError(f"lr rule {rule!r}: unknown; use one of {', '.join(LR_RULES)}")


def isoflop_tokens(model: ml_collections.ConfigDict, compute: float) -> float:
  """D with D * flops_per_token(model) == compute: the tokens an IsoFLOP budget buys."""
  return compute / flops.flops_per_token(model)


def train_tokens(model: ml_collections.ConfigDict, rule: str, value: float) -> int:
  """Token budget of `model` by `rule`, rounded to whole tokens.

  'fixed': `value` tokens for every size. 'ratio': value * N (20 is Chinchilla's
  compute-optimal ratio). 'isoflop': `value` is the FLOP budget C and D = C / flops_per_token.
  """
  if value <= 0:
    raise ValueError(f"token rule {rule!r} needs a value > 0, got {value!r}")
  if rule == "fixed":
    return round(value)
  if rule == "ratio":
    return round(value * flops.param_counts(model)["n_params_non_embedding"])
  if rule == "isoflop":
    return round(isoflop_tokens(model, value))
  raise ValueError(f"token rule {rule!r}: unknown; use one of {', '.join(TOKEN_RULES)}")


def member(
  shape_overrides: dict[str, int],
  base: ml_collections.ConfigDict,
  *,
  lr_rule: str,
  lr_value: float,
  tokens_rule: str,
  tokens_value: float,
) -> dict[str, object]:
  """One member's overrides: its shape plus the peak lr and tokens its rules give."""
  overrides: dict[str, object] = dict(shape_overrides)
  model = model_config(overrides, base)
  overrides["optim.lr"] = peak_lr(
    flops.param_counts(model)["n_params_non_embedding"], lr_rule, lr_value
  )
  overrides["train.tokens"] = train_tokens(model, tokens_rule, tokens_value)
  return overrides


def _shape_name(overrides: dict[str, object]) -> str:
  return f"l{overrides['model.n_layer']}-d{overrides['model.d_model']}"


def ladder(
  shapes: list[tuple[int, int]],
  base: ml_collections.ConfigDict,
  *,
  lr_rule: str = "gpt3",
  lr_value: float = 0.0,
  tokens_rule: str = "ratio",
  tokens_value: float = CHINCHILLA_TOKENS_PER_PARAM,
) -> dict[str, dict[str, object]]:
  """{member name: overrides} for (n_layer, d_model) shapes; `base` supplies vocab and context.

  Names are 'l{n_layer}-d{d_model}', which are valid TPU VM / SLURM job names.
  """
  members = {}
  for n_layer, d_model in shapes:
    overrides = member(
      free_shape(n_layer, d_model),
      base,
      lr_rule=lr_rule,
      lr_value=lr_value,
      tokens_rule=tokens_rule,
      tokens_value=tokens_value,
    )
    members[_shape_name(overrides)] = overrides
  return members


def family(
  n_layers: list[int], base: ml_collections.ConfigDict, *, ratio: int = 64, **rules
) -> dict[str, dict[str, object]]:
  """`ladder` over depths at one aspect ratio (d_model = ratio * n_layer)."""
  return ladder([(n, shape(n, ratio)["model.d_model"]) for n in n_layers], base, **rules)


def budget_name(compute: float) -> str:
  """'c15e11' for 1.5e12 FLOPs: digits only, so member names stay valid VM and job names."""
  mantissa, exponent = f"{compute:.6e}".split("e")
  digits = mantissa.replace(".", "").rstrip("0") or "0"
  return f"c{digits}e{int(exponent) - (len(digits) - 1)}"


def isoflop_family(
  budgets: dict[float, list[tuple[int, int]]],
  base: ml_collections.ConfigDict,
  *,
  lr_rule: str = "gpt3",
  lr_value: float = 0.0,
) -> dict[str, dict[str, object]]:
  """{member name: overrides} for IsoFLOP profiles (Chinchilla Approach 2).

  `budgets` maps each FLOP budget C to the (n_layer, d_model) shapes trained at it;
  each gets D = C / flops_per_token tokens. Names are '{budget_name(C)}-l{L}-d{d}'.
  """
  members = {}
  for compute, shapes in budgets.items():
    if len(shapes) < 3:
      raise ValueError(
        f"budget {compute:g}: {len(shapes)} shapes; an IsoFLOP parabola needs >= 3 sizes per budget"
      )
    for n_layer, d_model in shapes:
      overrides = member(
        free_shape(n_layer, d_model),
        base,
        lr_rule=lr_rule,
        lr_value=lr_value,
        tokens_rule="isoflop",
        tokens_value=compute,
      )
      members[f"{budget_name(compute)}-{_shape_name(overrides)}"] = overrides
  return members


def family_for_params(
  targets: list[float], base: ml_collections.ConfigDict, **rules
) -> dict[str, dict[str, object]]:
  """`family` over the depths closest to each non-embedding parameter target."""
  ratio = rules.get("ratio", 64)
  n_layers = [shape_for_params(t, ratio)["model.n_layer"] for t in targets]
  if len(set(n_layers)) != len(n_layers):
    raise ValueError(
      f"targets {targets} map to repeated depths {n_layers} at ratio {ratio}; "
      "space the targets further apart"
    )
  return family(n_layers, base, **rules)


def finetune_family(source: str) -> dict[str, dict[str, object]]:
  """One fine-tuning member per completed run of the sweep (or run) directory `source`.

  Each member starts from its run's newest checkpoint (`train.init_from=run:DIR`) with
  that run's model shape, and takes the run's name, so fine-tuned accuracy can be set
  against the pretraining compute of the model it came from (the report does that).
  """
  completed = [r for r in runs.read_sweep(source).runs if r.completed]
  if not completed:
    raise ValueError(f"{source}: no completed runs to fine-tune; finish its sweep first")
  members = {}
  for run in completed:
    spec = f"run:{run.path if '://' in run.path else os.path.abspath(run.path)}"
    model = init_from.source_model(spec)
    members[run.name] = {
      "train.init_from": spec,
      **{f"model.{field}": model[field] for field in init_from.SHAPE_FIELDS},
    }
  return members
