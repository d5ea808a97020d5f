"""Resolves `data.source` to prepared train/validation documents read through `tfds.data_source`.

Three kinds of source, one reading path: the embedded corpus and local file
globs are built by our own TFDS builder (`source_dataset`), catalog names by
TFDS's (`catalog`); all are ArrayRecord files read with random access and no
TensorFlow, so tokenization and batching never know which kind they got.
"""

import functools
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections

from gptjax.data import catalog, corpus, paths

LOCAL_SUFFIXES = (".txt", ".jsonl")
SPLITS = ("train", "validation")
Sources = dict[str, Sequence[dict]]


def kind(source: str) -> str:
  """'embedded', 'files' (a path or glob) or 'catalog' (a TFDS name)."""
  if source == "embedded":
    return "embedded"
  if (
    glob.has_magic(source) or source.endswith(LOCAL_SUFFIXES) or source.startswith(("/", ".", "~"))
  ):
    return "files"
  return "catalog"


def problems(data_config: ml_collections.ConfigDict) -> list[str]:
  """Problems with `data.source` that can be found without reading any data."""
  source = data_config.source
  if not isinstance(source, str) or not source:
    return [f"data.source={source!r}: use 'embedded', a TFDS name or a local glob"]
  if kind(source) == "files":
    if not source.endswith(LOCAL_SUFFIXES):
      return [
        f"data.source={source!r}: local globs must end in .txt or .jsonl "
        "(e.g. 'corpus/**/*.txt'); other names are TFDS catalog names"
      ]
    if not glob.glob(os.path.expanduser(source), recursive=True):
      return [
        f"data.source={source!r}: matches no files; check the path (relative "
        f"paths start at {os.getcwd()})"
      ]
  elif kind(source) == "catalog":
    return catalog.name_problems(source, "data.source")
  return []


def open_sources(data_config: ml_collections.ConfigDict) -> tuple[str, Sources, str]:
  """Prepares the configured source once and opens it.

  Returns (identity, {'train', 'validation'} -> data source, text feature name);
  the identity names exactly what was read and keys every downstream cache.
  """
  data_dir = paths.resolve_data_dir(data_config.data_dir)
  source = data_config.source
  if kind(source) == "catalog":
    identity, splits = catalog.prepare(
      source,
      data_dir,
      data_config.download,
      {"train": data_config.train_split, "validation": data_config.eval_split},
      {"text_field": data_config.text_field},
    )
    return identity, splits, data_config.text_field
  if kind(source) == "embedded":
    corpus_spec = corpus.spec(corpus.stdlib_root(), data_config.validation_percent)
  else:
    corpus_spec = corpus.spec(
      "",
      data_config.validation_percent,
      pattern=source,
      txt_documents=data_config.txt_documents,
      jsonl_field=data_config.jsonl_field,
    )
  opened = functools.cache(lambda: _prepare(corpus_spec, data_dir))
  return corpus.identity(corpus_spec), {s: Deferred(opened, s) for s in SPLITS}, "text"


def _prepare(corpus_spec: corpus.Spec, data_dir: str) -> Sources:
  from gptjax.data import source_dataset  # pylint: disable=import-outside-toplevel

  return source_dataset.prepare(corpus_spec, data_dir)[1]


class Deferred(Sequence):
  """One split of a local corpus, prepared and opened at its first read.

  The identity alone keys the tokenizer and token caches, so a start that finds them
  reads no document and never imports TFDS (0.3 s of a 3 s start on a 2-core CPU).
  """

  def __init__(self, opened: Callable[[], Sources], split: str) -> None:
    self._opened, self._split = opened, split

  def __len__(self) -> int:
    return len(self._opened()[self._split])

  def __getitem__(self, index: Any) -> Any:
    return self._opened()[self._split][index]

  def __getitems__(self, indices: list[int]) -> list[dict]:
    return self._opened()[self._split].__getitems__(indices)


def text_chunks(
  source: Sequence[dict], text_field: str, chunk_size: int = 1024
) -> Iterator[list[str]]:
  """The documents of a data source in order, decoded, `chunk_size` at a time."""
  for first in range(0, len(source), chunk_size):
    records = source.__getitems__(list(range(first, min(first + chunk_size, len(source)))))
    yield [record[text_field].decode("utf-8") for record in records]


def texts(source: Sequence[dict], text_field: str) -> Iterator[str]:
  """The documents of a data source in order, one at a time, read in chunks."""
  for chunk in text_chunks(source, text_field):
    yield from chunk
