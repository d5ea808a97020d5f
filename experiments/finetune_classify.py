"""GPT-1's fine-tuning recipe on a classification task, from a pretrained run directory.

  python -m gptjax.main --config=experiments/finetune_classify.py \
      --config.train.init_from=run:runs/quickstart --workdir=runs/finetune_classify

The model group must match the source run (here the quick start's shape, the base
config's). The shipped task (experiments/tasks/make_synthetic.py): is 'blue' more
frequent than 'red' in 12 words? Batch arithmetic: 2,000 training examples x 3 epochs
/ 32 per update = 188 updates; GPT-1 warms up over 0.2% of training, which rounds
to 1 update here (set optim.warmup_steps for larger tasks).

`experiments/finetune_classify.py:TASK` takes a TFDS catalog task instead (TASKS
below: GLUE's SST-2 and RTE, SNLI, and PIQA as multiple choice), read from
data.data_dir once prepared. TFDS extracts the downloaded archives with
TensorFlow, so preparing (once) needs it; reading does not:

  pip install tensorflow-cpu
  python -m gptjax.prepare --config=experiments/finetune_classify.py:sst2 \
      --config.data.data_dir=~/tensorflow_datasets --config.data.download=True
"""

from gptjax.config import base_config

# name -> (TFDS dataset, objective, finetune.* fields naming its features)
TASKS = {
  "sst2": ("glue/sst2", "classify", dict(text_field="sentence")),
  "rte": ("glue/rte", "classify", dict(text_field="sentence1", pair_field="sentence2")),
  "snli": ("snli", "classify", dict(text_field="premise", pair_field="hypothesis", num_classes=3)),
  "piqa": ("piqa", "choice", dict(text_field="goal", choices_field="sol1,sol2")),
}


def get_config(task: str = ""):
  c = base_config()  # the quick start's model: 4 layers, d_model 256, vocab 8192
  c.model.special_tokens = 3  # start, delimiter, extract: new embedding rows
  c.model.dropout = 0.1  # GPT-1: residual, embedding and classifier dropout
  c.train.objective = "classify"
  c.train.epochs = 3  # steps = ceil(3 * examples / batch_size)
  c.train.batch_size = 32
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  c.train.num_samples = 0
  c.optim.lr = 6.25e-5
  c.optim.schedule = "linear"  # linear decay to 0 after warmup
  c.optim.min_lr_ratio = 0.0
  c.optim.warmup_steps = 1  # 0.2% of 188 updates
  c.optim.weight_decay = 0.01  # GPT-1's w = 0.01 on non-bias weights
  c.finetune.lm_weight = 0.5  # GPT-1's lambda
  c.finetune.num_classes = 2
  if task:
    if task not in TASKS:
      raise ValueError(f"experiments/finetune_classify.py:{task}: use one of {sorted(TASKS)}")
    c.finetune.source, c.train.objective, fields = TASKS[task]
    c.finetune.update(fields)
    return c
  c.finetune.train_file = "experiments/tasks/count_train.jsonl"
  c.finetune.eval_file = "experiments/tasks/count_eval.jsonl"
  return c
