"""GPT-3 family (Brown et al., 2020, Table 2.1): one of 125m, 350m, 760m, 1.3b, 2.7b, 6.7b, 13b, 175b.

  python -m gptjax.main --config=experiments/gpt3.py:1.3b --workdir=W
  python -m gptjax.main --config=experiments/gpt3.py:1.3b,ramp --workdir=W

Each size takes the paper's n_layer, d_model, n_head (d_head = d_model/n_head),
context 2048, batch size in tokens and peak learning rate. Batch arithmetic:
the paper's 0.5M/1M/2M/3.2M-token batches are 256/512/1024/1536 sequences of 2048
(as Megatron-LM reads them), e.g. 1.3b: 512 x 2048 = 1,048,576 tokens per update;
train.steps follows from train.tokens = 300B. The learning rate warms up over 375M
tokens and decays (cosine) to 10% of the peak at 260B tokens, flat after that
(optim.warmup_tokens, optim.decay_tokens). With ',ramp' the batch grows from 32k
tokens to the full batch in 8 stages over 4B (125m) to 12B (175b) tokens
(train.batch_ramp; the paper gives only the 4-12B range), with 16-sequence
micro-batches; the learning rate then follows tokens seen. Difference from the
paper: dense attention in every layer (GPT-3 alternated dense and locally banded
sparse layers).
"""

from gptjax.scaling import families


def get_config(arg: str = "125m"):
  size, _, option = arg.partition(",")
  if option not in ("", "ramp"):
    raise ValueError(
      f"--config=experiments/gpt3.py:{arg}: unknown option {option!r}; use SIZE or SIZE,ramp"
    )
  c = families.gpt3(
    size, ramp=option == "ramp"
  )  # shape, context, batch, lr, tokens and warmup from the paper
  c.data.vocab_size = 50257  # sentencepiece vocabulary trained on the corpus, as large as GPT-3's
  c.data.eval_sequences = 64  # 131,072 validation tokens per eval
  c.model.dtype = "bfloat16"  # GPT-3 sizes are meant for accelerators
  c.model.pad_vocab_multiple = 128  # 50257 -> 50304 embedding rows for aligned matmuls
  c.model.remat_policy = "dots_with_no_batch_dims_saveable"  # trade compute for activation memory
  c.train.log_every = 10  # steps between train rows
  c.train.eval_every = 1000  # steps between evals
  c.train.checkpoint_every = 1000  # steps between checkpoints
  return c
