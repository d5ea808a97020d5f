"""The GPT-3 family as a compute-optimal ladder for TPU pods: 125M to 6.7B parameters.

Each member is a GPT-3 Table 2.1 model (shape, context 2048, batch, peak lr,
warmup over 375M tokens; see experiments/gpt3.py) trained on 20 tokens per
non-embedding parameter (Chinchilla's compute-optimal ratio) instead of GPT-3's
300B, so the sweep traces the compute frontier rather than one data budget:
125M -> 1.7B tokens, 6.7B -> 129B tokens. Every member shards its state fully
(fsdp over all devices), which fits the whole ladder on a v4-32 or larger.

Plan it here before spending anything, member by member (fake CPU devices):
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=16 \\
  python -m gptjax.sweep --config=experiments/gpt3_ladder.py --workdir=/tmp/ladder --launcher=print
then append --config.train.dry_run=True to a printed command. The ladder needs a
tokenizer trained on a real corpus: set data.source (e.g. c4/en:3.1.0) and data.data_dir.
"""

from gptjax import flops
from gptjax.scaling import families, sizes

SIZES = ("125m", "350m", "760m", "1.3b", "2.7b", "6.7b")
TOKENS_PER_PARAM = sizes.CHINCHILLA_TOKENS_PER_PARAM  # D = 20 N, N non-embedding


def get_config():
  c = families.gpt3(SIZES[0])
  c.data.vocab_size = 50257  # sentencepiece vocabulary trained on the corpus, as large as GPT-3's
  c.data.eval_sequences = 128  # 262,144 validation tokens per eval
  c.model.dtype = "bfloat16"  # compute in bf16 on the MXUs; parameters stay float32
  c.model.pad_vocab_multiple = 128  # 50257 -> 50304 embedding rows for aligned matmuls
  c.model.remat_policy = "dots_with_no_batch_dims_saveable"  # trade compute for activation memory
  c.mesh.ici.data = 1  # no pure data parallelism within the slice ...
  c.mesh.ici.fsdp = -1  # ... every device holds 1/n of the parameters and optimizer state
  c.train.log_every = 10  # steps between train rows
  c.train.eval_every = 500  # steps between evals
  c.train.checkpoint_every = 500  # steps between checkpoints
  return c


def _member(size: str) -> dict[str, object]:
  c = families.gpt3(size)
  tokens = TOKENS_PER_PARAM * flops.param_counts(c.model)["n_params_non_embedding"]
  return {
    "model.n_layer": c.model.n_layer,
    "model.d_model": c.model.d_model,
    "model.n_head": c.model.n_head,
    "model.d_ff": c.model.d_ff,
    "train.batch_size": c.train.batch_size,
    "optim.lr": c.optim.lr,
    "optim.warmup_steps": c.optim.warmup_steps,
    "train.tokens": round(tokens),
  }


def get_sweep():
  return {f"gpt3-{size.replace('.', 'p')}": _member(size) for size in SIZES}
