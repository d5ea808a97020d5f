"""Data for gptjax: corpus -> TFDS dataset -> tokenizer -> packed, seeded batches.

`load` is what training calls; every expensive step (dataset preparation,
tokenizer training, tokenization) is cached under `$GPTJAX_CACHE`, keyed by
what determines its output, so a second run starts in about a second.
"""

import os
from typing import Any

from absl import logging
import ml_collections

from gptjax.data import corpus, paths, source_dataset, spm_training, token_cache
from gptjax.data.pipeline import LMData, SplitStats
from gptjax.data.tokenizer import (ByteTokenizer, SentencePieceTokenizer, Tokenizer,
                                   load_saved, save_to_workdir)

__all__ = ['ByteTokenizer', 'LMData', 'SentencePieceTokenizer', 'SplitStats',
           'Tokenizer', 'load', 'load_corpus', 'load_saved', 'validate']

SPM_MODEL_TYPES = ('bpe', 'unigram')
# Byte fallback reserves 256 pieces; unk and eos take two more.
MIN_SPM_VOCAB = 259


def validate(data_config: ml_collections.ConfigDict) -> list[str]:
  """All problems with `data_config`, each naming the field, value and fix."""
  problems = []

  def get(field: str) -> Any:
    if field not in data_config:
      problems.append(f'data.{field} is missing; define it in the base config')
      return None
    return data_config[field]

  source = get('source')
  if source is not None and source != 'embedded':
    problems.append(
        f'data.source={source!r}: not supported yet; only \'embedded\' (the '
        'Python standard library source of this interpreter) is implemented, '
        'TFDS names and local globs come later')
  percent = get('validation_percent')
  if percent is not None and (not isinstance(percent, int) or not 1 <= percent <= 99):
    problems.append(f'data.validation_percent={percent!r}: use an integer in 1..99')
  tokenizer = get('tokenizer')
  if tokenizer is not None and tokenizer not in ('sentencepiece', 'bytes'):
    if not (isinstance(tokenizer, str) and os.path.isfile(os.path.expanduser(tokenizer))):
      problems.append(f'data.tokenizer={tokenizer!r}: use \'sentencepiece\', '
                      '\'bytes\' or the path of an existing SentencePiece .model file')
  if tokenizer == 'sentencepiece':
    vocab_size = get('vocab_size')
    if vocab_size is not None and (not isinstance(vocab_size, int)
                                   or vocab_size < MIN_SPM_VOCAB):
      problems.append(f'data.vocab_size={vocab_size!r}: use an integer >= '
                      f'{MIN_SPM_VOCAB} (256 byte pieces + unk + eos + text pieces)')
    model_type = get('spm_model_type')
    if model_type is not None and model_type not in SPM_MODEL_TYPES:
      problems.append(f'data.spm_model_type={model_type!r}: use one of {SPM_MODEL_TYPES}')
  for field in ('tokenizer_sample_chars', 'eval_sequences'):
    value = get(field)
    if value is not None and (not isinstance(value, int) or value < 1):
      problems.append(f'data.{field}={value!r}: use a positive integer')
  data_dir = get('data_dir')
  if data_dir is not None and not isinstance(data_dir, str):
    problems.append(f'data.data_dir={data_dir!r}: use a directory path, or \'\' '
                    'for $GPTJAX_CACHE/tensorflow_datasets')
  return problems


def load(data_config: ml_collections.ConfigDict, seq_len: int, workdir: str,
         seed: int) -> tuple[Tokenizer, LMData]:
  """Prepares (or reuses) the configured corpus and returns tokenizer and batches.

  The tokenizer is also saved to `WORKDIR/tokenizer` so sampling and resumed
  runs use exactly the tokenizer the checkpoint was trained with.
  """
  problems = validate(data_config)
  if problems:
    raise ValueError('invalid data config:\n  ' + '\n  '.join(problems))
  return load_corpus(corpus.stdlib_root(), data_config, seq_len, workdir, seed)


def load_corpus(root: str, data_config: ml_collections.ConfigDict, seq_len: int,
                workdir: str, seed: int) -> tuple[Tokenizer, LMData]:
  """`load` for the source files under any directory `root` (tests use tiny ones)."""
  identity, sources = source_dataset.prepare(
      root, paths.resolve_data_dir(data_config.data_dir),
      data_config.validation_percent)
  texts = {split: source_dataset.read_texts(src) for split, src in sources.items()}
  tokenizer = _make_tokenizer(data_config, identity, texts['train'])
  save_to_workdir(tokenizer, os.path.join(workdir, 'tokenizer'))
  streams = {split: token_cache.load_or_encode(identity, split, split_texts, tokenizer)
             for split, split_texts in texts.items()}
  data = LMData(streams['train'], streams['validation'], seq_len=seq_len, seed=seed,
                vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id)
  logging.info('data: %s, tokenizer %s (vocab %d)', identity,
               tokenizer.fingerprint(), tokenizer.vocab_size)
  return tokenizer, data


def _make_tokenizer(data_config: ml_collections.ConfigDict, identity: str,
                    train_texts: list[str]) -> Tokenizer:
  if data_config.tokenizer == 'bytes':
    return ByteTokenizer()
  if data_config.tokenizer == 'sentencepiece':
    return spm_training.load_or_train(
        identity, train_texts, data_config.vocab_size, data_config.spm_model_type,
        data_config.tokenizer_sample_chars)
  return SentencePieceTokenizer.from_file(os.path.expanduser(data_config.tokenizer))
