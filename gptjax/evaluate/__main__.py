"""Command line: score one checkpoint of a run (or every completed member of a sweep).

    python -m gptjax.evaluate --workdir=DIR [--step=N] --task=perplexity [--source=...]
    python -m gptjax.evaluate --workdir=DIR --task=hellaswag --data_file=hellaswag_val.jsonl

Each flag is a field of gptjax.evaluate.run.Options, which says what is written where.
--workdir may also be a sweep directory: every completed member is evaluated in turn
(at its newest checkpoint), which is what a scaling report's downstream plots read.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from gptjax import console
from gptjax.evaluate.run import TASKS, Options, evaluate_run, run_dirs

_defaults = Options(task="perplexity")
flags.DEFINE_string(
  "workdir", None, "Run directory, or sweep directory, to evaluate (local or gs://)."
)
flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the newest.")
flags.DEFINE_enum("task", None, TASKS, "What to score.")
flags.DEFINE_string(
  "name",
  None,
  "Name of the result (file and metric prefix); default: the "
  "task, the data file's stem for choice, with _Kshot for K demonstrations.",
)
flags.DEFINE_integer(
  "batch_size", _defaults.batch_size, "Rows per forward pass (results do not depend on it)."
)
flags.DEFINE_bool(
  "start_with_eos",
  _defaults.start_with_eos,
  "Tasks: begin every context with "
  "end-of-text, as training documents do; --nostart_with_eos only empty ones, as "
  "lm-eval and build-nanogpt do for GPT-2 (their published figures).",
)
flags.DEFINE_integer("limit", _defaults.limit, "Score only the first N items (tasks); 0: all.")
# perplexity
flags.DEFINE_string(
  "source",
  None,
  "perplexity: a data source as data.source takes it (TFDS "
  "name, local glob, 'embedded'); default: the run's own.",
)
flags.DEFINE_enum("split", _defaults.split, ["train", "validation"], "perplexity: which split.")
flags.DEFINE_integer(
  "stride",
  None,
  "perplexity: targets per window after the first; default model.seq_len (disjoint windows).",
)
flags.DEFINE_integer(
  "max_documents",
  _defaults.max_documents,
  "perplexity: score N documents drawn with a fixed seed; 0: all.",
)
# tasks
flags.DEFINE_string("data_file", None, "hellaswag, lambada, choice: the task's .jsonl file.")
flags.DEFINE_string(
  "fewshot_file",
  None,
  "A .jsonl file of the same format to draw "
  "demonstrations from (e.g. the train split); default: the data file itself.",
)
flags.DEFINE_integer("num_fewshot", _defaults.num_fewshot, "Demonstrations per prompt.")
flags.DEFINE_integer("fewshot_seed", _defaults.fewshot_seed, "Seed of the demonstrations' draw.")
flags.DEFINE_string("fewshot_delimiter", _defaults.fewshot_delimiter, "After each demonstration.")
flags.DEFINE_string(
  "target_delimiter", _defaults.target_delimiter, "Between a context and its answer."
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  console.setup(args.verbosity)  # gptjax's own lines only; --verbosity=1 for the libraries'
  options = Options(**{f.name: args[f.name].value for f in dataclasses.fields(Options)})
  try:
    options.check()
    workdirs = run_dirs(args.workdir, options.step)
    for workdir in workdirs:
      if len(workdirs) > 1:
        print(f"== {workdir}", flush=True)
      evaluate_run(options, workdir)
  except ValueError as e:
    if args.verbosity > 0:
      raise
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "task"])
  app.run(main)
