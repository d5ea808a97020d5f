"""A cooldown sweep small enough for a test: one stable run and 2 branches of 1 layer.

Byte tokenizer, 32-token context, batch 8 (one sequence per test device): budgets of
6 and 12 updates (1,536 and 3,072 tokens), each decaying over its last half. The
stable run holds the peak for 6 updates, checkpointed every 2; the branches start
from its steps 4 and 6.
"""

from gptjax.config import base_config
from gptjax.scaling import cooldown, sizes


def get_config():
  c = base_config()
  c.model.seq_len = 32  # short rows keep each step to milliseconds
  c.model.vocab_size = 257  # 256 bytes + EOS
  c.data.tokenizer = "bytes"  # nothing to train
  c.data.eval_sequences = 8  # one eval row per test device
  c.train.batch_size = 8  # one sequence per test device
  c.train.log_every = 1  # every update is a metrics row
  c.train.num_samples = 0  # no generation at the end
  c.optim.warmup_steps = 1
  return c


def get_sweep():
  size = sizes.family([1], get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=3072)
  return cooldown.branches(size, get_config(), (0.5, 1.0), every=2, decay_fraction=0.5)
