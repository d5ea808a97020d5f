"""IsoFLOP profiles on a 2-core CPU: 3 budgets x 5-7 sizes (Chinchilla Approach 2).

Budgets 5e11, 1.5e12 and 5e12 FLOPs (one decade, counted with
flops.flops_per_token, the MFU convention); each member gets
D = C / flops_per_token(N) tokens. Sizes come from a ladder of 12.6K-793K
non-embedding parameters spaced ~2x apart (d_model 32 models have one 32-wide
head). The windows were chosen from a first pass: at 1.5e12 the loss fell
monotonically from 793K down to 50K parameters, so the optimum on this corpus
sits far below Chinchilla's N ~ sqrt(C / 120) and the ladder reaches down to 12.6K.
Byte tokenizer, 256-token context, batch 8 x 256 = 2,048 tokens per update, peak
lr by Kaplan's LR(N), the embedded corpus (11.5M training bytes: the smallest
models at 5e12 see it ~3 times).

Time: 7 x 5e11 + 9 x 1.5e12 + 8 x 5e12 = 5.7e13 FLOP, but the smallest models are
bound by per-step overhead, not FLOPs: a d_model-16 member of the 5e12 budget takes
~36,000 updates of ~30 ms (plus an eval every 250), over half an hour on 2 cores,
while the two smaller budgets' 16 members trained for 68 minutes in all on shared
cores. Run with --parallel=1.
"""

from gptjax.config import base_config
from gptjax.scaling import sizes

# (n_layer, d_model) rungs: N = 3.3K, 6.5K, 12.8K, 25K, 50K, 100K, 200K, 397K, 793K.
LADDER = [(1, 16), (2, 16), (1, 32), (2, 32), (1, 64), (2, 64), (4, 64), (2, 128), (4, 128)]
WINDOWS = {5e11: LADDER[0:7], 1.5e12: LADDER[0:9], 5e12: LADDER[0:8]}


def get_config():
  c = base_config()
  c.model.vocab_size = 257  # 256 bytes + EOS
  c.data.tokenizer = "bytes"  # no tokenizer training; embedding FLOPs stay small
  c.data.eval_sequences = 256  # 65,536 validation tokens per eval: standard errors ~0.02 nats
  c.train.batch_size = (
    8  # 2,048 tokens per update: >= 128 updates even for the largest size per budget
  )
  c.train.log_every = 25  # steps between metrics rows
  c.train.eval_every = 250  # steps between evals (plus one at the end)
  c.train.checkpoint_every = 500  # steps between checkpoints (plus one at the end)
  c.train.num_samples = 0  # no generation at the end
  c.optim.warmup_steps = 20  # 16% of the shortest member's 128 updates
  return c


def get_sweep():
  return sizes.isoflop_family(WINDOWS, get_config(), lr_rule="kaplan")
