"""A 3-member size sweep small enough for a test: 1-3 layers, 3 updates each.

Byte tokenizer (no tokenizer training), 32-token context, batch 8 (one sequence
per test device): 3 updates x 8 x 32 = 768 tokens per member. Shapes and learning
rates come from gptjax.scaling.sizes exactly as in a real sweep.
"""

from gptjax.config import base_config
from gptjax.scaling import sizes


def get_config():
  c = base_config()
  c.model.seq_len = 32  # short rows keep each step to milliseconds
  c.model.vocab_size = 257  # 256 bytes + EOS
  c.data.tokenizer = "bytes"  # nothing to train
  c.data.eval_sequences = 8  # one eval row per test device
  c.train.batch_size = 8  # one sequence per test device
  c.train.log_every = 1  # every update is a metrics row
  c.train.num_samples = 0  # no generation at the end
  c.optim.warmup_steps = 1  # of 3 updates
  return c


def get_sweep():
  return sizes.family(
    [1, 2, 3], get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=3 * 8 * 32
  )
