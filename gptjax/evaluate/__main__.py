"""Command line: score one checkpoint of a run on one task.

    python -m gptjax.evaluate --workdir=DIR [--step=N] --task=perplexity [--source=...]
    python -m gptjax.evaluate --workdir=DIR --task=hellaswag --data_file=hellaswag_val.jsonl

Writes DIR/eval/STEP/NAME.json (metrics, settings, checkpoint) and one row in
DIR/metrics.jsonl: step, tokens, flops, `task`, `settings` and every metric as
`NAME/METRIC` (so TensorBoard groups them, and no key collides with training's
`eval_loss`, which reports read as the learning curve). NAME is the task, the data
file's stem for `choice`, with `_Kshot` for K > 0 demonstrations, unless --name says.

Evaluate writes into the run directory, so it holds the run's lock (gptjax.rundir)
from before loading until the row is written: it never runs beside a trainer of the
same directory, and a refused start changes nothing.

--workdir may also be a sweep directory: every completed member is evaluated in turn
(at its newest checkpoint), which is what a scaling report's downstream plots read.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import app, flags
from etils import epath

from gptjax import console, metrics, rundir, run_record
from gptjax.evaluate import choice, perplexity, tasks
from gptjax.evaluate.scoring import Scorer
from gptjax.load import load, run_config

TASKS = ("perplexity", *tasks.FORMATS)

_defaults = choice.Shots()
flags.DEFINE_string("workdir", None, "Run directory to evaluate (local or gs://).")
flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the newest.")
flags.DEFINE_enum("task", None, TASKS, "What to score.")
flags.DEFINE_string("name", None, "Name of the result (file and metric prefix); default: the "
                    "task, the data file's stem for choice, with _Kshot for K demonstrations.")
flags.DEFINE_integer("batch_size", 16, "Rows per forward pass (results do not depend on it).")
flags.DEFINE_bool("start_with_eos", True, "Tasks: begin every context with end-of-text, as "
                  "training documents do; --nostart_with_eos only empty ones, as lm-eval and "
                  "build-nanogpt do for GPT-2 (their published figures).")
flags.DEFINE_integer("limit", 0, "Score only the first N items (tasks); 0: all.")
# perplexity
flags.DEFINE_string("source", None, "perplexity: a data source as data.source takes it (TFDS "
                    "name, local glob, 'embedded'); default: the run's own.")
flags.DEFINE_enum("split", "validation", ["train", "validation"], "perplexity: which split.")
flags.DEFINE_integer("stride", None, "perplexity: targets per window after the first; "
                     "default model.seq_len (disjoint windows).")
flags.DEFINE_integer("max_documents", 0, "perplexity: score N documents drawn with a fixed "
                     "seed; 0: all.")
# tasks
flags.DEFINE_string("data_file", None, "hellaswag, lambada, choice: the task's .jsonl file.")
flags.DEFINE_string("fewshot_file", None, "A .jsonl file of the same format to draw "
                    "demonstrations from (e.g. the train split); default: the data file itself.")
flags.DEFINE_integer("num_fewshot", _defaults.k, "Demonstrations per prompt.")
flags.DEFINE_integer("fewshot_seed", _defaults.seed, "Seed of the demonstrations' draw.")
flags.DEFINE_string("fewshot_delimiter", _defaults.delimiter, "After each demonstration.")
flags.DEFINE_string("target_delimiter", _defaults.target_delimiter,
                    "Between a context and its answer.")


def result_name(args: Any) -> str:
  if args.name:
    return args.name
  name = epath.Path(args.data_file).stem if args.task == "choice" else args.task
  return f"{name}_{args.num_fewshot}shot" if args.task != "perplexity" and args.num_fewshot else name


def check_flags(args: Any) -> None:
  """Raises ValueError, one line per problem, for flags wrong before anything is read."""
  errors = []
  if args.task != "perplexity" and not args.data_file:
    errors.append(f"--task={args.task}: needs --data_file=FILE.jsonl (datasets are not "
                  "downloaded)")
  for flag in ("batch_size",):
    if args[flag].value < 1:
      errors.append(f"--{flag}={args[flag].value}: must be >= 1")
  for flag in ("limit", "max_documents", "num_fewshot"):
    if args[flag].value < 0:
      errors.append(f"--{flag}={args[flag].value}: must be >= 0")
  if args.name is not None and (not args.name or "/" in args.name):
    errors.append(f"--name={args.name!r}: use a non-empty name without '/'")
  if errors:
    raise ValueError("\n".join(errors))


def evaluate(args: Any, scorer: Scorer, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """(settings, metrics) of the task the flags name."""
  if args.task == "perplexity":
    stride = args.stride or config.model.seq_len
    perplexity.check_stride(stride, config.model.seq_len)
    data_config = config.data.copy_and_resolve_references()
    if args.source:
      data_config.source = args.source
    settings = {"source": data_config.source, "split": args.split, "stride": stride,
                "max_documents": args.max_documents}
    documents = list(perplexity.document_ids(data_config, scorer.tokenizer, args.split,
                                             args.max_documents))
    return settings, perplexity.perplexity(scorer, documents, stride)
  shots = choice.Shots(args.num_fewshot, args.fewshot_seed, args.fewshot_delimiter,
                       args.target_delimiter)
  items = tasks.read_items(args.task, args.data_file, args.limit)
  pool = tasks.read_items(args.task, args.fewshot_file) if args.fewshot_file else None
  settings = {"data_file": args.data_file, "fewshot_file": args.fewshot_file, "limit": args.limit,
              "start_with_eos": scorer.start_with_eos, **shots.describe()}
  return settings, choice.evaluate(scorer, items, shots, args.task in tasks.CLOZE, pool)


def write(workdir: str, config: Any, step: int, name: str, task: str, settings: dict[str, Any],
          values: dict[str, Any], seconds: float) -> epath.Path:
  """DIR/eval/STEP/NAME.json and the metrics.jsonl row (module docstring)."""
  path = epath.Path(workdir) / "eval" / str(step) / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  rundir.write_atomic(path, json.dumps(
      {"task": task, "name": name, "step": step, "settings": settings,
       "metrics": metrics.strict_row(values), "wall_s": seconds}, indent=2, allow_nan=False))
  last = max([r.get("step", 0) for r in metrics.read_rows(workdir)] + [step])
  writer = metrics.MetricsWriter(workdir, resume_step=last)  # keeps every row there is
  writer.write({**run_record.position(config, step), "task": name, "settings": settings,
                **{f"{name}/{k}": v for k, v in values.items()}})
  writer.close()
  return path


def run_dirs(workdir: str, step: int | None) -> list[str]:
  """The run directories --workdir names: itself, or each completed member of a sweep
  directory (its sweep.json; summary.json status completed), in sweep.json's order."""
  root = epath.Path(workdir)
  if not (root / "config.json").exists() and (root / "sweep.json").exists():
    if step is not None:
      raise ValueError(f"--step={step}: {workdir} is a sweep, whose members end at different "
                       "steps; leave --step out to evaluate each member's newest checkpoint")
    members = [root / name for name in json.loads((root / "sweep.json").read_text())]
    done = [os.fspath(m) for m in members if (m / "summary.json").exists()
            and json.loads((m / "summary.json").read_text()).get("status") == "completed"]
    if not done:
      raise ValueError(f"--workdir={workdir}: no member of this sweep has completed yet")
    return done
  run_config(workdir)  # a directory that is no run is refused before the lock makes it
  return [workdir]


def evaluate_run(args: Any, workdir: str) -> None:
  """Loads, scores and writes one run directory, holding its lock throughout."""
  lock = rundir.RunLock(workdir)
  lock.acquire()
  try:
    start = time.perf_counter()
    loaded = load(workdir, args.step)
    scorer = Scorer(loaded.model, loaded.params, loaded.tokenizer, args.batch_size, progress=True,
                    start_with_eos=args.start_with_eos)
    with loaded.active():
      settings, values = evaluate(args, scorer, loaded.config)
    name = result_name(args)
    path = write(workdir, loaded.config, loaded.step, name, args.task, settings, values,
                 time.perf_counter() - start)
  finally:
    lock.release()
  for key, value in values.items():
    print(f"{name} {key}: {value:.6g}" if isinstance(value, float) else f"{name} {key}: {value}")
  print(f"step {loaded.step}: {scorer.compiles} programs compiled; written to {path}",
        file=sys.stderr)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  console.setup(args.verbosity)  # gptjax's own lines only; --verbosity=1 for the libraries'
  try:
    check_flags(args)
    workdirs = run_dirs(args.workdir, args.step)
    for workdir in workdirs:
      if len(workdirs) > 1:
        print(f"== {workdir}", flush=True)
      evaluate_run(args, workdir)
  except ValueError as e:
    if args.verbosity > 0:
      raise
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "task"])
  app.run(main)
