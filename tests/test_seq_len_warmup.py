"""Sequence-length warmup (Li et al. 2022): the stage table, tokens and FLOPs counted
stage by stage, the learning rate by tokens seen, the truncated rows the step trains on,
and a run killed mid-warmup resuming bit for bit (gptjax/batch_shape.py, optim, train)."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
from run_rows import assert_same_run, rows
from test_train import ROOT, cli, kill_at_checkpoint, tiny_config

from gptjax import batch_shape, data, flops, metrics, objectives, optim, train
from gptjax import config as config_lib
from gptjax.model import GPT, model_config

WARMUP = {  # contexts 8 -> 16 -> 24 over 384 tokens, then 32; batch 8; 1,472 tokens in all
  "train.seq_len_warmup.start": 8,
  "train.seq_len_warmup.tokens": 384,
  "train.seq_len_warmup.stages": 3,
  "train.steps": 0,
  "train.tokens": 1472,
}


def warmup_config(**overrides):
  return tiny_config(**{**WARMUP, **overrides})


def test_the_stage_table_is_exact():
  # Spans end at 128, 256, 384 tokens: 2 updates of 8 x 8, 1 of 8 x 16, 1 of 8 x 24 (to 448).
  assert batch_shape.table(warmup_config().train, 32) == (
    batch_shape.Stage(first_step=0, first_row=0, first_token=0, batch_size=8, seq_len=8),
    batch_shape.Stage(first_step=2, first_row=16, first_token=128, batch_size=8, seq_len=16),
    batch_shape.Stage(first_step=3, first_row=24, first_token=256, batch_size=8, seq_len=24),
    batch_shape.Stage(first_step=4, first_row=32, first_token=448, batch_size=8, seq_len=32),
  )
  assert config_lib.train_steps(warmup_config()) == 4 + 4  # (1472 - 448) / 256 = 4 full updates


def test_contexts_round_down_to_multiples_of_8_never_below_the_start():
  c = warmup_config(**{"train.seq_len_warmup.stages": 4})  # linear: 8, 14, 20, 26
  assert batch_shape.stage_seq_lens(c.train, 32) == [8, 8, 16, 24]
  c = warmup_config(**{"train.seq_len_warmup.start": 5})  # linear: 5, 14, 23
  assert batch_shape.stage_seq_lens(c.train, 32) == [5, 8, 16]


def test_no_warmup_is_one_stage_of_the_full_shape():
  c = warmup_config(**{"train.seq_len_warmup.start": 0})
  assert batch_shape.table(c.train, 32) == (batch_shape.Stage(0, 0, 0, 8, 32),)
  assert config_lib.train_steps(c) == 6  # ceil(1472 / 256)


def test_tokens_and_flops_are_counted_at_each_stages_context():
  c = warmup_config()
  at = metrics.position(c, 8)
  assert at["tokens"] == 2 * 64 + 128 + 192 + 4 * 256 == 1472
  per_token = {n: flops.flops_per_token(c.model, n) for n in (8, 16, 24, 32)}
  assert per_token[8] < per_token[32] == flops.flops_per_token(c.model)
  expected = 128 * per_token[8] + 128 * per_token[16] + 192 * per_token[24] + 1024 * per_token[32]
  assert at["flops"] == expected
  assert metrics.position(c, 3) == {
    "step": 3,
    "tokens": 256,
    "flops": 128 * (per_token[8] + per_token[16]),
  }


def test_the_learning_rate_warms_up_over_tokens_seen():
  """optim.warmup_tokens = 704: the lr is lr * tokens_seen / 704 until update 4, whose
  tokens (448 + 256) first reach it, although the first updates see 64 tokens, not 256."""
  c = warmup_config(**{"optim.warmup_steps": 0, "optim.warmup_tokens": 704})
  config_lib.validate(c)
  lr = jax.jit(optim.schedule(c))
  table = batch_shape.table(c.train, 32)
  for step in range(4):
    tokens_after = batch_shape.tokens_before(table, step + 1)
    np.testing.assert_allclose(float(lr(step)), c.optim.lr * tokens_after / 704, rtol=1e-6)
  np.testing.assert_allclose(float(lr(4)), c.optim.lr, rtol=1e-6)
  assert float(lr(7)) < c.optim.lr


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.seq_len_warmup.start": 32}, "not below model.seq_len=32"),
    ({"train.seq_len_warmup.tokens": 0}, "set the warmup's length"),
    ({"train.seq_len_warmup.stages": 0}, "train.seq_len_warmup.stages=0"),
    ({"train.seq_len_warmup.start": -8}, "train.seq_len_warmup.start=-8"),
    ({"train.batch_ramp.start_tokens": 64, "train.batch_ramp.tokens": 512}, "use one of them"),
    ({"train.epochs": 1, "train.tokens": 0}, "epochs count full-length rows"),
    ({"train.objective": "sft"}, "only 'lm' trains on truncated rows"),
  ],
)
def test_bad_warmups_are_refused_with_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(warmup_config(**overrides))


def test_the_first_update_trains_on_the_first_tokens_of_its_rows(tmp_path):
  """The loss the run reports for update 0 is the initial model's loss on the first 8+1
  tokens of the data order's first 8 rows, computed here from the data module alone."""
  c = warmup_config(**{"train.tokens": 0, "train.steps": 1, "train.num_samples": 0})
  train.run(c, str(tmp_path))
  reported = next(r for r in rows(str(tmp_path)) if "train_loss" in r)
  assert (reported["step"], reported["tokens"], reported["seq_len"]) == (1, 64, 8)

  _, lm = data.load(c.data, 32, c.train.seed)
  first = lm.train_rows(0, 8)
  assert first.shape == (8, 33)
  model = GPT(model_config(c.model))
  params = objectives.init_params(
    model, objectives.make("lm", model), jax.random.PRNGKey(c.train.seed), 0
  )

  def mean_loss(tokens):
    sums = objectives.loss_sums(model, params, tokens, None, None)
    return float(sums.sum()) / (tokens.shape[0] * (tokens.shape[1] - 1))

  np.testing.assert_allclose(reported["train_loss"], mean_loss(first[:, :9]), rtol=1e-5)
  assert abs(reported["train_loss"] - mean_loss(first)) > 1e-3  # the full rows' loss differs


@pytest.mark.slow
def test_a_run_killed_mid_warmup_resumes_bit_for_bit(tmp_path):
  run = {
    **WARMUP,
    "train.seq_len_warmup.tokens": 1536,  # contexts 8, 16, 24 for 8, 4, 3 updates (to 1,600)
    "train.tokens": 1600 + 12 * 256,
    "train.checkpoint_every": 4,
    "train.log_every": 4,  # rows where checkpoints are, so the resumed windows match
    "train.eval_every": 0,
    "train.num_samples": 0,
    "model.dropout": 0.1,
  }
  table = batch_shape.table(tiny_config(**run).train, 32)
  assert [(s.first_step, s.seq_len) for s in table] == [(0, 8), (8, 16), (12, 24), (15, 32)]
  total = config_lib.train_steps(tiny_config(**run))

  reference = str(tmp_path / "reference")
  done = subprocess.run(cli(reference, **run), capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr.count("compiled the train step for") == 4  # one per context
  reference_rows = [r for r in rows(reference) if "train_loss" in r]
  assert {s.first_step for s in table[1:]} <= {r["step"] for r in reference_rows}
  for r in reference_rows:
    assert r["tokens"] == batch_shape.tokens_before(table, r["step"])
    assert r["seq_len"] == batch_shape.stage_at(table, r["step"] - 1).seq_len

  resumed = str(tmp_path / "resumed")
  resume_point = kill_at_checkpoint(resumed, 4, **run)
  assert resume_point < table[-1].first_step  # killed mid-warmup
  rerun = subprocess.run(cli(resumed, **run), capture_output=True, text=True, cwd=ROOT)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  later = {batch_shape.stage_at(table, s).seq_len for s in range(resume_point, total)}
  assert rerun.stderr.count("compiled the train step for") == len(later)

  assert_same_run(resumed, reference)
  with open(os.path.join(resumed, "summary.json")) as f:
    assert json.load(f)["tokens"] == batch_shape.tokens_before(table, total)
