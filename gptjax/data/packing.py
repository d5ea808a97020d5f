"""Turns tokenized documents into fixed-length training rows without losing tokens.

Layout: the token stream S is every document followed by EOS. Row i holds
S'[i*L : i*L + L + 1] where S' = [EOS] + S and L = seq_len, so consecutive rows
share one boundary token and each token of S is the target of exactly one
position (the first document is predicted from EOS, like all the others).
The last row is completed by wrapping around to the start of S; those wrapped
targets are repeats, flagged 0 in `target_mask` so evaluation counts every
token exactly once while training simply sees a few tokens twice.

Rows are gathered from S on demand (S may be a memmap far larger than RAM), so
any seq_len can be served from one token file.

Target q of S (the token at stream position q) belongs to document d when d EOS
tokens precede it: a document's own EOS is its last target, and the token after
it is the first target of the next document (`target_documents`).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

SCAN_CHUNK = 1 << 24  # Tokens per step of the EOS scan, bounding its temporary memory.


@dataclasses.dataclass(frozen=True)
class PackedRows:
  """`tokens` int32 [rows, seq_len + 1]; `target_mask` float32 [rows, seq_len]."""

  tokens: np.ndarray
  target_mask: np.ndarray

  @property
  def num_rows(self) -> int:
    return self.tokens.shape[0]


def concat_documents(documents: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
  """The stream S: each document's ids followed by `eos_id`, as int32."""
  lengths = np.fromiter((len(d) + 1 for d in documents), dtype=np.int64, count=len(documents))
  stream = np.empty(int(lengths.sum()), dtype=np.int32)
  offset = 0
  for document, length in zip(documents, lengths):
    stream[offset : offset + length - 1] = document
    stream[offset + length - 1] = eos_id
    offset += length
  return stream


def num_rows(num_tokens: int, seq_len: int) -> int:
  """ceil(num_tokens / seq_len): every token of the stream is a target once."""
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len}: must be a positive number of tokens")
  if num_tokens == 0:
    raise ValueError("cannot pack an empty token stream; the split has no documents")
  return -(-num_tokens // seq_len)


def gather_rows(stream: np.ndarray, row_ids: np.ndarray, seq_len: int) -> PackedRows:
  """Rows `row_ids` of an EOS-terminated stream (module docstring), in that order."""
  num_tokens = len(stream)
  num_rows(num_tokens, seq_len)  # Validates.
  # Position p of S' is S[p - 1]; S ends with EOS, so S'[0] = S[-1] = EOS.
  positions = (
    np.asarray(row_ids, dtype=np.int64)[:, None] * seq_len
    + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    - 1
  )
  tokens = stream[positions % num_tokens].astype(np.int32)
  target_mask = (positions[:, 1:] < num_tokens).astype(np.float32)
  return PackedRows(tokens=tokens, target_mask=target_mask)


def pack(stream: np.ndarray, seq_len: int) -> PackedRows:
  """All ceil(len/seq_len) rows of a stream (for small streams and tests)."""
  return gather_rows(stream, np.arange(num_rows(len(stream), seq_len)), seq_len)


def document_ends(stream: np.ndarray, eos_id: int) -> np.ndarray:
  """Stream positions of every EOS, int64 ascending: document d ends at position [d].

  Scanned in chunks, so a memmap larger than RAM is read once and never held.
  """
  return np.concatenate(
    [
      np.flatnonzero(stream[start : start + SCAN_CHUNK] == eos_id) + start
      for start in range(0, len(stream), SCAN_CHUNK)
    ]
  ).astype(np.int64)


def target_documents(
  ends: np.ndarray, row_ids: np.ndarray, seq_len: int, num_tokens: int
) -> np.ndarray:
  """Document index (int64 [rows, seq_len]) of each target of rows `row_ids`.

  `ends` is `document_ends` of the stream of `num_tokens`; wrapped targets
  (target_mask 0 in `gather_rows`) get -1.
  """
  positions = (
    np.asarray(row_ids, dtype=np.int64)[:, None] * seq_len
    + np.arange(seq_len, dtype=np.int64)[None, :]
  )
  documents = np.searchsorted(ends, positions, side="left").astype(np.int64)
  return np.where(positions < num_tokens, documents, -1)
