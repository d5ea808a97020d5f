"""One evaluation of a run directory, from options to DIR/eval/STEP/NAME.json and an eval row.

What `python -m gptjax.evaluate` does, as a library: training calls it after a run that
lists `eval.tasks` (gptjax.main), the command line for whatever its flags say.

Results go to DIR/eval/STEP/NAME.json (metrics, settings, checkpoint) and one row in
DIR/metrics.jsonl: step, tokens, flops, `task`, `settings` and every metric as
`NAME/METRIC` (so TensorBoard groups them, and no key collides with training's
`eval_loss`, which reports read as the learning curve). NAME is the task, the data
file's stem for `choice`, with `_Kshot` for K > 0 demonstrations, unless `name` says.

An evaluation writes into the run directory, so it holds the run's lock
(gptjax.rundir) from before loading until the row is written: it never runs beside a
trainer of the same directory, and a refused start changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from etils import epath

from gptjax import compile_cache, metrics, rundir
from gptjax.evaluate import choice, perplexity, tasks
from gptjax.evaluate.scoring import Scorer
from gptjax.load import load, run_config

TASKS = ("perplexity", *tasks.FORMATS)
_SHOTS = choice.Shots()


@dataclasses.dataclass(frozen=True)
class Options:
  """What to evaluate and how; the command line has a flag per field, of the same name."""

  task: str  # 'perplexity' or a task format (tasks.FORMATS)
  step: int | None = None  # checkpoint; None: the newest
  name: str | None = None  # result name; None: module docstring
  batch_size: int = 16  # rows per forward pass (results do not depend on it)
  start_with_eos: bool = True  # tasks: end-of-text before every context (scoring.py)
  limit: int = 0  # tasks: the first N items only; 0: all
  source: str | None = None  # perplexity: a data.source; None: the run's own
  split: str = "validation"  # perplexity: 'train' or 'validation'
  stride: int | None = None  # perplexity: targets per window after the first; None: seq_len
  max_documents: int = 0  # perplexity: N documents drawn with a fixed seed; 0: all
  data_file: str | None = None  # tasks: the .jsonl file
  fewshot_file: str | None = None  # tasks: demonstrations' pool; None: data_file itself
  num_fewshot: int = _SHOTS.k
  fewshot_seed: int = _SHOTS.seed
  fewshot_delimiter: str = _SHOTS.delimiter
  target_delimiter: str = _SHOTS.target_delimiter

  @property
  def result_name(self) -> str:
    if self.name:
      return self.name
    name = epath.Path(self.data_file).stem if self.task == "choice" else self.task
    shots = self.task != "perplexity" and self.num_fewshot
    return f"{name}_{self.num_fewshot}shot" if shots else name

  def check(self) -> None:
    """Raises ValueError, one line per problem, naming the flag, before anything is read."""
    errors = []
    if self.task not in TASKS:
      errors.append(f"--task={self.task}: unknown; use one of {', '.join(TASKS)}")
    elif self.task != "perplexity" and not self.data_file:
      errors.append(
        f"--task={self.task}: needs --data_file=FILE.jsonl (datasets are not downloaded)"
      )
    if self.batch_size < 1:
      errors.append(f"--batch_size={self.batch_size}: must be >= 1")
    for flag in ("limit", "max_documents", "num_fewshot"):
      if getattr(self, flag) < 0:
        errors.append(f"--{flag}={getattr(self, flag)}: must be >= 0")
    if self.split not in ("train", "validation"):
      errors.append(f"--split={self.split}: use train or validation")
    if self.name is not None and (not self.name or "/" in self.name):
      errors.append(f"--name={self.name!r}: use a non-empty name without '/'")
    if errors:
      raise ValueError("\n".join(errors))


def evaluate(
  options: Options, scorer: Scorer, config: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(settings, metrics) of the task `options` name, for a run with `config`."""
  if options.task == "perplexity":
    stride = options.stride or config.model.seq_len
    perplexity.check_stride(stride, config.model.seq_len)
    data_config = config.data.copy_and_resolve_references()
    if options.source:
      data_config.source = options.source
    settings = {
      "source": data_config.source,
      "split": options.split,
      "stride": stride,
      "max_documents": options.max_documents,
    }
    documents = list(
      perplexity.document_ids(data_config, scorer.tokenizer, options.split, options.max_documents)
    )
    return settings, perplexity.perplexity(scorer, documents, stride)
  shots = choice.Shots(
    options.num_fewshot, options.fewshot_seed, options.fewshot_delimiter, options.target_delimiter
  )
  items = tasks.read_items(options.task, options.data_file)  # all: the demonstrations' pool
  pool = tasks.read_items(options.task, options.fewshot_file) if options.fewshot_file else None
  settings = {
    "data_file": options.data_file,
    "fewshot_file": options.fewshot_file,
    "limit": options.limit,
    "start_with_eos": scorer.start_with_eos,
    **shots.describe(),
  }
  return settings, choice.evaluate(
    scorer, items, shots, options.task in tasks.CLOZE, pool, options.limit
  )


def write(
  workdir: str,
  config: Any,
  step: int,
  name: str,
  task: str,
  settings: dict[str, Any],
  values: dict[str, Any],
  seconds: float,
) -> epath.Path:
  """DIR/eval/STEP/NAME.json and the metrics.jsonl row (module docstring)."""
  path = epath.Path(workdir) / "eval" / str(step) / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  rundir.write_json(
    path,
    {
      "task": task,
      "name": name,
      "step": step,
      "settings": settings,
      "metrics": metrics.strict_row(values),
      "wall_s": seconds,
    },
  )
  last = max([r.get("step", 0) for r in metrics.read_rows(workdir)] + [step])
  writer = metrics.MetricsWriter(workdir, resume_step=last)  # keeps every row there is
  writer.write(
    {
      **metrics.position(config, step),
      "task": name,
      "settings": settings,
      **{f"{name}/{k}": v for k, v in values.items()},
    }
  )
  writer.close()
  return path


def run_dirs(workdir: str, step: int | None) -> list[str]:
  """The run directories --workdir names: itself, or each completed member of a sweep
  directory (its sweep.json; summary.json status completed), in sweep.json's order."""
  root = epath.Path(workdir)
  if not (root / "config.json").exists() and (root / "sweep.json").exists():
    if step is not None:
      raise ValueError(
        f"--step={step}: {workdir} is a sweep, whose members end at different "
        "steps; leave --step out to evaluate each member's newest checkpoint"
      )
    members = [root / name for name in json.loads((root / "sweep.json").read_text())]
    done = [
      os.fspath(m)
      for m in members
      if (m / "summary.json").exists()
      and json.loads((m / "summary.json").read_text()).get("status") == "completed"
    ]
    if not done:
      raise ValueError(f"--workdir={workdir}: no member of this sweep has completed yet")
    return done
  run_config(workdir)  # a directory that is no run is refused before the lock makes it
  return [workdir]


def after_training(config: Any, workdir: str, step: int) -> None:
  """Scores the run's final checkpoint on each of `eval.tasks`, skipping those already
  written at `step` (so rerunning a finished run evaluates nothing twice)."""
  for task, data_file in tasks.parse_tasks(config.eval.tasks):
    options = Options(
      task=task, data_file=data_file, num_fewshot=config.eval.num_fewshot, step=step
    )
    if (epath.Path(workdir) / "eval" / str(step) / f"{options.result_name}.json").exists():
      continue
    evaluate_run(options, workdir)


def evaluate_run(options: Options, workdir: str) -> dict[str, Any]:
  """Loads, scores and writes one run directory, holding its lock throughout; prints the
  metrics and returns them."""
  lock = rundir.RunLock(workdir)
  lock.acquire()
  try:
    start = time.perf_counter()
    loaded = load(workdir, options.step)
    compile_cache.enable(loaded.config.train.compile_cache)  # the run's choice, as training's
    scorer = Scorer(
      loaded.model,
      loaded.params,
      loaded.tokenizer,
      options.batch_size,
      progress=True,
      start_with_eos=options.start_with_eos,
    )
    with loaded.active():
      settings, values = evaluate(options, scorer, loaded.config)
    name = options.result_name
    path = write(
      workdir,
      loaded.config,
      loaded.step,
      name,
      options.task,
      settings,
      values,
      time.perf_counter() - start,
    )
  finally:
    lock.release()
  for key, value in values.items():
    print(f"{name} {key}: {value:.6g}" if isinstance(value, float) else f"{name} {key}: {value}")
  print(
    f"step {loaded.step}: {scorer.compiles} programs compiled; written to {path}", file=sys.stderr
  )
  return values
