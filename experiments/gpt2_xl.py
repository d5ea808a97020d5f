"""GPT-2 xl: the released shape (1,557,611,200 parameters at vocab 50257, context 1024).

Batch arithmetic: train.batch_size=512 sequences x 1024 tokens = 524,288 tokens
per optimizer update (~0.5M, as GPT-3 used at this scale). If a micro-batch of
512 does not fit, raise train.grad_accum_steps: the update stays the same.
On an accelerator add --config.model.dtype=bfloat16 --config.model.pad_vocab_multiple=128.

CPU smoke test:
  python -m gptjax.main --config=experiments/gpt2_xl.py --workdir=W \
      --config.train.steps=3 --config.train.batch_size=2
"""

from gptjax.scaling import families


def get_config():
  c = families.gpt2("xl")  # n_layer, d_model, n_head, d_ff=4*d_model, seq_len=1024, vocab 50257
  c.data.vocab_size = 50257  # sentencepiece vocabulary trained on the corpus, as large as GPT-2's
  c.data.eval_sequences = 32  # 32,768 validation tokens per eval (raise on accelerators)
  c.train.batch_size = 512  # sequences per update (see batch arithmetic above)
  c.train.steps = 20_000  # 10.5B tokens at 524,288 tokens per step
  c.train.log_every = 10  # steps between train rows
  c.train.eval_every = 500  # steps between evals
  c.train.checkpoint_every = 1000  # steps between checkpoints
  c.optim.lr = 2e-4  # peak learning rate (GPT-3 paper, Table 2.1, for this size)
  c.optim.warmup_steps = 700  # ~375M tokens of warmup, as in GPT-3
  return c
