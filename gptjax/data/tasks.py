"""Fine-tuning data: local jsonl/csv/tsv task files turned into the objectives' batch dicts.

classify  GPT-1's input transformations: `[start] text [extract]`, with a pair field
          `[start] text [delim] pair [extract]` (entailment), and with
          finetune.similarity both orders as two sequences whose representations the
          objective adds.
choice    one sequence per answer, `[start] context [delim] answer [extract]`.
sft       `[eos] prompt response [eos]`; the loss is on the response and the closing
          end-of-text only. Examples are packed first-fit into rows of seq_len with
          segment ids, so no example attends to another.

The special tokens are embedding rows vocab_size, +1, +2 (model.special_tokens=3).
Examples come from local files (finetune.train_file / eval_file) or from a TFDS
catalog dataset prepared in data.data_dir (finetune.source, e.g. 'glue/sst2',
'glue/rte', 'snli', 'piqa'), whose features the same field settings name;
catalog examples labelled -1 (TFDS's "no label", e.g. GLUE's test splits) are
skipped and counted.
Too-long examples lose tokens from the left of their first text (the prompt,
context or premise) or are refused (finetune.too_long); the count is logged.
Every problem with a file names the file, the line and the field.

Training order is the same function of (seed, step) as pretraining's (a Grain index
shuffle per epoch, epochs concatenated), so a resume needs only the step number.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from gptjax.data import catalog, paths, pipeline

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
TOO_LONG = ("truncate", "refuse")
ORDER_VERSION = "tasks-v2"  # v2: pipeline.epoch_orders


class TaskDataError(ValueError):
  """A task file that cannot be read as configured; the message names file, line and field."""


def read_records(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, record) of every example in a .jsonl, .csv or .tsv file."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise TaskDataError(f"{path}: unknown file type {ext!r}; use one of {', '.join(FORMATS)}")
  if not os.path.isfile(path):
    raise TaskDataError(f"{path}: no such file")
  records = []
  with open(path, newline="", encoding="utf-8") as f:
    if ext == ".jsonl":
      for line, text in enumerate(f, 1):
        if not text.strip():
          continue
        try:
          record = json.loads(text)
        except json.JSONDecodeError as e:
          raise TaskDataError(f"{path}:{line}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict):
          raise TaskDataError(f"{path}:{line}: not a JSON object")
        records.append((line, record))
    else:
      reader = csv.DictReader(f, delimiter="," if ext == ".csv" else "\t")
      for record in reader:
        records.append((reader.line_num, record))
  if not records:
    raise TaskDataError(f"{path}: no examples (the file is empty)")
  return records


def _plain(value: Any) -> Any:
  """A TFDS feature value as the file readers give it: text as str, lists of texts as
  lists of str, integers as int."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim:
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def catalog_records(
  config: ml_collections.ConfigDict,
) -> tuple[str, dict[str, tuple[str, list[tuple[int, dict[str, Any]]]]]]:
  """The train and eval examples of `finetune.source` as (identity, {split: (name, records)}).

  Each record is numbered by its index in the split, which is what the messages'
  'line' means here. Records labelled -1 (no label) are skipped and counted.
  """
  f = config.finetune
  identity, sources = catalog.prepare(
    f.source,
    paths.resolve_data_dir(config.data.data_dir),
    config.data.download,
    {"train": f.train_split, "validation": f.eval_split},
    fields(config),
    group="finetune",
  )
  out = {}
  for split, expression in (("train", f.train_split), ("validation", f.eval_split)):
    source, name = sources[split], f"{f.source}[{expression}]"
    records = [(i, {k: _plain(v) for k, v in source[i].items()}) for i in range(len(source))]
    if config.train.objective != "sft":
      labelled = [(i, r) for i, r in records if r.get(f.label_field) != -1]
      if len(labelled) < len(records):
        logging.info(
          "%s: skipped %d examples labelled -1 (no label)", name, len(records) - len(labelled)
        )
      if not labelled:
        raise TaskDataError(
          f"{name}: every example is labelled -1 (no label); choose a labelled split "
          f"for finetune.{'train_split' if split == 'train' else 'eval_split'}"
        )
      records = labelled
    out[split] = (name, records)
  return identity, out


def fields(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The finetune.*_field settings train.objective reads, mapped to the fields they name."""
  f = config.finetune
  if config.train.objective == "sft":
    return {"prompt_field": f.prompt_field, "response_field": f.response_field}
  names = {"text_field": f.text_field, "label_field": f.label_field}
  if config.train.objective == "choice":
    for i, choice in enumerate(f.choices_field.split(",")):
      names[f"choices_field[{i}]" if "," in f.choices_field else "choices_field"] = choice.strip()
  elif f.pair_field:
    names["pair_field"] = f.pair_field
  return names


def _get(path: str, line: int, record: dict[str, Any], name: str, setting: str) -> Any:
  if name not in record or record[name] is None:
    raise TaskDataError(
      f"{path}:{line}: no field {name!r} (it has {sorted(record)}); "
      f"set finetune.{setting} to the field holding it"
    )
  return record[name]


def _text(path, line, record, name, setting) -> str:
  value = _get(path, line, record, name, setting)
  if not isinstance(value, str):
    raise TaskDataError(f"{path}:{line}: field {name!r} is {type(value).__name__}, not text")
  return value


def _label(path, line, record, name, count) -> int:
  value = _get(path, line, record, name, "label_field")
  try:
    label = int(value)
  except (TypeError, ValueError):
    label = -1
  if str(value).strip() not in (str(label), f"{label}.0") or not 0 <= label < count:
    raise TaskDataError(
      f"{path}:{line}: field {name!r} is {value!r}; labels are integers in [0, {count})"
    )
  return label


def _choices(path, line, record, name) -> list[str]:
  """A jsonl list field, or comma-separated column names (csv/tsv)."""
  if "," in name:
    return [_text(path, line, record, n.strip(), "choices_field") for n in name.split(",")]
  value = _get(path, line, record, name, "choices_field")
  if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) for v in value):
    raise TaskDataError(f"{path}:{line}: field {name!r} must be a list of at least two texts")
  return value


@dataclasses.dataclass
class _Budget:
  """Fits examples into `length` tokens and counts those that needed it."""

  length: int
  too_long: str
  path: str
  truncated: int = 0

  def fit(self, line: int, first: list[int], rest_length: int) -> list[int]:
    """`first` cut from the left so that it plus `rest_length` tokens fit."""
    over = len(first) + rest_length - self.length
    if over <= 0:
      return first
    if self.too_long == "refuse" or over > len(first):
      raise TaskDataError(
        f"{self.path}:{line}: the example is {len(first) + rest_length} tokens, over the "
        f"{self.length} that fit in model.seq_len"
        + ("" if self.too_long == "refuse" else " even with its first text dropped")
        + "; raise model.seq_len, shorten it"
        + (", or set finetune.too_long='truncate'" if self.too_long == "refuse" else "")
      )
    self.truncated += 1
    return first[over:]


def encode_task(
  path: str,
  config: ml_collections.ConfigDict,
  tokenizer: Any,
  objective: str,
  records: list[tuple[int, dict[str, Any]]] | None = None,
) -> dict[str, np.ndarray]:
  """The classify/choice examples of `path` (or `records`, read elsewhere and named
  `path` in messages): tokens [N, K, L+1], weights [N, K, L], extract [N, K],
  label [N], example_weights [N]."""
  f, length = config.finetune, config.model.seq_len
  start, delim, extract = (config.model.vocab_size + i for i in range(3))
  budget = _Budget(length, f.too_long, path)
  sequences, labels = [], []
  for line, record in read_records(path) if records is None else records:
    if objective == "choice":
      context = tokenizer.encode(_text(path, line, record, f.text_field, "text_field"))
      answers = [tokenizer.encode(a) for a in _choices(path, line, record, f.choices_field)]
      if sequences and len(answers) != len(sequences[0]):
        raise TaskDataError(
          f"{path}:{line}: field {f.choices_field!r} has {len(answers)} "
          f"answers, earlier examples {len(sequences[0])}; use one count"
        )
      label = _label(path, line, record, f.label_field, len(answers))
      pairs = [(context, a) for a in answers]
    else:
      text = tokenizer.encode(_text(path, line, record, f.text_field, "text_field"))
      label = _label(path, line, record, f.label_field, f.num_classes)
      if f.pair_field:
        pair = tokenizer.encode(_text(path, line, record, f.pair_field, "pair_field"))
        pairs = [(text, pair), (pair, text)] if f.similarity else [(text, pair)]
      else:
        pairs = [(text, None)]
    before = budget.truncated
    seqs = []
    for first, second in pairs:
      rest = 2 + (0 if second is None else len(second) + 1)
      first = budget.fit(line, first, rest)
      seqs.append([start, *first, *([] if second is None else [delim, *second]), extract])
    budget.truncated = before + (budget.truncated > before)  # count examples, not sequences
    sequences.append(seqs)
    labels.append(label)
  n, k = len(sequences), len(sequences[0])
  tokens = np.zeros((n, k, length + 1), np.int32)
  extract_at = np.zeros((n, k), np.int32)
  for i, seqs in enumerate(sequences):
    for j, seq in enumerate(seqs):
      tokens[i, j, : len(seq)] = seq
      extract_at[i, j] = len(seq) - 1
  weights = (np.arange(length)[None, None] < extract_at[..., None]).astype(np.float32)
  _log_truncation(path, budget, n)
  return {
    "tokens": tokens,
    "weights": weights,
    "extract": extract_at,
    "label": np.asarray(labels, np.int32),
    "example_weights": np.ones(n, np.float32),
  }


def encode_sft(
  path: str,
  config: ml_collections.ConfigDict,
  tokenizer: Any,
  records: list[tuple[int, dict[str, Any]]] | None = None,
) -> dict[str, np.ndarray]:
  """The prompt/response examples of `path` (or `records`) packed into rows: inputs,
  targets, weights and segment_ids, each [rows, seq_len]."""
  f, length, eos = config.finetune, config.model.seq_len, tokenizer.eos_id
  budget = _Budget(length, f.too_long, path)
  rows: list[list[tuple[list[int], list[int], int]]] = []  # (prompt, response, line) per row
  free: list[int] = []
  for line, record in read_records(path) if records is None else records:
    prompt = tokenizer.encode(_text(path, line, record, f.prompt_field, "prompt_field"))
    response = tokenizer.encode(_text(path, line, record, f.response_field, "response_field"))
    prompt = budget.fit(line, prompt, len(response) + 1)  # + [eos] before; the closing eos
    size = len(prompt) + len(response) + 1  # is a target, never an input
    row = next((i for i, room in enumerate(free) if room >= size), None)
    if row is None:
      rows.append([])
      free.append(length)
      row = len(rows) - 1
    rows[row].append((prompt, response, line))
    free[row] -= size
  out = {k: np.zeros((len(rows), length), np.int32) for k in ("inputs", "targets", "segment_ids")}
  out["weights"] = np.zeros((len(rows), length), np.float32)
  for r, examples in enumerate(rows):
    at = 0
    for segment, (prompt, response, _) in enumerate(examples, 1):
      sequence = [eos, *prompt, *response, eos]
      end = at + len(sequence) - 1
      out["inputs"][r, at:end] = sequence[:-1]
      out["targets"][r, at:end] = sequence[1:]
      out["segment_ids"][r, at:end] = segment
      out["weights"][r, at + len(prompt) : end] = 1  # response tokens and the closing eos
      at = end
  _log_truncation(path, budget, sum(len(r) for r in rows))
  logging.info("%s: packed into %d rows of %d tokens", path, len(rows), length)
  return out


def _log_truncation(path: str, budget: _Budget, count: int) -> None:
  logging.info(
    "%s: %d examples; %d too long for model.seq_len=%d, truncated from the left of "
    "their first text (finetune.too_long=%r)",
    path,
    count,
    budget.truncated,
    budget.length,
    budget.too_long,
  )


class TaskData:
  """Train and eval arrays of one task, served like pretraining's LMData.

  `train` and `eval` map batch fields to arrays with one leading example (or
  packed row) axis.
  """

  def __init__(
    self,
    train: dict[str, np.ndarray],
    eval_: dict[str, np.ndarray],
    seed: int,
    identity: str,
    seq_len: int,
  ):
    self.train, self.eval, self.seed = train, eval_, seed
    self.identity, self.seq_len = identity, seq_len
    self.rows = len(next(iter(train.values())))
    self._order = pipeline.epoch_orders(self.rows, seed)
    digest = hashlib.sha256(json.dumps([identity, seq_len, ORDER_VERSION]).encode())
    for name in sorted(train):
      digest.update(name.encode() + np.ascontiguousarray(train[name]).tobytes())
    self.fingerprint = digest.hexdigest()[:16]

  def steps_for(self, epochs: int, batch_size: int) -> int:
    """Optimizer updates that visit every training row `epochs` times (the last batch rounds up)."""
    return -(-epochs * self.rows // batch_size)

  def train_batch(
    self, step: int, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    """This process's slice of the global batch for `step` of a constant batch."""
    return self.train_rows(step * batch_size, batch_size, process_index, process_count)

  def train_rows(
    self, first_row: int, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of rows first_row.. of the epoch order."""
    local = pipeline._check_shard(batch_size, process_index, process_count)
    start = first_row + process_index * local
    rows = np.fromiter((self._order[i] for i in range(start, start + local)), np.int64, local)
    return {k: v[rows] for k, v in self.train.items()}

  def eval_batches(
    self, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> list[dict[str, np.ndarray]]:
    """Every eval example once, in global batches of `batch_size` (the last padded with
    zero weights); this process's slice of each."""
    local = pipeline._check_shard(batch_size, process_index, process_count)
    count = len(next(iter(self.eval.values())))
    padded = -(-count // batch_size) * batch_size
    arrays = {
      k: np.concatenate([v, np.zeros((padded - count, *v.shape[1:]), v.dtype)])
      for k, v in self.eval.items()
    }
    return [
      {k: v[s + process_index * local : s + (process_index + 1) * local] for k, v in arrays.items()}
      for s in range(0, padded, batch_size)
    ]

  state = pipeline.LMData.state  # the same fields as pretraining's data position
  check_state = pipeline.LMData.check_state  # the same fields, the same refusal


def load(config: ml_collections.ConfigDict, tokenizer: Any) -> TaskData:
  """The task examples of `config.finetune` (files or a catalog dataset) for
  `config.train.objective`, encoded."""
  f, objective = config.finetune, config.train.objective
  if f.source:
    identity, splits = catalog_records(config)
  else:
    identity = os.path.abspath(os.path.expanduser(f.train_file))
    splits = {
      split: (os.path.expanduser(path), None)
      for split, path in (("train", f.train_file), ("validation", f.eval_file))
    }

  def encode(name, records):
    if objective == "sft":
      return encode_sft(name, config, tokenizer, records)
    return encode_task(name, config, tokenizer, objective, records)

  (train_name, _), (eval_name, _) = splits["train"], splits["validation"]
  train, eval_ = encode(*splits["train"]), encode(*splits["validation"])
  if objective != "sft" and train["tokens"].shape[1] != eval_["tokens"].shape[1]:
    raise TaskDataError(
      f"{eval_name}: {eval_['tokens'].shape[1]} sequences per example, "
      f"{train_name} has {train['tokens'].shape[1]}; use the same task"
    )
  return TaskData(train, eval_, config.train.seed, f"{objective}|{identity}", config.model.seq_len)


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Problems with the finetune.* settings a task objective reads (files are checked on load)."""
  f, errors = config.finetune, []
  if config.train.objective in ("lm", "distill"):  # token streams, not task files
    return errors
  for name in ("train_file", "eval_file"):
    path = os.path.expanduser(f[name])
    if f.source and f[name]:
      errors.append(
        f"finetune.{name}={f[name]!r}: finetune.source={f.source!r} gives the examples; "
        f"set finetune.{name}='' (or finetune.source='' to read files)"
      )
    elif not f.source and (
      not f[name] or os.path.splitext(path)[1].lower() not in FORMATS or not os.path.isfile(path)
    ):
      errors.append(
        f"finetune.{name}={f[name]!r}: train.objective={config.train.objective!r} "
        f"needs an existing {'/'.join(FORMATS)} file, or finetune.source (a TFDS dataset)"
      )
  if f.source:
    errors.extend(catalog.name_problems(f.source, "finetune.source"))
  if f.too_long not in TOO_LONG:
    errors.append(f"finetune.too_long={f.too_long!r}: use one of {TOO_LONG}")
  return errors
