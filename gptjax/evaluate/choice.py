"""Zero- and few-shot multiple choice and cloze, scored by log-likelihood (GPT-3's way).

Each choice is the continuation target_delimiter + choice after the prompt; the
prompt is k demonstrations (context, target_delimiter, right choice), each followed
by `delimiter`, then the item's context.

Demonstrations come from a pool (a task's training file, or the evaluated file
itself), drawn for item i by a generator seeded with (seed, i): the prompt of an item
does not depend on which other items are evaluated or in what order. An item is never
its own demonstration: the pool entry at its own index (when the pool is the evaluated
file) and any entry equal to it are skipped.

Metrics, each the mean over items with its standard error (sample standard deviation
/ sqrt(n), as lm-evaluation-harness reports it):
- `acc`: the choice with the highest log-likelihood is the right one;
- `acc_norm_char`: highest log-likelihood per character of the choice (lm-eval's
  `acc_norm`: the choice's length without the delimiter);
- `acc_norm_token`: highest mean log-likelihood per token (build-nanogpt's HellaSwag);
- a cloze (one right continuation) has `acc`, whether greedy decoding produces the
  whole continuation, and `ppl`, exp(-mean log-likelihood) over items (its error by
  the delta method: ppl x the error of the mean).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from gptjax.evaluate.scoring import Score
from gptjax.evaluate.tasks import Item

EXTRA_DRAWS = 8  # drawn beyond k, so skipping the item itself rarely needs a second draw


class Scores(Protocol):
  def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[Score]: ...


@dataclasses.dataclass(frozen=True)
class Shots:
  """How prompts are built; the command line has a flag per field (num_fewshot for k)."""

  k: int = 0  # demonstrations per prompt
  seed: int = 1234  # item i draws its demonstrations from a generator seeded with (seed, i)
  delimiter: str = "\n\n"  # after each demonstration
  target_delimiter: str = " "  # between a context and its choice

  def describe(self) -> dict[str, Any]:
    return {
      "num_fewshot": self.k,
      "fewshot_seed": self.seed,
      "fewshot_delimiter": self.delimiter,
      "target_delimiter": self.target_delimiter,
    }


def demonstrations(
  pool: Sequence[Item], k: int, seed: int, index: int, item: Item, pool_is_items: bool
) -> list[Item]:
  """The k demonstrations of item `index` (module docstring)."""
  if k == 0:
    return []
  rng = np.random.default_rng([seed, index])
  skip = lambda j: (pool_is_items and j == index) or pool[j] == item  # noqa: E731
  order = rng.choice(len(pool), size=min(len(pool), k + EXTRA_DRAWS), replace=False)
  picked = [int(j) for j in order if not skip(j)][:k]
  if len(picked) < k:
    picked = [int(j) for j in rng.permutation(len(pool)) if not skip(j)][:k]
  if len(picked) < k:
    raise ValueError(
      f"--num_fewshot={k}: the demonstration pool has only {len(picked)} items "
      f"other than item {index}; lower --num_fewshot or give a larger "
      "--fewshot_file"
    )
  return [pool[j] for j in picked]


def prompt(item: Item, demos: Sequence[Item], shots: Shots) -> str:
  return (
    "".join(
      d.context + shots.target_delimiter + d.choices[d.label] + shots.delimiter for d in demos
    )
    + item.context
  )


def prompts(
  items: Sequence[Item], shots: Shots, pool: Sequence[Item] | None = None, limit: int = 0
) -> list[str]:
  """The prompts of the first `limit` items (all when 0); demonstrations from `pool`, or
  from all of `items` (the evaluated file) if None, so `limit` changes no item's prompt."""
  source = items if pool is None else pool
  return [
    prompt(item, demonstrations(source, shots.k, shots.seed, i, item, pool is None), shots)
    for i, item in enumerate(items[:limit] if limit else items)
  ]


def _mean_stderr(values: np.ndarray) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  sem = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
  return float(values.mean()), sem


def evaluate(
  scorer: Scores,
  items: Sequence[Item],
  shots: Shots,
  cloze: bool,
  pool: Sequence[Item] | None = None,
  limit: int = 0,
) -> dict[str, Any]:
  """The task's metrics over the first `limit` of `items` (all when 0; module docstring),
  with `items` (count) and `chance`. Without a `pool` every item may be a demonstration."""
  texts = prompts(items, shots, pool, limit)
  items = items[:limit] if limit else items
  pairs = [
    (text, shots.target_delimiter + c) for text, item in zip(texts, items) for c in item.choices
  ]
  flat = scorer.loglikelihood(pairs)
  scores, first = [], 0
  for item in items:
    scores.append(flat[first : first + len(item.choices)])
    first += len(item.choices)
  return (cloze_metrics if cloze else choice_metrics)(items, scores)


def choice_metrics(items: Sequence[Item], scores: Sequence[Sequence[Score]]) -> dict[str, Any]:
  hits: dict[str, list[float]] = {"acc": [], "acc_norm_char": [], "acc_norm_token": []}
  for item, item_scores in zip(items, scores):
    ll = np.array([s.logprob for s in item_scores])
    chars = np.array([len(c) for c in item.choices], np.float64)
    tokens = np.array([s.tokens for s in item_scores], np.float64)
    for name, value in (
      ("acc", ll),
      ("acc_norm_char", ll / chars),
      ("acc_norm_token", ll / tokens),
    ):
      hits[name].append(float(np.argmax(value) == item.label))
  out: dict[str, Any] = {}
  for name, values in hits.items():
    out[name], out[f"{name}_stderr"] = _mean_stderr(values)
  return {
    **out,
    "items": len(items),
    "chance": float(np.mean([1 / len(item.choices) for item in items])),
  }


def cloze_metrics(items: Sequence[Item], scores: Sequence[Sequence[Score]]) -> dict[str, Any]:
  acc, acc_stderr = _mean_stderr([float(s.is_greedy) for [s] in scores])
  ll, ll_stderr = _mean_stderr([s.logprob for [s] in scores])
  return {
    "acc": acc,
    "acc_stderr": acc_stderr,
    "ppl": math.exp(-ll),
    "ppl_stderr": math.exp(-ll) * ll_stderr,
    "items": len(items),
    "chance": 0.0,
  }
