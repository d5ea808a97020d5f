"""Trains SentencePiece models for source code, cached by content and settings.

Trainer options are chosen so that `decode(encode(text)) == text` for any text,
indentation and newlines included: identity normalisation, no dummy prefix,
no whitespace squashing, whitespace-only pieces allowed (indentation runs
become single tokens) and byte fallback for characters outside the vocabulary.
"""

import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm
from absl import logging

from gptjax.data import paths
from gptjax.data.tokenizer import SPM_FILENAME, SentencePieceTokenizer

# Bump when trainer options below change, so cached models are not reused.
TRAINER_VERSION = 1
# SentencePiece drops training sentences longer than max_sentence_length bytes,
# so documents are cut at line boundaries into chunks no longer than this.
CHUNK_CHARS = 4096
MAX_SENTENCE_BYTES = 4 * CHUNK_CHARS
UNK_ID, EOS_ID = 0, 1


def sample_chunks(texts: Iterable[str], sample_chars: int) -> list[str]:
  """The first `sample_chars` characters of `texts`, as line-aligned chunks.

  Documents keep their given (deterministic) order, so the sample, and hence
  the trained model, depends only on the dataset and the settings; `texts` is
  consumed lazily, so only the sample is ever read from a large corpus.
  """
  chunks, total = [], 0
  for text in texts:
    for chunk in _line_chunks(text):
      if total >= sample_chars:
        return chunks
      chunk = chunk[: sample_chars - total]
      chunks.append(chunk)
      total += len(chunk)
  return chunks


def _line_chunks(text: str) -> Iterator[str]:
  """Consecutive lines (newlines kept) grouped into chunks of <= CHUNK_CHARS."""
  current = ""
  for line in text.splitlines(keepends=True):
    for start in range(0, len(line), CHUNK_CHARS):
      piece = line[start : start + CHUNK_CHARS]
      if len(current) + len(piece) > CHUNK_CHARS:
        yield current
        current = ""
      current += piece
  if current:
    yield current


def train(chunks: Sequence[str], vocab_size: int, model_type: str) -> bytes:
  """Trains a model on `chunks` in memory and returns the serialised proto."""
  model = io.BytesIO()
  spm.set_random_generator_seed(0)  # Unigram's EM sampling must be repeatable.
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(chunks),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_digits=True,
      character_coverage=0.9995,
      max_sentence_length=MAX_SENTENCE_BYTES,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      unk_id=UNK_ID,
      eos_id=EOS_ID,
      bos_id=-1,
      pad_id=-1,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise ValueError(
      f"SentencePiece training failed for data.vocab_size={vocab_size}, "
      f"data.spm_model_type={model_type!r} on {len(chunks)} chunks: {e}. "
      "If the vocabulary is too large for the sample, lower data.vocab_size "
      "or raise data.tokenizer_sample_chars"
    ) from e
  return model.getvalue()


def cache_key(dataset_identity: str, vocab_size: int, model_type: str, sample_chars: int) -> str:
  """Hash of everything that determines the trained model."""
  settings = dict(
    dataset=dataset_identity,
    vocab_size=vocab_size,
    model_type=model_type,
    sample_chars=sample_chars,
    sentencepiece=spm.__version__,
    trainer=TRAINER_VERSION,
  )
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train(
  dataset_identity: str,
  train_texts: Iterable[str],
  vocab_size: int,
  model_type: str,
  sample_chars: int,
) -> SentencePieceTokenizer:
  """Returns the cached model for these settings, training it on first use.

  A process that finds another one training the same model waits for it and
  loads its result (`paths.building`), rather than training it a second time.
  """
  key = cache_key(dataset_identity, vocab_size, model_type, sample_chars)
  path = os.path.join(paths.cache_root(), "tokenizers", key, SPM_FILENAME)
  if not os.path.isfile(path):
    with paths.building(path):
      if not os.path.isfile(path):  # not trained by another process while this one waited
        chunks = sample_chunks(train_texts, sample_chars)
        logging.info(
          "tokenizer: training SentencePiece %s vocab=%d on %d chars (%d chunks) of %s",
          model_type,
          vocab_size,
          sum(map(len, chunks)),
          len(chunks),
          dataset_identity,
        )
        start = time.perf_counter()
        proto = train(chunks, vocab_size, model_type)
        logging.info("tokenizer: trained in %.1fs, cached at %s", time.perf_counter() - start, path)
        paths.atomic_write_bytes(path, proto)
        return SentencePieceTokenizer(proto, origin=path)
  logging.info("tokenizer: reusing cached SentencePiece model %s", path)
  return SentencePieceTokenizer.from_file(path)
