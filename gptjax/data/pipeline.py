"""Deterministic training batches and a fixed evaluation set.

The training stream is a function of (seed, step, data) only: epoch e visits
the train rows in a permutation given by Grain's `MapDataset.shuffle` (an index
shuffle: row k of epoch e is computed, never a materialised N-element array, so
a C4-sized row count costs nothing), epochs are concatenated with a fresh seed
each (`repeat`), and step s takes positions [s*B, (s+1)*B) of that infinite
stream. So resuming needs nothing but the step number, and each process
computes its own contiguous slice of the global batch without coordination:
the order is the same whatever the number of processes.

Rows are gathered from the on-disk token stream per batch, so memory use does
not grow with the corpus.

The eval set is a sample of validation rows drawn by a permutation with a fixed
seed of its own (EVAL_SEED, not train.seed), so it is spread over the whole split
and is the same for every run with the same data, tokenizer and seq_len: a sweep's
members are scored on identical rows. A prefix of the split in file order would
be a few documents, not the split. Eval rows are not part of a checkpoint's data
state (the train order is), so choosing them differently needs no new
ORDER_VERSION.
"""

import dataclasses
import hashlib
import json
from typing import Any

import grain
import numpy as np
from absl import logging

from gptjax.data import baselines, packing
from gptjax.data.token_cache import TokenFile

# Bump when the row order or row layout changes: old checkpoints then refuse to
# resume instead of silently continuing on different data.
ORDER_VERSION = "grain-shuffle-repeat-v2"  # v2: epoch_orders seeds by a hash of the seed
# Seeds the choice of eval rows; independent of train.seed so every run of a sweep
# is scored on the same rows. Changing it (or the way rows are drawn) changes
# every eval loss, so treat it like ORDER_VERSION.
EVAL_SEED = 20_240_611


def epoch_orders(rows: int, seed: int) -> grain.MapDataset:
  """Row ids of every epoch, one shuffle of range(rows) after another, from `seed`.

  grain's repeated shuffle seeds epoch e with (its seed + e), so seeding it with
  train.seed itself would give seed s at epoch e + 1 the order of seed s + 1 at epoch
  e: a sweep over seeds 0, 1, 2 of a several-epoch run would share most of its data
  orders. A hash of the seed puts different seeds' epochs far apart.
  """
  digest = hashlib.sha256(f"gptjax train order, seed {seed}".encode()).digest()
  return grain.MapDataset.range(rows).shuffle(seed=int.from_bytes(digest[:4], "big") >> 1).repeat()


# The unigram baseline reads at most this many tokens per split.
UNIGRAM_MAX_TOKENS = 100_000_000


@dataclasses.dataclass(frozen=True)
class SplitStats:
  documents: int
  tokens: int  # Including one EOS per document; all of them are targets.
  rows: int
  wrapped_tokens: int  # Targets repeated to complete the last row.


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """The fixed validation rows an eval scores, and which documents their targets are in.

  `batches` are this process's slices (tokens int32 [B/P, seq_len+1], mask float32
  [B/P, seq_len]) of global batches of B rows; the last is padded with zero-mask
  rows, so eval compiles once. sum(loss * mask) / sum(mask) is the exact mean over
  the chosen rows' validation targets (wrapped repeats have mask 0).

  A segment is the targets one row takes from one document. `segments` (int32
  [len(batches) * B, seq_len], over the global batches, same on every process)
  gives each target's segment, -1 where the mask is 0; `segment_rows`,
  `segment_documents` and `segment_tokens` (int64 [K]) say which validation row
  and document each segment is, and how many targets it has. Documents are the
  clusters of the SEM (gptjax.eval_stats); row ids let reports pair runs.
  """

  batches: list[tuple[np.ndarray, np.ndarray]]
  rows: np.ndarray  # int64 [count], ascending validation row ids
  segments: np.ndarray
  segment_rows: np.ndarray
  segment_documents: np.ndarray
  segment_tokens: np.ndarray


def _check_shard(batch_size: int, process_index: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(
      f"batch_size={batch_size} is not divisible by "
      f"process_count={process_count}; use a multiple of it"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index}: must be in [0, process_count={process_count})"
    )
  return batch_size // process_count


class LMData:
  """Packed train/validation rows of one tokenized corpus.

  `identity` names the dataset and tokenizer; with seq_len and the stream sizes
  it forms the fingerprint that `state`/`check_state` compare on resume.
  `stats` maps each split name to its `SplitStats`.
  """

  def __init__(
    self,
    train: TokenFile,
    validation: TokenFile,
    seq_len: int,
    seed: int,
    vocab_size: int,
    eos_id: int,
    identity: str,
  ):
    self.seq_len = seq_len
    self.seed = seed
    self.vocab_size = vocab_size
    self.eos_id = eos_id
    self.identity = identity
    self.train_tokens = train.tokens
    self.validation_tokens = validation.tokens
    self.stats = {}
    for split, token_file in (("train", train), ("validation", validation)):
      tokens = len(token_file.tokens)
      rows = packing.num_rows(tokens, seq_len)
      self.stats[split] = SplitStats(
        documents=token_file.documents,
        tokens=tokens,
        rows=rows,
        wrapped_tokens=rows * seq_len - tokens,
      )
      logging.info(
        "data %s: %d documents, %d tokens, %d rows of %d+1 "
        "(%d wrapped tokens complete the last row)",
        split,
        token_file.documents,
        tokens,
        rows,
        seq_len,
        rows * seq_len - tokens,
      )
    self._order = epoch_orders(self.stats["train"].rows, seed)
    self.fingerprint = hashlib.sha256(
      json.dumps(
        [identity, seq_len, len(train.tokens), len(validation.tokens), ORDER_VERSION]
      ).encode()
    ).hexdigest()[:16]

  def stream_rows(self, start: int, count: int) -> np.ndarray:
    """Train row ids at positions [start, start+count) of the epoch-concatenated stream."""
    return np.fromiter(
      (self._order[i] for i in range(start, start + count)), dtype=np.int64, count=count
    )

  def train_batch(
    self, step: int, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> np.ndarray:
    """This process's slice of the global batch for `step` of a constant batch,
    int32 [B/P, seq_len+1]."""
    if step < 0:
      raise ValueError(f"step={step}: must be >= 0")
    return self.train_rows(step * batch_size, batch_size, process_index, process_count)

  def train_rows(
    self, first_row: int, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> np.ndarray:
    """This process's slice of the global batch of stream rows first_row.. (the data
    order is a function of rows consumed, so a batch ramp's growing batches continue it)."""
    local = _check_shard(batch_size, process_index, process_count)
    rows = self.stream_rows(first_row + process_index * local, local)
    return packing.gather_rows(self.train_tokens, rows, self.seq_len).tokens

  def eval_rows(self, max_sequences: int) -> np.ndarray:
    """The validation row ids eval scores: the first `max_sequences` of a permutation
    seeded by EVAL_SEED, ascending (so reading them walks the file forward).

    A larger `max_sequences` keeps these rows and adds more.
    """
    rows = self.stats["validation"].rows
    count = min(max_sequences, rows)
    if count < max_sequences:
      logging.info("data validation: only %d rows available (asked for %d)", count, max_sequences)
    order = grain.MapDataset.range(rows).shuffle(seed=EVAL_SEED)
    return np.sort(np.fromiter((order[i] for i in range(count)), dtype=np.int64, count=count))

  def eval_batches(
    self, batch_size: int, max_sequences: int, process_index: int = 0, process_count: int = 1
  ) -> EvalSet:
    """`eval_rows(max_sequences)` as an `EvalSet` of global batches of `batch_size` rows.

    Each process gets its contiguous slice [B/P] of every global batch.
    """
    local = _check_shard(batch_size, process_index, process_count)
    rows = self.eval_rows(max_sequences)
    count = len(rows)
    padded = -(-count // batch_size) * batch_size
    packed = packing.gather_rows(self.validation_tokens, rows, self.seq_len)
    tokens = np.zeros((padded, self.seq_len + 1), dtype=np.int32)
    mask = np.zeros((padded, self.seq_len), dtype=np.float32)
    tokens[:count], mask[:count] = packed.tokens, packed.target_mask
    shard = slice(process_index * local, (process_index + 1) * local)
    batches = [
      (tokens[start : start + batch_size][shard], mask[start : start + batch_size][shard])
      for start in range(0, padded, batch_size)
    ]

    ends = packing.document_ends(self.validation_tokens, self.eos_id)
    documents = packing.target_documents(ends, rows, self.seq_len, len(self.validation_tokens))
    valid = documents >= 0
    # One key per (row, document) pair, ordered by row, then document.
    keys = np.arange(count, dtype=np.int64)[:, None] * len(ends) + documents
    unique_keys, first, inverse = np.unique(keys[valid], return_index=True, return_inverse=True)
    segments = np.full((padded, self.seq_len), -1, dtype=np.int32)
    segments[:count][valid] = inverse
    return EvalSet(
      batches=batches,
      rows=rows,
      segments=segments,
      segment_rows=np.broadcast_to(rows[:, None], documents.shape)[valid][first],
      segment_documents=documents[valid][first],
      segment_tokens=np.bincount(inverse, minlength=len(unique_keys)).astype(np.int64),
    )

  def state(self, step: int) -> dict[str, Any]:
    """The data position to save with a checkpoint (JSON-serialisable)."""
    return {
      "step": int(step),
      "seed": self.seed,
      "fingerprint": self.fingerprint,
      "dataset": self.identity,
      "seq_len": self.seq_len,
    }

  def check_state(self, state: dict[str, Any]) -> int:
    """Raises ValueError unless `state` (from `state`) describes this data; returns its step."""
    expected = self.state(int(state.get("step", 0)))
    differences = [
      f"{key}: checkpoint {state.get(key)!r}, now {expected[key]!r}"
      for key in ("seed", "fingerprint", "dataset", "seq_len")
      if state.get(key) != expected[key]
    ]
    if differences:
      raise ValueError(
        "the checkpoint was trained on different data, so resuming would not "
        "continue its data order:\n    "
        + "\n    ".join(differences)
        + "\n  restore the data.*, train.seed and model.seq_len settings (and the "
        "corpus files) the run started with, or use a new workdir"
      )
    return expected["step"]

  def unigram_cross_entropy(self) -> float:
    """Nats/token of a unigram model of train tokens on validation targets.

    Both splits are capped at UNIGRAM_MAX_TOKENS so this stays cheap on huge corpora.
    """
    return baselines.unigram_cross_entropy(
      self.train_tokens[:UNIGRAM_MAX_TOKENS],
      self.validation_tokens[:UNIGRAM_MAX_TOKENS],
      self.vocab_size,
    )
