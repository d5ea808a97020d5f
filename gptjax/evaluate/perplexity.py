"""Perplexity of documents longer than the context: sliding windows, document-clustered error.

Window convention. A document is scored as training sees it: the end-of-text token,
then its tokens, then its own end-of-text token, every token after the first a target.
With context L = model.seq_len and stride S (1 <= S <= L):
- the first window predicts the first L targets from everything before each of them;
- each later window predicts the next S targets, its inputs being the L tokens before
  the last of them. So every target is scored exactly once, and each target after the
  first window is predicted from at least L - S + 1 tokens (at most L).
S = L gives disjoint windows: lm-evaluation-harness's `loglikelihood_rolling`, and the
cheapest. A smaller S gives every token more context for L / S times the compute.

The loss per token is the ratio of summed losses to scored tokens over all documents,
and its standard error treats documents as clusters (gptjax.eval_stats). Bits per
byte divide the summed loss in bits by the UTF-8 bytes of the targets (tokenizer's
`token_byte_lengths`; end-of-text counts no bytes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from gptjax import eval_stats
from gptjax.evaluate.scoring import Request, Scorer


def check_stride(stride: int, seq_len: int) -> None:
  if not 1 <= stride <= seq_len:
    raise ValueError(
      f"--stride={stride}: must be in [1, model.seq_len={seq_len}]; "
      f"{seq_len} gives disjoint windows"
    )


def windows(ids: Sequence[int], seq_len: int, stride: int) -> list[Request]:
  """The requests that score ids[1:] once each (module docstring); `ids[0]` is context only."""
  check_stride(stride, seq_len)
  requests, start = [], 1
  while start < len(ids):
    end = min(len(ids), start + (seq_len if start == 1 else stride))
    requests.append(Request(ids[max(0, end - seq_len - 1) : start], ids[start:end]))
    start = end
  return requests


def rolling_loglikelihood(
  scorer: Scorer, texts: Sequence[str], stride: int | None = None
) -> list[float]:
  """Summed log-probability of every token of each text after an end-of-text token (no
  end-of-text target after it, as lm-evaluation-harness's loglikelihood_rolling)."""
  tokenizer = scorer.tokenizer
  documents = [[tokenizer.eos_id] + tokenizer.encode(text) for text in texts]
  return [
    sum(s.logprob for s in scores)
    for scores in _score_documents(scorer, documents, stride or scorer.seq_len)
  ]


def _score_documents(
  scorer: Scorer, documents: Sequence[Sequence[int]], stride: int
) -> list[list[Any]]:
  """Each document's window scores; all windows of all documents share the batches."""
  per_document = [windows(ids, scorer.seq_len, stride) for ids in documents]
  flat = scorer.score([r for requests in per_document for r in requests])
  out, first = [], 0
  for requests in per_document:
    out.append(flat[first : first + len(requests)])
    first += len(requests)
  return out


def perplexity(scorer: Scorer, documents: Sequence[Sequence[int]], stride: int) -> dict[str, Any]:
  """Loss per token, its clustered standard error, perplexity and bits per byte.

  Each document is [end-of-text, tokens..., end-of-text], as `document_ids` gives them.
  """
  if not documents:
    raise ValueError("no documents to score")
  byte_lengths = scorer.tokenizer.token_byte_lengths()
  scores = _score_documents(scorer, documents, stride)
  losses = np.array([-sum(s.logprob for s in doc) for doc in scores])
  counts = np.array([len(ids) - 1 for ids in documents])
  total_bytes = sum(int(byte_lengths[np.asarray(ids[1:])].sum()) for ids in documents)
  loss, sem = eval_stats.cluster_ratio_mean(losses, counts, np.arange(len(documents)))
  return {
    "loss": loss,
    "loss_sem": sem,
    "ppl": math.exp(loss),
    "bits_per_byte": losses.sum() / math.log(2) / total_bytes if total_bytes else math.nan,
    "documents": len(documents),
    "tokens": int(counts.sum()),
    "bytes": total_bytes,
  }


def document_ids(
  data_config: ml_collections.ConfigDict, tokenizer: Any, split: str, max_documents: int = 0
) -> Iterator[np.ndarray]:
  """The documents of a split of any source training accepts, as int32 [eos, ids..., eos]
  (arrays, 4 bytes a token: a split of 100M tokens fits in memory).

  The split is tokenized once with the run's tokenizer and cached (gptjax.data's token
  cache). `max_documents` > 0 keeps that many, drawn with a fixed seed over the whole
  split in split order (so the same settings always give the same documents).
  """
  from gptjax import data
  from gptjax.data import packing, sources, token_cache

  problems = data.validate(data_config)
  if problems:
    raise ValueError("invalid data settings:\n  " + "\n  ".join(problems))
  identity, splits, text_field = sources.open_sources(data_config)
  stream = token_cache.load_or_encode(identity, split, splits[split], text_field, tokenizer).tokens
  ends = packing.document_ends(stream, tokenizer.eos_id)
  picked = np.arange(len(ends))
  if 0 < max_documents < len(ends):
    picked = np.sort(np.random.default_rng(0).choice(len(ends), max_documents, replace=False))
  for d in picked:
    start = ends[d - 1] + 1 if d else 0
    yield np.concatenate([[tokenizer.eos_id], stream[start : ends[d] + 1]]).astype(np.int32)
