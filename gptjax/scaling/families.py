"""Published GPT shapes and training settings, as config overrides.

The numbers are facts from the GPT-2 release (Radford et al., 2019) and Table 2.1
of the GPT-3 paper (Brown et al., 2020); experiment files pick one entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_collections

from gptjax.config import base_config

GPT2_VOCAB = 50257  # GPT-2's byte-level BPE, also used by GPT-3


# name: (n_layer, d_model, n_head, peak lr); the lr is GPT-3 Table 2.1's for the nearest size.
GPT2_SIZES = {
  "small": (12, 768, 12, 6e-4),
  "medium": (24, 1024, 16, 3e-4),
  "large": (36, 1280, 20, 2.5e-4),
  "xl": (48, 1600, 25, 2e-4),
}

# name: (n_layer, d_model, n_head, batch in sequences of 2048, peak lr, paper's n_params)
# d_head is d_model / n_head: 64, 64, 96, 128, 80, 128, 128, 128 as in the paper.
# The paper's batch sizes 0.5M, 1M, 2M and 3.2M tokens are read as 256, 512, 1024 and 1536
# sequences (524,288 / 1,048,576 / 2,097,152 / 3,145,728 tokens), as Megatron-LM does.
# Two entries of the table are inconsistent and are fixed the way Megatron-LM does:
# 13B lists d_model 5140, which 40 heads do not divide, so 5120 is used; 1.3B lists
# 24 heads of d_head 128 on d_model 2048 (24 * 128 = 3072), so it keeps d_head 128
# with 16 heads, which also keeps the paper's 1.3B parameter count.
GPT3_SIZES = {
  "125m": (12, 768, 12, 256, 6.0e-4, 125e6),
  "350m": (24, 1024, 16, 256, 3.0e-4, 350e6),
  "760m": (24, 1536, 16, 256, 2.5e-4, 760e6),
  "1.3b": (24, 2048, 16, 512, 2.0e-4, 1.3e9),
  "2.7b": (32, 2560, 32, 512, 1.6e-4, 2.7e9),
  "6.7b": (32, 4096, 32, 1024, 1.2e-4, 6.7e9),
  "13b": (40, 5120, 40, 1024, 1.0e-4, 13.0e9),
  "175b": (96, 12288, 96, 1536, 0.6e-4, 175.0e9),
}
GPT3_CONTEXT = 2048
GPT3_TRAIN_TOKENS = 300e9  # every GPT-3 model saw 300B tokens
GPT3_WARMUP_TOKENS = 375_000_000  # linear warmup over the first 375M tokens
GPT3_DECAY_TOKENS = 260_000_000_000  # cosine decay to 10% of the peak at 260B tokens, flat after
# The batch ramp: linear from 32k tokens to the full batch "over the first 4-12 billion
# tokens of training, depending on the model size". The paper gives only that range; we
# read it as log-linear in parameters, 4B at 125M to 12B at 175B.
GPT3_RAMP_START_TOKENS = 32_768  # 16 sequences of 2048: also the micro-batch under the ramp
GPT3_RAMP_TOKENS = (4e9, 12e9)
GPT3_RAMP_STAGES = 8
# Kaplan et al. 2020 (eq. D.1): lr(N) ~ KAPLAN_LR[0] - KAPLAN_LR[1] * ln N, which reaches 0 at
# N = exp(KAPLAN_LR[0] / KAPLAN_LR[1]) ~ 1.2e10 and is negative past it.
KAPLAN_LR = (0.003239, 0.0001395)
KAPLAN_LR_ZERO = math.exp(KAPLAN_LR[0] / KAPLAN_LR[1])


def interpolate_loglog(table: Sequence[tuple[float, float]], n: float) -> float:
  """y at `n` on the (n, y) rows of `table` (ascending in n), linear in log n and log y
  between neighbouring rows: exact at the rows, and monotone where the rows are.
  `n` must lie within the table."""
  exact = dict(table)
  if n in exact:  # exp(log(y)) can miss y by an ulp
    return exact[n]
  for (n0, y0), (n1, y1) in zip(table, table[1:]):
    if n0 < n < n1:
      t = math.log(n / n0) / math.log(n1 / n0)
      return math.exp((1 - t) * math.log(y0) + t * math.log(y1))
  raise ValueError(f"n={n:.4g}: outside the table's {table[0][0]:.4g}..{table[-1][0]:.4g}")


def kaplan_lr(n: float) -> float:
  """Kaplan et al.'s peak learning rate for N parameters (negative past KAPLAN_LR_ZERO)."""
  return KAPLAN_LR[0] - KAPLAN_LR[1] * math.log(n)


def lr_for_params(n_params: float) -> float:
  """Peak learning rate for a model of `n_params` parameters, from GPT-3's Table 2.1.

  Between the table's rows (the paper's parameter counts, 125M to 175B) it interpolates
  log-log, so it is exact at each row and falls monotonically between them. Below 125M
  it follows the shape of Kaplan et al.'s lr(N) = 0.003239 - 0.0001395 ln N, scaled to
  meet the 125M row (6e-4): continuous, still monotone, and positive for every N there,
  since Kaplan's formula is positive below about 1.2e10. Above 175B there is nothing to
  follow: the formula turned negative at 1.2e10, well inside the table, so it raises
  ValueError rather than invent a rate.
  """
  table = sorted((row[5], row[4]) for row in GPT3_SIZES.values())
  if not n_params > 0:
    raise ValueError(f"n_params={n_params!r}: a parameter count must be > 0")
  if n_params > table[-1][0]:
    raise ValueError(
      f"n_params={n_params:.3g}: above GPT-3's largest model (175B), where Kaplan's lr(N) "
      f"is negative (it crosses 0 at {KAPLAN_LR_ZERO:.3g}); choose the learning rate by a sweep"
    )
  if n_params < table[0][0]:
    return table[0][1] * kaplan_lr(n_params) / kaplan_lr(table[0][0])
  return interpolate_loglog(table, n_params)


def _shape(
  c: ml_collections.ConfigDict, n_layer: int, d_model: int, n_head: int, seq_len: int
) -> None:
  c.model.n_layer, c.model.d_model, c.model.n_head = n_layer, d_model, n_head
  c.model.d_ff = 4 * d_model
  c.model.seq_len = seq_len
  c.model.vocab_size = GPT2_VOCAB


def gpt2(size: str) -> ml_collections.ConfigDict:
  """A GPT-2 shape (1024 context, vocab 50257) with GPT-3-style training settings.

  Batch arithmetic: 512 sequences x 1024 tokens = 524,288 tokens per update (~0.5M,
  as GPT-3 used at these sizes); 20,000 updates = 10.5B tokens; 700 warmup updates
  = ~375M tokens, GPT-3's warmup. If 512 sequences do not fit, raise
  train.grad_accum_steps: the update stays the same. On an accelerator add
  --config.model.dtype=bfloat16 --config.model.pad_vocab_multiple=128.
  """
  if size not in GPT2_SIZES:
    raise ValueError(f"GPT-2 size {size!r}: unknown; use one of {', '.join(GPT2_SIZES)}")
  n_layer, d_model, n_head, lr = GPT2_SIZES[size]
  c = base_config()
  _shape(c, n_layer, d_model, n_head, seq_len=1024)
  c.data.vocab_size = GPT2_VOCAB  # a corpus tokenizer as large as GPT-2's
  c.data.eval_sequences = 32  # 32,768 validation tokens per eval (raise on accelerators)
  c.train.batch_size = 512
  c.train.steps = 20_000
  c.train.log_every = 10
  c.train.eval_every = 500
  c.train.checkpoint_every = 1000
  c.optim.lr = lr
  c.optim.warmup_steps = 700
  return c


def gpt3(size: str, ramp: bool = False) -> ml_collections.ConfigDict:
  """A GPT-3 Table 2.1 model: shape, context 2048, batch and peak lr from the paper;
  with `ramp`, its batch-size ramp (micro-batches of the ramp's 16-sequence start)."""
  key = size.lower()
  if key not in GPT3_SIZES:
    raise ValueError(f"GPT-3 size {size!r}: unknown; use one of {', '.join(GPT3_SIZES)}")
  n_layer, d_model, n_head, batch_size, lr, _ = GPT3_SIZES[key]
  c = base_config()
  _shape(c, n_layer, d_model, n_head, seq_len=GPT3_CONTEXT)
  c.train.batch_size = batch_size
  c.train.steps = 0
  c.train.tokens = int(GPT3_TRAIN_TOKENS)
  c.optim.lr = lr
  c.optim.warmup_tokens = GPT3_WARMUP_TOKENS
  c.optim.decay_tokens = GPT3_DECAY_TOKENS
  c.optim.min_lr_ratio = 0.1
  if ramp:
    params = GPT3_SIZES[key][-1]
    low, high = GPT3_SIZES["125m"][-1], GPT3_SIZES["175b"][-1]
    fraction = math.log(params / low) / math.log(high / low)
    start, end = GPT3_RAMP_TOKENS
    c.train.batch_ramp.start_tokens = GPT3_RAMP_START_TOKENS
    c.train.batch_ramp.tokens = round(start * (end / start) ** fraction)
    c.train.batch_ramp.stages = GPT3_RAMP_STAGES
    c.train.grad_accum_steps = batch_size * GPT3_CONTEXT // GPT3_RAMP_START_TOKENS
  return c
