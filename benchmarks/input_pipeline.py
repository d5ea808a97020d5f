"""Input-pipeline throughput: `python benchmarks/input_pipeline.py --config=FILE [--config.x=y]`.

Loads the configured data as training does (preparing it first if `python -m
gptjax.prepare` has not), then times `train_batch` alone at the config's
batch_size x seq_len and prints tokens/s, to compare with the training step's.
"""

import time

from absl import app, flags
from ml_collections import config_flags

from gptjax import config as config_lib
from gptjax import data

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/*.py).")
_STEPS = flags.DEFINE_integer("steps", 20, "Batches to time after one warm-up batch.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config_lib.validate(config)
  batch_size, seq_len = config.train.batch_size, config.model.seq_len
  _, lm = data.load(config.data, seq_len, config.train.seed)
  lm.train_batch(0, batch_size)
  start = time.perf_counter()
  for step in range(1, _STEPS.value + 1):
    lm.train_batch(step, batch_size)
  elapsed = time.perf_counter() - start
  tokens = _STEPS.value * batch_size * seq_len
  print(
    f"input pipeline: {_STEPS.value} batches of {batch_size} x {seq_len} tokens in "
    f"{elapsed:.3f} s: {tokens / elapsed:,.0f} tokens/s "
    f"({elapsed / _STEPS.value * 1e3:.1f} ms/batch)"
  )


if __name__ == "__main__":
  app.run(main)
