"""L(N) on a 2-core CPU: 5 sizes from 50K to 6.2M non-embedding parameters (2.1 decades).

Depths 1-5 at d_model = 64 * n_layer (d_head 64, d_ff 4x), byte tokenizer (vocab 257,
so the embedding does not dominate the small models), 256-token context, the
embedded corpus, every member on the same 3M tokens (batch 16 x 256 = 4,096 tokens
per update, 733 updates), peak lr by Kaplan's LR(N).

Time estimate from flops.flops_per_token and ~1e11 FLOP/s effective on this CPU
(the quickstart's ~3,000 tokens/s at 5M params x ~33M FLOP/token):
  l1-d64    N=50K   0.49M FLOP/token x 3M tokens = 1.5e12 FLOP ->  0.2 min
  l2-d128   N=397K  2.95M                         = 8.8e12      ->  1.5 min
  l3-d192   N=1.3M  9.14M                         = 2.7e13      ->  4.6 min
  l4-d256   N=3.2M  20.8M                         = 6.3e13      -> 10.4 min
  l5-d320   N=6.2M  39.8M                         = 1.2e14      -> 19.9 min
  total 2.2e14 FLOP -> 37 min, leaving ~20 min of the hour for startup, compiles
  and evals. Run with --parallel=1: two members would share the same 2 cores.
The small models are slower than this estimate per FLOP (step overhead), the
large ones see fewer than 20 tokens per parameter: this measures L(N) at D = 3M,
not the compute-optimal frontier.
"""

from gptjax.config import base_config
from gptjax.scaling import sizes


def get_config():
  c = base_config()
  c.model.vocab_size = 257  # 256 bytes + EOS
  c.data.tokenizer = "bytes"  # no tokenizer training; embedding FLOPs stay small
  c.data.eval_sequences = 64  # 16,384 validation tokens per eval
  c.train.batch_size = 16  # 4,096 tokens per update
  c.train.log_every = 25  # steps between metrics rows
  c.train.eval_every = 250  # steps between evals (plus one at the end)
  c.train.checkpoint_every = 250  # steps between checkpoints (plus one at the end)
  c.train.num_samples = 0  # no generation at the end
  c.optim.warmup_steps = 50  # ~7% of 733 updates
  return c


def get_sweep():
  return sizes.family([1, 2, 3, 4, 5], get_config(), lr_rule="kaplan", tokens_rule="fixed",
                      tokens_value=3e6)
