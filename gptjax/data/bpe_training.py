"""Trains GPT-2-style byte-level BPE tokenizers (Hugging Face `tokenizers`) on a corpus.

The counterpart of spm_training for `data.tokenizer='bpe'`: GPT-2's pre-tokenizer
regex and byte alphabet, so every string encodes (no unknown token) and decodes
back exactly, and `<|endoftext|>` as the one special token. Cached by content and
settings like the SentencePiece models.
"""

import hashlib
import json
import os
import time
from collections.abc import Iterable

import tokenizers
from absl import logging

from gptjax.data import paths
from gptjax.data.spm_training import sample_chunks
from gptjax.data.tokenizer import HF_EOS, HF_FILENAME, HFTokenizer

TRAINER_VERSION = 1  # bump when the trainer settings below change


def train(chunks: Iterable[str], vocab_size: int) -> str:
  """A byte-level BPE with `vocab_size` ids (256 bytes, merges, EOS last) as tokenizer.json."""
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=vocab_size - 1,
    show_progress=False,
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  bpe.train_from_iterator(chunks, trainer)
  bpe.add_special_tokens([HF_EOS])  # after training, so it is the last id, as in GPT-2
  return bpe.to_str()


def load_or_train(
  dataset_identity: str, train_texts: Iterable[str], vocab_size: int, sample_chars: int
) -> HFTokenizer:
  """The cached tokenizer for these settings, trained on first use."""
  settings = dict(
    dataset=dataset_identity,
    vocab_size=vocab_size,
    sample_chars=sample_chars,
    tokenizers=tokenizers.__version__,
    trainer=TRAINER_VERSION,
  )
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(paths.cache_root(), "tokenizers", f"bpe-{key}", HF_FILENAME)
  if not os.path.isfile(path):
    with paths.building(path):
      if not os.path.isfile(path):
        chunks = sample_chunks(train_texts, sample_chars)
        logging.info(
          "tokenizer: training byte-level BPE vocab=%d on %d chars of %s",
          vocab_size,
          sum(map(len, chunks)),
          dataset_identity,
        )
        start = time.perf_counter()
        text = train(chunks, vocab_size)
        logging.info("tokenizer: trained in %.1fs, cached at %s", time.perf_counter() - start, path)
        paths.atomic_write_bytes(path, text.encode())
        return HFTokenizer(text, origin=path)
  logging.info("tokenizer: reusing cached byte-level BPE %s", path)
  return HFTokenizer.from_path(path)
