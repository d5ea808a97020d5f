"""The README's first command: a 5M-parameter GPT-2-style model on the embedded corpus.

Finishes in under 10 minutes on a 2-core laptop CPU, dataset preparation and
tokenizer training included. Batch arithmetic: 16 sequences x 256 tokens = 4,096
tokens per update; 250 updates = 1.02M tokens, about a third of an epoch of the
Python standard library's source at vocab 8192.
"""

from gptjax.config import base_config


def get_config():
  c = base_config()  # 4 layers, d_model 256, 4 heads, d_ff 1024, seq_len 256, vocab 8192
  c.train.steps = 250  # optimizer updates
  c.train.log_every = 25  # steps between console lines
  c.train.eval_every = 125  # steps between evals (plus one at the end)
  c.train.checkpoint_every = 125  # steps between checkpoints (plus one at the end)
  c.optim.lr = 2e-3  # peak learning rate: small models tolerate a high one
  c.optim.warmup_steps = 25  # ~10% of the run
  return c
