"""Data for gptjax: source -> TFDS ArrayRecord dataset -> tokenizer -> token file -> batches.

`load` is what training calls; every expensive step (dataset preparation,
tokenizer training, tokenization) is cached under `$GPTJAX_CACHE` (datasets
under `data.data_dir`), keyed by what determines its output, so a second run
starts in about a second.
"""

import os
from collections.abc import Iterable
from typing import Any

import ml_collections
from absl import logging

from gptjax.data import (
  bpe_training,
  corpus,
  documents,
  paths,
  sources,
  spm_training,
  tasks,
  token_cache,
)
from gptjax.data.pipeline import EvalSet, LMData, SplitStats
from gptjax.data.tokenizer import (
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  load_saved,
  save_to_workdir,
)

__all__ = [
  "ByteTokenizer",
  "EvalSet",
  "HFTokenizer",
  "LMData",
  "SentencePieceTokenizer",
  "SplitStats",
  "Tokenizer",
  "load",
  "load_corpus",
  "load_saved",
  "save_tokenizer",
  "validate",
]

SPM_MODEL_TYPES = ("bpe", "unigram")
HF_PREFIX = "hf:"  # data.tokenizer='hf:PATH': a Hugging Face tokenizer.json (or its directory)
# Byte fallback reserves 256 pieces; unk and eos take two more.
MIN_SPM_VOCAB = 259


def validate(data_config: ml_collections.ConfigDict) -> list[str]:
  """All problems with `data_config`, each naming the field, value and fix."""
  problems = []

  def get(field: str) -> Any:
    if field not in data_config:
      problems.append(f"data.{field} is missing; define it in the base config")
      return None
    return data_config[field]

  if get("source") is not None:
    problems.extend(sources.problems(data_config))
  percent = get("validation_percent")
  if percent is not None and (not isinstance(percent, int) or not 1 <= percent <= 99):
    problems.append(f"data.validation_percent={percent!r}: use an integer in 1..99")
  tokenizer = get("tokenizer")
  if isinstance(tokenizer, str) and tokenizer.startswith(HF_PREFIX):
    if not os.path.exists(os.path.expanduser(tokenizer[len(HF_PREFIX) :])):
      problems.append(
        f"data.tokenizer={tokenizer!r}: no such file or directory; give "
        "'hf:' plus a tokenizer.json or a directory holding one"
      )
  elif tokenizer is not None and tokenizer not in ("sentencepiece", "bpe", "bytes"):
    if not (isinstance(tokenizer, str) and os.path.isfile(os.path.expanduser(tokenizer))):
      problems.append(
        f"data.tokenizer={tokenizer!r}: use 'sentencepiece', "
        "'bpe', 'bytes', 'hf:PATH' (a tokenizer.json) or the path of "
        "an existing SentencePiece .model file"
      )
  if tokenizer in ("sentencepiece", "bpe"):
    vocab_size = get("vocab_size")
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < MIN_SPM_VOCAB):
      problems.append(
        f"data.vocab_size={vocab_size!r}: use an integer >= "
        f"{MIN_SPM_VOCAB} (256 byte pieces + special pieces + merged pieces)"
      )
  if tokenizer == "sentencepiece":
    model_type = get("spm_model_type")
    if model_type is not None and model_type not in SPM_MODEL_TYPES:
      problems.append(f"data.spm_model_type={model_type!r}: use one of {SPM_MODEL_TYPES}")
  for field in ("tokenizer_sample_chars", "eval_sequences"):
    value = get(field)
    if value is not None and (not isinstance(value, int) or value < 1):
      problems.append(f"data.{field}={value!r}: use a positive integer")
  data_dir = get("data_dir")
  if data_dir is not None and not isinstance(data_dir, str):
    problems.append(
      f"data.data_dir={data_dir!r}: use a directory path (local or "
      "gs://), or '' for $GPTJAX_CACHE/tensorflow_datasets"
    )
  for field in ("train_split", "eval_split", "text_field", "jsonl_field"):
    value = get(field)
    if value is not None and (not isinstance(value, str) or not value):
      problems.append(f"data.{field}={value!r}: use a non-empty string")
  txt_documents = get("txt_documents")
  if txt_documents is not None and txt_documents not in documents.TXT_DOCUMENTS:
    problems.append(f"data.txt_documents={txt_documents!r}: use one of {documents.TXT_DOCUMENTS}")
  for field in ("download", "document_mask"):
    value = get(field)
    if value is not None and not isinstance(value, bool):
      problems.append(f"data.{field}={value!r}: use True or False")
  return problems


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError listing every problem of the data and task settings of a whole
  config, before anything is prepared (config.validate checks the rest)."""
  _raise_problems(validate(config.data) + tasks.problems(config))


def _raise_problems(problems: list[str]) -> None:
  if problems:
    raise ValueError("invalid data config:\n  " + "\n  ".join(problems))


def load(
  data_config: ml_collections.ConfigDict, seq_len: int, seed: int
) -> tuple[Tokenizer, LMData]:
  """Prepares (or reuses) the configured source and returns tokenizer and batches.

  Writes only to the caches, never to a run directory: training saves the
  tokenizer there (save_tokenizer) once its start is accepted.
  """
  _raise_problems(validate(data_config))
  identity, splits, text_field = sources.open_sources(data_config)
  return _load(identity, splits, text_field, data_config, seq_len, seed)


def load_corpus(
  root: str, data_config: ml_collections.ConfigDict, seq_len: int, seed: int
) -> tuple[Tokenizer, LMData]:
  """`load` with the embedded corpus rules applied to any directory `root` (tests use tiny ones)."""
  from gptjax.data import source_dataset  # pylint: disable=import-outside-toplevel

  identity, splits = source_dataset.prepare(
    corpus.spec(root, data_config.validation_percent),
    paths.resolve_data_dir(data_config.data_dir),
  )
  return _load(identity, splits, "text", data_config, seq_len, seed)


def _load(
  identity: str,
  splits: sources.Sources,
  text_field: str,
  data_config: ml_collections.ConfigDict,
  seq_len: int,
  seed: int,
) -> tuple[Tokenizer, LMData]:
  tokenizer = _make_tokenizer(data_config, identity, sources.texts(splits["train"], text_field))
  files = {
    split: token_cache.load_or_encode(identity, split, source, text_field, tokenizer)
    for split, source in splits.items()
  }
  data = LMData(
    files["train"],
    files["validation"],
    seq_len=seq_len,
    seed=seed,
    vocab_size=tokenizer.vocab_size,
    eos_id=tokenizer.eos_id,
    identity=f"{identity}|{tokenizer.fingerprint()}",
  )
  logging.info(
    "data: %s, tokenizer %s (vocab %d)", identity, tokenizer.fingerprint(), tokenizer.vocab_size
  )
  return tokenizer, data


def save_tokenizer(tokenizer: Tokenizer, workdir: str) -> None:
  """Saves the tokenizer to WORKDIR/tokenizer, so sampling and resumed runs use
  exactly the tokenizer the checkpoints were trained with.

  Separate from `load` because a start that is then refused (a resume with other
  settings) must leave the run directory as it found it.
  """
  save_to_workdir(tokenizer, os.path.join(workdir, "tokenizer"))


def _make_tokenizer(
  data_config: ml_collections.ConfigDict, identity: str, train_texts: Iterable[str]
) -> Tokenizer:
  if data_config.tokenizer == "bytes":
    return ByteTokenizer()
  if data_config.tokenizer == "sentencepiece":
    return spm_training.load_or_train(
      identity,
      train_texts,
      data_config.vocab_size,
      data_config.spm_model_type,
      data_config.tokenizer_sample_chars,
    )
  if data_config.tokenizer == "bpe":
    return bpe_training.load_or_train(
      identity, train_texts, data_config.vocab_size, data_config.tokenizer_sample_chars
    )
  if data_config.tokenizer.startswith(HF_PREFIX):
    return HFTokenizer.from_path(os.path.expanduser(data_config.tokenizer[len(HF_PREFIX) :]))
  return SentencePieceTokenizer.from_file(os.path.expanduser(data_config.tokenizer))
