"""Caches each split's token stream on disk so reruns skip tokenization.

The key combines the dataset identity and the tokenizer fingerprint (a hash of
the model itself), so any change to either produces a new entry. Rows for a
given seq_len are derived from the stream in milliseconds, so seq_len is not
part of the key and one cache serves every sequence length.
"""

import hashlib
import io
import os
import time
from collections.abc import Sequence

from absl import logging
import numpy as np

from gptjax.data import packing, paths
from gptjax.data.tokenizer import Tokenizer


def cache_path(dataset_identity: str, tokenizer: Tokenizer, split: str) -> str:
  key = hashlib.sha256(f'{dataset_identity}\0{tokenizer.fingerprint()}'.encode()
                       ).hexdigest()[:16]
  return os.path.join(paths.cache_root(), 'tokens', key, f'{split}.npy')


def load_or_encode(dataset_identity: str, split: str, texts: Sequence[str],
                   tokenizer: Tokenizer) -> np.ndarray:
  """The split's EOS-separated token stream, from cache or freshly encoded."""
  path = cache_path(dataset_identity, tokenizer, split)
  if os.path.isfile(path):
    logging.info('tokens: reusing cached %s stream %s', split, path)
    return np.load(path)
  start = time.perf_counter()
  stream = packing.concat_documents(tokenizer.encode_batch(texts), tokenizer.eos_id)
  logging.info('tokens: encoded %s: %d documents, %d chars -> %d tokens in %.1fs',
               split, len(texts), sum(map(len, texts)), len(stream),
               time.perf_counter() - start)
  buffer = io.BytesIO()
  np.save(buffer, stream)
  paths.atomic_write_bytes(path, buffer.getvalue())
  return stream
