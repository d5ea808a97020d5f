"""Sequence-length warmup against a constant context on a 2-core CPU, at equal tokens.

One scaling_cpu shape (2 layers, d_model 128: 397K non-embedding parameters, bytes,
batch 16 x 256, Kaplan's LR(N), read from experiments/scaling_cpu.py) trained on the
same 1,048,576 tokens twice: 'constant' at context 256 throughout (256 updates), and
'warmup' with train.seq_len_warmup from 32 tokens over the first quarter of the tokens
in 4 stages (contexts 32, 88, 144, 200, then 256; Li et al. 2022), so it makes more,
shorter updates early. Both evaluate on the same full-length validation sequences.

  python -m gptjax.sweep --config=experiments/seq_len_warmup_cpu.py \
      --workdir=runs/seq_len_warmup_cpu

Compare the members' summary.json: final_eval_loss, wall_s and flops (the warmup
spends fewer attention FLOPs on its short contexts).
"""

import importlib.util
import os

from gptjax.scaling import sizes

TOKENS = 1_048_576


def get_config():
  """scaling_cpu's settings, evaluated only at the end (the comparison is the final loss)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling_cpu.py")
  spec = importlib.util.spec_from_file_location("scaling_cpu", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.train.eval_every = 0  # one eval, at the end
  return c


def get_sweep():
  (overrides,) = sizes.ladder(
    [(2, 128)], get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=TOKENS
  ).values()
  warmup = {
    "train.seq_len_warmup.start": 32,
    "train.seq_len_warmup.tokens": TOKENS // 4,
    "train.seq_len_warmup.stages": 4,
  }
  return {"constant": overrides, "warmup": {**overrides, **warmup}}
