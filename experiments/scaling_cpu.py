"""L(N) on a 2-core CPU: 5 sizes from 50K to 3.2M non-embedding parameters (1.8 decades).

Shapes (n_layer, d_model) = (1, 64), (2, 64), (2, 128), (3, 192), (4, 256): the
d_model = 64 * n_layer ladder plus one 2-layer rung at d_model 64 to fill the 8x
gap between 1 and 2 layers (d_head 64, d_ff 4x). Byte tokenizer (vocab 257, so
the embedding does not dominate the small models), 256-token context, the
embedded corpus, every member on the same 3M tokens (batch 16 x 256 = 4,096
tokens per update, 733 updates), peak lr by Kaplan's LR(N).

Time: flops.flops_per_token x 3M tokens = 1.5e12, 2.7e12, 8.8e12, 2.7e13 and
6.3e13 FLOP, 1.0e14 in all; these sizes run at 4-6e10 FLOP/s on this CPU
(measured: 16K tokens/s for l2-d128), so ~35 min plus ~15 s of startup per member.
Run with --parallel=1: two members would share the same 2 cores.
The large members see fewer than 20 tokens per parameter: this measures L(N) at
D = 3M, not the compute-optimal frontier (experiments/isoflop_cpu.py does that).
"""

from gptjax.config import base_config
from gptjax.scaling import sizes

SHAPES = [(1, 64), (2, 64), (2, 128), (3, 192), (4, 256)]  # N = 50K, 100K, 397K, 1.33M, 3.16M


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
  return sizes.ladder(SHAPES, get_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=3e6)
