"""Cooldown branches against separate cosine runs, at 3 token budgets of one small size.

One size (2 layers, d_model 64: 99K non-embedding parameters), byte tokens on the
embedded corpus, batch 16 x 128 = 2,048 tokens per update, peak lr by Kaplan's LR(N),
50 warmup updates. Budgets: 1/3, 2/3 and all of 586 updates (1.2M tokens).

- l2-d64-stable: the peak held (optim.schedule='constant') up to the latest branch
  point, checkpointed every 25 updates.
- l2-d64-t{D}: WSD branches of it, decaying linearly to 10% of the peak over the last
  20% of each budget (Hägele et al. 2024), each from the stable checkpoint at its decay
  start rounded down to a multiple of 25.
- l2-d64-cosine-t{D}: the same budgets as separate runs, cosine to 10% (the default).

The branch scheme trains the stable phase once: about 450 + 0.2 x (195 + 391 + 586)
updates against 195 + 391 + 586 for the separate runs. Members run one after another
(a branch waits for its stable run): --parallel=1 on 2 cores.
"""

from gptjax.config import base_config
from gptjax.scaling import cooldown, sizes

SHAPE = (2, 64)
TOKENS = 586 * 16 * 128  # 1,200,128: the largest budget
FRACTIONS = (1 / 3, 2 / 3, 1.0)


def get_config():
  c = base_config()
  c.model.vocab_size = 257  # 256 bytes + EOS
  c.model.seq_len = 128  # 2,048 tokens per update with batch 16
  c.data.tokenizer = "bytes"  # nothing to train
  c.data.eval_sequences = 128  # 16,384 validation tokens per eval
  c.train.batch_size = 16
  c.train.log_every = 25  # steps between metrics rows
  c.train.eval_every = 100  # steps between evals (plus one at the end)
  c.train.checkpoint_every = 100  # the branches' and cosine runs' own cadence
  c.train.num_samples = 0  # no generation at the end
  c.optim.warmup_steps = 50
  return c


def get_sweep():
  size = sizes.ladder(
    [SHAPE], get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=TOKENS
  )
  members = cooldown.branches(size, get_config(), FRACTIONS, every=25)
  for name, overrides in list(members.items()):
    if "train.branch_from" in overrides:
      base, _, budget = name.rpartition("-")
      members[f"{base}-cosine-{budget}"] = {
        **size[base],
        "train.tokens": overrides["train.tokens"],
      }
  return members
