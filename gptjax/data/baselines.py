"""Reference losses that a trained language model should beat by a wide margin."""

import numpy as np


def unigram_cross_entropy(
  train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int
) -> float:
  """Nats/token of an add-one-smoothed unigram model fit on train, scored on eval.

  This is the loss of a model that ignores context entirely; a model's eval
  loss near this value means it has learned token frequencies and nothing else.
  """
  counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
  log_probs = np.log(counts) - np.log(counts.sum())
  return float(-log_probs[eval_tokens].mean())
