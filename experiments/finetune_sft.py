"""Supervised fine-tuning on prompt/response pairs, from a pretrained run directory.

  python -m gptjax.main --config=experiments/finetune_sft.py \
      --config.train.init_from=run:runs/quickstart --workdir=runs/finetune_sft

Examples are packed into rows of seq_len with document masks; the loss is on the
responses and their closing end-of-text only. The shipped task copies 2-6 words
(experiments/tasks/make_synthetic.py).
"""

from gptjax.config import base_config


def get_config():
  c = base_config()  # the quick start's model
  c.train.objective = "sft"
  c.train.epochs = 2  # steps = ceil(2 * packed rows / batch_size)
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.checkpoint_every = 100
  c.train.num_samples = 0
  c.optim.lr = 1e-4
  c.optim.schedule = "linear"
  c.optim.min_lr_ratio = 0.0
  c.optim.warmup_steps = 2
  c.finetune.train_file = "experiments/tasks/copy_train.jsonl"
  c.finetune.eval_file = "experiments/tasks/copy_eval.jsonl"
  c.finetune.too_long = "truncate"
  return c
