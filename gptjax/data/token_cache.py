"""Tokenizes each split once into a flat token file on disk, read back as a memmap.

The stream (every document followed by EOS) never has to fit in RAM: documents
are encoded in chunks and appended to a temp file (uint16 when the vocabulary
fits, else uint32), which is renamed into place only when complete, so an
interrupted run leaves no half-written cache and simply redoes the pass. A
small JSON sidecar records the counts that would otherwise need a full scan.

The key combines the dataset identity and the tokenizer fingerprint (a hash of
the model itself), so any change to either produces a new entry. seq_len is not
part of the key: rows are cut from the stream on the fly.
"""

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence

import numpy as np
import tqdm
from absl import logging

from gptjax.data import packing, paths, sources
from gptjax.data.tokenizer import Tokenizer

CHUNK_DOCUMENTS = 1024  # Documents per encode_batch call: large enough for threads.


@dataclasses.dataclass(frozen=True)
class TokenFile:
  """A split's token stream: `tokens` is a read-only memmap [num_tokens]."""

  tokens: np.ndarray
  documents: int
  chars: int


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def cache_path(dataset_identity: str, tokenizer: Tokenizer, split: str) -> str:
  key = hashlib.sha256(f"{dataset_identity}\0{tokenizer.fingerprint()}".encode()).hexdigest()[:16]
  return os.path.join(
    paths.cache_root(), "tokens", key, f"{split}.{token_dtype(tokenizer.vocab_size).name}.bin"
  )


def load_or_encode(
  dataset_identity: str, split: str, source: Sequence[dict], text_field: str, tokenizer: Tokenizer
) -> TokenFile:
  """The split's EOS-separated token stream, from cache or freshly encoded.

  A process that finds another one encoding the same split waits for it and
  reuses its file (`paths.building`), rather than encoding it a second time.
  """
  path = cache_path(dataset_identity, tokenizer, split)

  def cached() -> bool:
    return os.path.isfile(path) and os.path.isfile(path + ".json")

  if not cached():
    with paths.building(path):
      if not cached():  # not encoded by another process while this one waited
        _encode(source, text_field, tokenizer, path, f"tokenizing {split}")
  else:
    logging.info("tokens: reusing cached %s stream %s", split, path)
  with open(path + ".json") as f:
    meta = json.load(f)
  tokens = np.memmap(path, dtype=token_dtype(tokenizer.vocab_size), mode="r")
  return TokenFile(tokens=tokens, documents=meta["documents"], chars=meta["chars"])


def _encode(
  source: Sequence[dict], text_field: str, tokenizer: Tokenizer, path: str, description: str
) -> None:
  """Writes the stream to a temp file, then the sidecar, then renames the stream into place.

  The stream's rename comes last, so the pair exists only once both are whole.
  The caller holds the entry's lock, so one fixed temp name is enough, and a
  killed pass's leftover is overwritten by the next one instead of piling up.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  dtype = token_dtype(tokenizer.vocab_size)
  tmp_path = f"{path}.tmp"
  start, num_tokens, chars = time.perf_counter(), 0, 0
  with (
    open(tmp_path, "wb") as out,
    tqdm.tqdm(total=len(source), desc=description, unit="doc", mininterval=5) as bar,
  ):
    for texts in sources.text_chunks(source, text_field, CHUNK_DOCUMENTS):
      chars += sum(map(len, texts))
      stream = packing.concat_documents(tokenizer.encode_batch(texts), tokenizer.eos_id)
      stream.astype(dtype).tofile(out)
      num_tokens += len(stream)
      bar.update(len(texts))
  meta = {"documents": len(source), "tokens": num_tokens, "chars": chars}
  paths.atomic_write_bytes(path + ".json", json.dumps(meta).encode())
  os.replace(tmp_path, path)
  logging.info(
    "tokens: encoded %s: %d documents, %d chars -> %d tokens in %.1fs",
    path,
    len(source),
    chars,
    num_tokens,
    time.perf_counter() - start,
  )
