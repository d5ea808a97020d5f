"""Distillation on a 2-core CPU: the quick-start model (5M parameters) teaches a 4x smaller student.

Train the teacher first with the README's quick-start command (runs/quickstart), then

  python -m gptjax.main --config=experiments/distill_cpu.py --workdir=runs/distill_cpu

and the same student from scratch, at the same tokens, for the comparison:

  python -m gptjax.main --config=experiments/distill_cpu.py --workdir=runs/distill_cpu_scratch \
    --config.train.objective=lm --config.distill.teacher=

The student keeps quickstart's data settings (embedded corpus, sentencepiece at vocab
8192, seq_len 256), so it trains with the teacher's tokenizer, as distillation needs.
Batch arithmetic as quickstart: 16 x 256 = 4,096 tokens per update, 250 updates =
1.02M tokens. Student: 2 layers, d_model 128 (0.40M non-embedding parameters against
the teacher's 3.16M). Each step adds the teacher's forward pass, 11.0M FLOPs/token
against the student's 9.0M training FLOPs/token, so expect it to take about twice as
long as the scratch run (tokens/s and MFU count the student only; metrics rows carry
teacher_flops and mfu_with_teacher).
"""

from gptjax.config import base_config


def get_config():
  c = base_config()  # quickstart's data and tokenizer: the teacher's
  c.train.steps = 250  # quickstart's schedule: 1.02M tokens
  c.train.log_every = 25  # steps between console lines
  c.train.eval_every = 125  # steps between evals (plus one at the end)
  c.train.checkpoint_every = 125  # steps between checkpoints (plus one at the end)
  c.optim.lr = 2e-3  # quickstart's peak learning rate
  c.optim.warmup_steps = 25  # ~10% of the run
  c.model.n_layer = 2  # student: 2 blocks
  c.model.d_model = 128  # residual width (teacher: 256)
  c.model.n_head = 2  # head size 64, as the teacher's
  c.model.d_ff = 512  # 4 * d_model
  c.train.objective = "distill"
  c.distill.teacher = "run:runs/quickstart"  # the README's quick-start run (newest checkpoint)
  c.distill.temperature = 1.0  # LM distillation works at T = 1 (Busbridge et al. 2025)
  c.distill.alpha = 0.5  # half KL to the teacher, half cross-entropy on the data
  return c
