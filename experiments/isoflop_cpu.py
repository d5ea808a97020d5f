"""IsoFLOP profiles on a 2-core CPU: 3 budgets x 5 sizes (Chinchilla Approach 2).

Budgets 1.5e12, 5e12 and 1.5e13 FLOPs (one decade, counted with
flops.flops_per_token, the MFU convention). Each budget trains 5 sizes from a
ladder of 50K-3.2M non-embedding parameters spaced ~2x apart, the window moving
up one rung per budget so the loss-optimal size stays inside it; each member
gets D = C / flops_per_token(N) tokens. Byte tokenizer, 256-token context, batch
8 x 256 = 2,048 tokens per update, peak lr by Kaplan's LR(N), the embedded corpus
(every member sees well under one epoch of it).

Time estimate at the ~4.5e10 FLOP/s these sizes reach on this CPU (scaling_cpu's
l1 and l2 members): 5 x (1.5e12 + 5e12 + 1.5e13) = 1.1e14 FLOP -> 40 min, plus
~10 s of startup and compile per member. Run with --parallel=1.
"""

from gptjax.config import base_config
from gptjax.scaling import sizes

# (n_layer, d_model) rungs: N = 50K, 100K, 200K, 397K, 793K, 1.33M, 3.16M.
LADDER = [(1, 64), (2, 64), (4, 64), (2, 128), (4, 128), (3, 192), (4, 256)]
BUDGETS = (1.5e12, 5e12, 1.5e13)
SIZES_PER_BUDGET = 5


def get_config():
  c = base_config()
  c.model.vocab_size = 257  # 256 bytes + EOS
  c.data.tokenizer = "bytes"  # no tokenizer training; embedding FLOPs stay small
  c.data.eval_sequences = 256  # 65,536 validation tokens per eval: standard errors ~0.02 nats
  c.train.batch_size = 8  # 2,048 tokens per update: >= 128 updates even for the largest size per budget
  c.train.log_every = 25  # steps between metrics rows
  c.train.eval_every = 250  # steps between evals (plus one at the end)
  c.train.checkpoint_every = 500  # steps between checkpoints (plus one at the end)
  c.train.num_samples = 0  # no generation at the end
  c.optim.warmup_steps = 20  # 16% of the shortest member's 128 updates
  return c


def get_sweep():
  windows = {budget: LADDER[i:i + SIZES_PER_BUDGET] for i, budget in enumerate(BUDGETS)}
  return sizes.isoflop_family(windows, get_config(), lr_rule="kaplan")
