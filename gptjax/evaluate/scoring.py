"""Log-likelihood of continuations given contexts: the one primitive every evaluation uses.

Conventions (those of GPT-3 and lm-evaluation-harness):
- A text request (context, continuation) is encoded whole, then split: the context's
  tokens are `encode(context)`, the continuation's are what `encode(context +
  continuation)` has after them. So tokens that BPE merges across the boundary score
  as the model would see them in running text. Whitespace that ends the context is
  moved to the front of the continuation first (" Paris" is one token, "Paris" after
  a space is not).
- Every context starts with the end-of-text token, as every training document does,
  so an empty context is fine: the continuation is then scored as a document's start.
  With `start_with_eos=False` only an empty context gets it: lm-evaluation-harness's
  convention for GPT-2 (and build-nanogpt's), which published figures use.
- A request longer than the model's context (model.seq_len + 1 tokens, inputs plus
  the last target) loses tokens from the left of its context; the whole continuation
  is always scored, and one longer than model.seq_len is refused.
- Log-probabilities are log-softmax over the ids the tokenizer has, as in
  gptjax.generate: embedding rows past the tokenizer's vocabulary are never chosen,
  so `is_greedy` means exactly "greedy decoding would produce this continuation".

Batching: requests are sorted by length, and each batch is right-padded to a length
bucket (generate.bucket: a power of two, at least 16, at most model.seq_len) with
`batch_size` rows, the last batch filled with dummy rows. So a Scorer compiles once
per bucket whatever the requests, and a request's score does not depend on what
shares its batch (rows never interact, and padding sits after the scored tokens,
where causal attention cannot see it).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.generate import bucket, mask_vocab
from gptjax.metrics import format_duration

PROGRESS_EVERY_S = 10.0  # seconds between progress lines on stderr


@dataclasses.dataclass(frozen=True)
class Request:
  """Token ids (lists or int arrays): the context (at least one id) and the continuation to
  score after it."""

  context: Sequence[int]
  continuation: Sequence[int]


@dataclasses.dataclass(frozen=True)
class Score:
  logprob: float  # sum of the continuation's token log-probabilities, in nats
  is_greedy: bool  # every continuation token is the argmax given what precedes it
  tokens: int  # continuation tokens scored


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
  """Moves whitespace that ends `context` to the front of `continuation`."""
  stripped = context.rstrip()
  return stripped, context[len(stripped) :] + continuation


def encode_pair(
  tokenizer: Any, context: str, continuation: str, start_with_eos: bool = True
) -> Request:
  """The token request of a text pair (module docstring: joint encoding, end-of-text first)."""
  context, continuation = split_whitespace(context, continuation)
  whole = tokenizer.encode(context + continuation)
  context_ids = tokenizer.encode(context) if context else []
  start = [tokenizer.eos_id] if start_with_eos or not context_ids else []
  return Request(start + whole[: len(context_ids)], whole[len(context_ids) :])


def _score_rows(
  model: Any, params: Any, inputs: jax.Array, targets: jax.Array, *, vocab_limit: int
) -> tuple[jax.Array, jax.Array]:
  """Log-probability of each target [batch, width] and whether it is the argmax."""
  logits, _ = model.apply({"params": params}, inputs, deterministic=True)
  logits = mask_vocab(logits, vocab_limit)
  logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[
    ..., 0
  ]
  return logprobs, jnp.argmax(logits, axis=-1) == targets


class Scorer:
  """Scores requests with one model, `batch_size` rows per forward pass.

  Call it inside the mesh context the parameters were loaded for (`Loaded.active()`).
  """

  def __init__(
    self,
    model: Any,
    params: Any,
    tokenizer: Any,
    batch_size: int = 16,
    progress: bool = False,
    start_with_eos: bool = True,
  ):
    if batch_size < 1:
      raise ValueError(f"--batch_size={batch_size}: must be >= 1")
    self.seq_len = model.config.seq_len
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    self.progress = progress
    self.start_with_eos = start_with_eos  # text contexts (module docstring)
    self.params = params
    self._score = jax.jit(functools.partial(_score_rows, model, vocab_limit=tokenizer.vocab_size))

  @property
  def compiles(self) -> int:
    """Programs compiled so far: one per length bucket used."""
    return self._score._cache_size()  # pylint: disable=protected-access

  def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[Score]:
    """Scores of text (context, continuation) pairs, in order."""
    return self.score(self.encode(pairs))

  def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Request]:
    return [
      encode_pair(self.tokenizer, context, continuation, self.start_with_eos)
      for context, continuation in pairs
    ]

  def check(self, requests: Sequence[Request]) -> None:
    """Raises ValueError for a request that cannot be scored, before any compile."""
    for i, r in enumerate(requests):
      if len(r.context) == 0 or len(r.continuation) == 0:
        empty = "context" if len(r.context) == 0 else "continuation"
        raise ValueError(
          f"request {i} has an empty {empty}; give every request at least one token of each"
        )
      if len(r.continuation) > self.seq_len:
        raise ValueError(
          f"request {i}: its continuation has {len(r.continuation)} tokens, more "
          f"than the model's context (model.seq_len={self.seq_len}); shorten it"
        )

  def score(self, requests: Sequence[Request]) -> list[Score]:
    """Scores of token requests, in order (left-truncated to the model's context).

    Each batch is dispatched before the previous one's results are read back, so the
    host's padding and summing overlap the device's forward pass.
    """
    self.check(requests)
    rows = [
      np.concatenate([r.context, r.continuation]).astype(np.int32)[-(self.seq_len + 1) :]
      for r in requests
    ]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    scores: list[Score | None] = [None] * len(rows)
    report = _Progress(len(rows)) if self.progress else None
    pending, done, read = None, 0, 0  # done: requests dispatched; read: requests scored
    while pending is not None or done < len(order):
      dispatched = None
      if done < len(order):
        width = bucket(len(rows[order[done]]) - 1, self.seq_len)
        chunk = [
          i
          for i in order[done : done + self.batch_size]
          if bucket(len(rows[i]) - 1, self.seq_len) == width
        ]
        inputs = np.full((self.batch_size, width), self.tokenizer.eos_id, np.int32)
        targets = np.zeros((self.batch_size, width), np.int32)
        for b, i in enumerate(chunk):
          inputs[b, : len(rows[i]) - 1] = rows[i][:-1]
          targets[b, : len(rows[i]) - 1] = rows[i][1:]
        dispatched = (chunk, self._score(self.params, inputs, targets))
        done += len(chunk)
      if pending is not None:
        chunk, outputs = pending
        logprobs, greedy = jax.device_get(outputs)
        for b, i in enumerate(chunk):
          end, n = len(rows[i]) - 1, len(requests[i].continuation)
          scores[i] = Score(
            logprob=float(np.sum(logprobs[b, end - n : end], dtype=np.float64)),
            is_greedy=bool(np.all(greedy[b, end - n : end])),
            tokens=n,
          )
        read += len(chunk)
        if report:
          report(read)
      pending = dispatched
    return scores


class _Progress:
  """Prints 'scored N/M requests | ETA' to stderr every PROGRESS_EVERY_S seconds."""

  def __init__(self, total: int):
    self.total = total
    self.start = self.last = time.perf_counter()

  def __call__(self, done: int) -> None:
    now = time.perf_counter()
    if now - self.last < PROGRESS_EVERY_S and done < self.total:
      return
    self.last = now
    eta = (now - self.start) / done * (self.total - done)
    print(
      f"scored {done:,}/{self.total:,} requests | ETA {format_duration(eta)}",
      file=sys.stderr,
      flush=True,
    )
