"""`python -m gptjax.prepare --config=FILE [--config.x=y]`: prepare a run's data once.

Builds exactly what training would build and reuse, and nothing else: the dataset
(downloading a TFDS catalog dataset only with --config.data.download=True), the
tokenizer and the token file, into the caches under data.data_dir; for a fine-tuning
config (train.objective other than 'lm'), its TFDS catalog task (finetune.source). Run it once into
shared storage, so the runs of a sweep or a multi-host job only read.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from gptjax import config as config_lib
from gptjax import console, data
from gptjax.data import tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/*.py).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.setup(flags.FLAGS.verbosity)
  config = _CONFIG.value
  try:
    config_lib.validate(config)
    if config.train.objective in ("sft", "classify", "choice"):  # lm and distill read data.*
      _prepare_task(config)
      return
    tokenizer, _ = data.load(config.data, config.model.seq_len, config.train.seed)
  except (ValueError, OSError) as e:
    raise SystemExit(f"error: {e}") from None
  logging.info(
    "prepared: data.source=%r in data.data_dir=%r, vocabulary %d",
    config.data.source,
    config.data.data_dir,
    tokenizer.vocab_size,
  )
  print(
    f"prepared data.source={config.data.source!r} (vocabulary {tokenizer.vocab_size}); "
    "runs with the same data settings now only read it"
  )


def _prepare_task(config) -> None:
  """A fine-tuning config's examples: its TFDS catalog task (files need no preparation;
  the tokenizer is the init_from source's)."""
  data.check(config)
  if not config.finetune.source:
    print("nothing to prepare: the task examples are files (finetune.train_file, eval_file)")
    return
  _, splits = tasks.catalog_records(config)
  print(
    f"prepared finetune.source={config.finetune.source!r}: "
    + ", ".join(f"{name} {len(records)} examples" for name, records in splits.values())
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
