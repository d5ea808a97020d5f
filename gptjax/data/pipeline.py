"""Deterministic training batches and a fixed evaluation set.

The training stream is a function of (seed, step) only: epoch e visits the
train rows in the order `default_rng((seed, e)).permutation(rows)`, epochs are
concatenated, and step s takes rows [s*B, (s+1)*B) of that infinite stream. So
resuming needs nothing but the step number, and each process can compute its
own contiguous slice of the global batch without coordination.
"""

import dataclasses
import functools

from absl import logging
import numpy as np

from gptjax.data import baselines, packing


@dataclasses.dataclass(frozen=True)
class SplitStats:
  documents: int
  tokens: int  # Including one EOS per document; all of them are targets.
  rows: int
  wrapped_tokens: int  # Targets repeated to complete the last row.


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_rows: int) -> np.ndarray:
  order = np.random.default_rng((seed, epoch)).permutation(num_rows)
  order.flags.writeable = False
  return order


def stream_rows(seed: int, num_rows: int, start: int, count: int) -> np.ndarray:
  """Row ids at positions [start, start+count) of the epoch-concatenated stream."""
  positions = np.arange(start, start + count, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_rows)
  rows = np.empty(count, dtype=np.int64)
  for epoch in np.unique(epochs):
    selected = epochs == epoch
    rows[selected] = _epoch_permutation(seed, int(epoch), num_rows)[offsets[selected]]
  return rows


class LMData:
  """Packed train/validation rows of one tokenized corpus.

  `train_rows` and `validation_rows` are `packing.PackedRows`; `stats` maps
  each split name to its `SplitStats`.
  """

  def __init__(self, train_stream: np.ndarray, validation_stream: np.ndarray,
               seq_len: int, seed: int, vocab_size: int, eos_id: int):
    self.seq_len = seq_len
    self.seed = seed
    self.vocab_size = vocab_size
    self._train_stream = train_stream
    self._validation_stream = validation_stream
    self.train_rows = packing.pack(train_stream, seq_len)
    self.validation_rows = packing.pack(validation_stream, seq_len)
    self.stats = {
        split: SplitStats(documents=int(np.count_nonzero(stream == eos_id)),
                          tokens=len(stream), rows=rows.num_rows,
                          wrapped_tokens=rows.num_rows * seq_len - len(stream))
        for split, stream, rows in (('train', train_stream, self.train_rows),
                                    ('validation', validation_stream, self.validation_rows))
    }
    for split, s in self.stats.items():
      logging.info('data %s: %d documents, %d tokens, %d rows of %d+1 '
                   '(%d wrapped tokens complete the last row)',
                   split, s.documents, s.tokens, s.rows, seq_len, s.wrapped_tokens)

  def train_batch(self, step: int, batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> np.ndarray:
    """This process's slice of the global batch for `step`, int32 [B/P, seq_len+1]."""
    if batch_size % process_count:
      raise ValueError(f'batch_size={batch_size} is not divisible by '
                       f'process_count={process_count}; use a multiple of it')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index}: must be in '
                       f'[0, process_count={process_count})')
    if step < 0:
      raise ValueError(f'step={step}: must be >= 0')
    local = batch_size // process_count
    start = step * batch_size + process_index * local
    rows = stream_rows(self.seed, self.train_rows.num_rows, start, local)
    return self.train_rows.tokens[rows]

  def eval_batches(self, batch_size: int, max_sequences: int
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `max_sequences` validation rows, in order, as (tokens, mask) pairs.

    Every batch has `batch_size` rows so eval compiles once: the last batch is
    padded with zero-mask rows. `mask` (float32 [B, seq_len]) weights targets,
    so sum(loss * mask) / sum(mask) is the exact mean over validation tokens.
    """
    count = min(max_sequences, self.validation_rows.num_rows)
    if count < max_sequences:
      logging.info('data validation: only %d rows available (asked for %d)',
                   count, max_sequences)
    batches = []
    for start in range(0, count, batch_size):
      stop = min(start + batch_size, count)
      tokens = np.zeros((batch_size, self.seq_len + 1), dtype=np.int32)
      mask = np.zeros((batch_size, self.seq_len), dtype=np.float32)
      tokens[:stop - start] = self.validation_rows.tokens[start:stop]
      mask[:stop - start] = self.validation_rows.target_mask[start:stop]
      batches.append((tokens, mask))
    return batches

  def unigram_cross_entropy(self) -> float:
    """Nats/token of a unigram model of train tokens on all validation targets."""
    return baselines.unigram_cross_entropy(self._train_stream,
                                           self._validation_stream, self.vocab_size)
