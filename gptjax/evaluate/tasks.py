"""Task file formats, read into one shape: a context, its choices and the right one.

- `hellaswag`: the official jsonl (hellaswag_{train,val}.jsonl: `activity_label`, `ctx_a`,
  `ctx_b`, `endings`, `label`), preprocessed as lm-evaluation-harness does: the context is
  "activity_label: ctx_a Ctx_b", and bracketed WikiHow markers ("[title]", "[header]",
  ...) are removed from context and endings.
- `lambada`: the OpenAI jsonl (lambada_test.jsonl: `text`); the context is the text up to
  its last space, the one choice is the last word (a cloze: scored by whether greedy
  decoding produces it, and by its perplexity).
- `choice`: generic multiple choice, one JSON object a line with `context` (a string),
  `choices` (a list of at least two strings) and `label` (the index of the right one).

A choice is scored as the continuation target_delimiter + choice (default " ").
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from etils import epath


@dataclasses.dataclass(frozen=True)
class Item:
  context: str
  choices: tuple[str, ...]
  label: int


def _hellaswag_text(text: str) -> str:
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def hellaswag(record: dict[str, Any]) -> Item:
  context = record["ctx_a"] + " " + record["ctx_b"].capitalize()
  return Item(
    _hellaswag_text(record["activity_label"] + ": " + context),
    tuple(_hellaswag_text(e) for e in record["endings"]),
    int(record["label"]),
  )


def lambada(record: dict[str, Any]) -> Item:
  context, _, word = record["text"].rpartition(" ")
  return Item(context, (word,), 0)


def choice(record: dict[str, Any]) -> Item:
  choices = record["choices"]
  if not (
    isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
  ):
    raise TypeError("'choices' must be a list of at least two strings")
  if not isinstance(record["context"], str):
    raise TypeError("'context' must be a string")
  label = record["label"]
  if not (isinstance(label, int) and 0 <= label < len(choices)):
    raise TypeError(f"'label' must be an index into 'choices' (0..{len(choices) - 1})")
  return Item(record["context"], tuple(choices), label)


FORMATS: dict[str, Callable[[dict[str, Any]], Item]] = {
  "hellaswag": hellaswag,
  "lambada": lambada,
  "choice": choice,
}
FIELDS = {
  "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
  "lambada": ("text",),
  "choice": ("context", "choices", "label"),
}
CLOZE = ("lambada",)  # tasks with one right continuation and no alternatives


def read_items(task: str, path: str, limit: int = 0) -> list[Item]:
  """The items of a task file (the first `limit` when > 0); errors name the file and line."""
  if task not in FORMATS:
    raise ValueError(f"--task={task}: unknown; use one of {', '.join(FORMATS)}")
  file = epath.Path(path)
  if not file.is_file():
    raise ValueError(f"--data_file={path}: no such file; give a {task} .jsonl file")
  items = []
  for number, line in enumerate(file.read_text().splitlines(), 1):
    if not line.strip():
      continue
    where = f"--data_file={path}: line {number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where} is not JSON ({e.msg})") from None
    missing = [f for f in FIELDS[task] if not isinstance(record, dict) or f not in record]
    if missing:
      raise ValueError(
        f"{where} lacks {', '.join(missing)}; a {task} record has {', '.join(FIELDS[task])}"
      )
    try:
      items.append(FORMATS[task](record))
    except (TypeError, ValueError, AttributeError) as e:
      raise ValueError(f"{where}: {e}") from None
    if len(items) == limit:
      break
  if not items:
    raise ValueError(f"--data_file={path}: holds no records")
  return items


def parse_tasks(spec: str) -> list[tuple[str, str | None]]:
  """eval.tasks: comma-separated entries, `perplexity` or `TASK=FILE.jsonl` (TASK one of
  FORMATS), as (task, file) pairs; raises ValueError naming every bad entry and the fix."""
  entries, errors = [], []
  for entry in filter(None, (e.strip() for e in spec.split(","))):
    task, _, path = entry.partition("=")
    if task == "perplexity" and not path:
      entries.append((task, None))
    elif task not in FORMATS:
      errors.append(
        f"eval.tasks entry {entry!r}: unknown task {task!r}; use perplexity or "
        f"TASK=FILE.jsonl with TASK one of {', '.join(FORMATS)}"
      )
    elif not path or not epath.Path(path).is_file():
      errors.append(
        f"eval.tasks entry {entry!r}: {task} needs an existing file, as {task}=FILE.jsonl"
      )
    else:
      entries.append((task, path))
  if errors:
    raise ValueError("\n".join(errors))
  return entries


def check_tasks(spec: str) -> None:
  """Raises ValueError listing every bad eval.tasks entry (`parse_tasks`). The config module
  checks fields alone; main and the sweep runner call this, as they call data.check."""
  try:
    parse_tasks(spec)
  except ValueError as e:
    raise ValueError("invalid eval config:\n  " + "\n  ".join(str(e).splitlines())) from None
