"""The eval loss and its standard error, with validation documents as clusters.

The eval loss is a ratio, R = sum(loss) / sum(tokens), over every target token of
the eval rows. Tokens of one document share its topic, style and language, so
their losses are strongly correlated; treating tokens, or rows of consecutive
tokens, as independent samples gives a standard error that is far too small.
Documents are the natural independent units: the validation split is a sample
of documents from the corpus's distribution.

So each document c is one cluster with y_c, the summed loss of its scored
tokens, and n_c, their count. The standard error of R is the linearised (delta
method) one for a ratio estimator with clusters of unequal size as the sampled
units (Cochran, Sampling Techniques, 1977: the ratio estimate, and cluster
sampling with unequal sizes), with the small-sample factor C/(C-1) for C clusters:

  SE(R)^2 = C/(C-1) * sum_c (y_c - R n_c)^2 / (sum_c n_c)^2

This is also the cluster-robust (CR1 sandwich) standard error of a token-level
regression of loss on a constant with documents as clusters. A long document
weighs in proportion to its tokens, exactly as it does in R.

What it leaves out: it measures how much R would vary over fresh samples of
documents (the quantity a scaling fit needs), so it has no finite-population
correction for having scored much of a small split; and the rows are what is
sampled, so two documents sharing a row are not quite independent, which it
ignores (that dependence is weak next to the one within a document).
"""

from __future__ import annotations

import math

import numpy as np


def cluster_ratio_mean(
  loss_sums: np.ndarray, token_counts: np.ndarray, clusters: np.ndarray
) -> tuple[float, float]:
  """(sum(loss_sums) / sum(token_counts), its clustered standard error; module docstring).

  The three arrays have one entry per part of the eval set (e.g. the tokens one row
  takes from one document); parts with equal `clusters` ids are summed first. With
  fewer than two clusters the spread cannot be estimated, and the error is nan.
  """
  loss_sums = np.asarray(loss_sums, np.float64)
  token_counts = np.asarray(token_counts, np.float64)
  clusters = np.asarray(clusters)
  if not loss_sums.shape == token_counts.shape == clusters.shape or loss_sums.ndim != 1:
    raise ValueError(
      f"need three 1-D arrays of one shape; got {loss_sums.shape}, "
      f"{token_counts.shape}, {clusters.shape}"
    )
  total = token_counts.sum()
  if total <= 0:
    raise ValueError("no tokens to average over")
  _, inverse = np.unique(clusters, return_inverse=True)
  y = np.bincount(inverse, weights=loss_sums)
  n = np.bincount(inverse, weights=token_counts)
  mean = y.sum() / total
  c = len(y)
  if c < 2:
    return float(mean), math.nan
  return float(mean), float(math.sqrt(c / (c - 1) * np.sum((y - mean * n) ** 2)) / total)
