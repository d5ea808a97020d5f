"""The eval loss's clustered standard error, and the per-row losses a run keeps."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from gptjax import config as config_lib
from gptjax import eval_stats, sharding, train
from gptjax.data import packing, pipeline, token_cache


def test_cluster_sem_matches_a_by_hand_computation():
  # Three documents of known per-token losses, cut into rows as packing would:
  # A = [1, 1], B = [2, 2, 2, 2] (spread over two rows), C = [4, 4].
  loss_sums = [2.0, 4.0, 4.0, 8.0]  # A | B's first half | B's second half | C
  tokens = [2, 2, 2, 2]
  documents = [0, 1, 1, 2]
  mean, sem = eval_stats.cluster_ratio_mean(
    np.array(loss_sums), np.array(tokens), np.array(documents)
  )
  # R = 18 / 8; residuals y_c - R n_c = -2.5, -1, 3.5; C/(C-1) = 3/2.
  assert mean == 2.25
  assert sem == pytest.approx(math.sqrt(1.5 * (2.5**2 + 1**2 + 3.5**2)) / 8, rel=1e-12)


def test_cluster_sem_equals_the_cluster_robust_sandwich_from_token_level_losses():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 60, size=25)
  document_means = rng.normal(3.0, 0.8, size=25)
  losses = [rng.normal(m, 0.3, size=n) for m, n in zip(document_means, lengths)]
  # Cut every document into 1-3 parts, as rows cut documents, and shuffle the parts.
  parts = [
    (d, chunk)
    for d, doc in enumerate(losses)
    for chunk in np.array_split(doc, rng.integers(1, 4))
    if len(chunk)
  ]
  parts = [parts[i] for i in rng.permutation(len(parts))]
  mean, sem = eval_stats.cluster_ratio_mean(
    np.array([c.sum() for _, c in parts]),
    np.array([len(c) for _, c in parts]),
    np.array([d for d, _ in parts]),
  )
  # By hand, from tokens: OLS of loss on a constant, CR1 cluster-robust variance.
  all_tokens = np.concatenate(losses)
  by_hand_mean = all_tokens.mean()
  scores = np.array([np.sum(doc - by_hand_mean) for doc in losses])
  clusters = len(losses)
  by_hand_sem = math.sqrt(clusters / (clusters - 1) * np.sum(scores**2)) / len(all_tokens)
  assert mean == pytest.approx(by_hand_mean, rel=1e-12)
  assert sem == pytest.approx(by_hand_sem, rel=1e-10)
  # Documents differ far more than tokens within one, so the naive per-token SEM is much smaller.
  assert sem > 3 * all_tokens.std(ddof=1) / math.sqrt(len(all_tokens))


def test_with_one_token_per_cluster_it_is_the_textbook_sem():
  losses = np.array([3.1, 2.4, 5.0, 4.2, 3.3])
  mean, sem = eval_stats.cluster_ratio_mean(losses, np.ones(5), np.arange(5))
  assert mean == pytest.approx(losses.mean())
  assert sem == pytest.approx(losses.std(ddof=1) / math.sqrt(5), rel=1e-12)


def test_one_cluster_has_no_sem_and_bad_shapes_are_refused():
  mean, sem = eval_stats.cluster_ratio_mean(
    np.array([3.0, 5.0]), np.array([1, 1]), np.array([7, 7])
  )
  assert mean == 4.0 and math.isnan(sem)
  with pytest.raises(ValueError, match="1-D arrays of one shape"):
    eval_stats.cluster_ratio_mean(np.ones(3), np.ones(2), np.zeros(3))
  with pytest.raises(ValueError, match="no tokens"):
    eval_stats.cluster_ratio_mean(np.ones(2), np.zeros(2), np.arange(2))


@pytest.mark.slow
def test_evaluate_keeps_per_row_losses_that_add_up_to_the_eval_row(tmp_path):
  c = config_lib.base_config()
  c.model.update(n_layer=1, d_model=32, n_head=2, d_ff=64, seq_len=16, vocab_size=64)
  documents = [list(range(2, 2 + 5 + (11 * i) % 40)) for i in range(30)]
  validation = packing.concat_documents(documents, eos_id=1)
  lm = pipeline.LMData(
    token_cache.TokenFile(validation, 30, 0),
    token_cache.TokenFile(validation, 30, 0),
    seq_len=16,
    seed=0,
    vocab_size=64,
    eos_id=1,
    identity="eval-fixture",
  )
  eval_set = lm.eval_batches(batch_size=8, max_sequences=20)
  program = train.build(c, sharding.make_mesh(c.mesh), eos_id=1)
  with sharding.active(program.mesh, program.axis_rules):
    params = program.init(0).params
    path = epath.Path(tmp_path) / "eval" / "7" / "lm_losses.jsonl"
    values = train._evaluate(program, params, eval_set, jnp.ones(64), path)

  parts = [json.loads(line) for line in path.read_text().splitlines()]
  tokens, mask = (np.concatenate(a)[:20] for a in zip(*eval_set.batches))
  assert {p["row"] for p in parts} == set(eval_set.rows.tolist())
  assert sum(p["tokens"] for p in parts) == mask.sum()
  assert values["eval_loss"] == pytest.approx(
    sum(p["loss_sum"] for p in parts) / sum(p["tokens"] for p in parts), rel=1e-12
  )
  _, sem = eval_stats.cluster_ratio_mean(
    np.array([p["loss_sum"] for p in parts]),
    np.array([p["tokens"] for p in parts]),
    np.array([p["document"] for p in parts]),
  )
  assert values["eval_loss_sem"] == sem > 0
  # Each row's loss in the file is that row's loss computed directly.
  direct = (
    train.token_losses(program.model, jax.device_get(params), tokens, None, None) * mask
  ).sum(axis=-1)
  by_row = {}
  for p in parts:
    by_row[p["row"]] = by_row.get(p["row"], 0.0) + p["loss_sum"]
  np.testing.assert_allclose([by_row[r] for r in eval_set.rows.tolist()], direct, rtol=1e-5)
  assert values["eval_bits_per_byte"] == pytest.approx(
    values["eval_loss"] / math.log(2), rel=1e-5
  )  # Every token is one "byte" here.
