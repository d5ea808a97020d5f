"""GPT-3's batch-size ramp: the stage table, the learning rate by tokens, and a real
ramped run killed mid-ramp and resumed (gptjax/batch_shape.py, optim.schedule, train)."""

import hashlib
import importlib.util
import json
import os
import subprocess

import jax
import numpy as np
import pytest
from run_rows import assert_same_curve, assert_same_run, rows
from test_train import ROOT, cli, kill_at_checkpoint, tiny_config

from gptjax import batch_shape, checkpoint, data, optim, train
from gptjax import config as config_lib

SEQ = 8


def ramp_config(**overrides):
  """micro-batches of 4, a ramp 4 -> 8 -> 12 -> 16 sequences over 40 rows, 160 rows in all."""
  c = config_lib.base_config()
  c.model.seq_len = SEQ
  c.train.update(batch_size=16, grad_accum_steps=4, steps=0, tokens=160 * SEQ)
  c.train.batch_ramp.update(start_tokens=4 * SEQ, tokens=40 * SEQ, stages=3)
  return config_lib.override(c, overrides)


def test_the_stage_table_is_exact():
  c = ramp_config()
  # Stage ends at ceil(40 * i / 3) rows = 14, 27, 40; each stage runs whole updates past it.
  assert batch_shape.table(c.train, SEQ) == (
    batch_shape.Stage(first_step=0, first_row=0, first_token=0, batch_size=4, seq_len=SEQ),
    batch_shape.Stage(first_step=4, first_row=16, first_token=16 * SEQ, batch_size=8, seq_len=SEQ),
    batch_shape.Stage(first_step=6, first_row=32, first_token=32 * SEQ, batch_size=12, seq_len=SEQ),
    batch_shape.Stage(first_step=7, first_row=44, first_token=44 * SEQ, batch_size=16, seq_len=SEQ),
  )
  assert config_lib.train_steps(c) == 7 + 8  # (160 - 44) / 16 = 7.25 -> 8 full updates


@pytest.mark.parametrize(
  "step, batch, rows_before",
  [
    (0, 4, 0),  # 0 tokens
    (2, 4, 8),  # mid-ramp
    (3, 4, 12),  # either side of the first boundary
    (4, 8, 16),
    (5, 8, 24),  # either side of the second
    (6, 12, 32),
    (7, 16, 44),  # the ramp's end, and after it
    (14, 16, 156),
  ],
)
def test_batch_and_position_at_the_boundaries(step, batch, rows_before):
  table = batch_shape.table(ramp_config().train, SEQ)
  assert batch_shape.stage_at(table, step).batch_size == batch
  assert batch_shape.rows_before(table, step) == rows_before


def test_stages_round_down_to_whole_micro_batches():
  c = ramp_config(**{"train.batch_ramp.stages": 5})  # linear: 4, 6, 8, 11, 13
  assert batch_shape.stage_batches(c.train, SEQ) == [4, 4, 8, 8, 12]


def test_a_resume_that_would_move_the_ramps_data_position_is_refused():
  """train.grad_accum_steps is free to change on resume (the update is the same), except
  where it changes the ramp's stage batches (whole micro-batches), and so the rows read."""
  saved = {"step": 5, "settings": checkpoint.resume_settings(ramp_config())}
  other = ramp_config(**{"train.grad_accum_steps": 2})  # micro-batches of 8
  assert batch_shape.stage_batches(other.train, SEQ) != batch_shape.stage_batches(
    ramp_config().train, SEQ
  )
  with pytest.raises(
    ValueError, match=r"stage batch sizes: checkpoint has \[4, 8, 12\], config has"
  ):
    checkpoint.check_resumable(saved, other, "CKPT")
  # Without a ramp the same change is accepted, as is a checkpoint written before the check.
  flat = {"train.batch_ramp.start_tokens": 0}
  checkpoint.check_resumable(
    {"step": 5, "settings": checkpoint.resume_settings(ramp_config(**flat))},
    ramp_config(**flat, **{"train.grad_accum_steps": 2}),
    "CKPT",
  )
  older = {k: v for k, v in saved["settings"].items() if k != checkpoint.STAGE_BATCHES}
  checkpoint.check_resumable({"step": 5, "settings": older}, other, "CKPT")


def test_a_ramp_whose_start_is_the_full_batch_is_one_stage():
  c = ramp_config(**{"train.batch_ramp.start_tokens": 16 * SEQ})
  assert batch_shape.table(c.train, SEQ) == (batch_shape.Stage(0, 0, 0, 16, SEQ),)
  assert config_lib.train_steps(c) == 10


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.batch_ramp.start_tokens": 2 * SEQ}, "stage 0 would train on 2 sequences"),
    ({"train.batch_ramp.start_tokens": 3}, "not whole sequences"),
    ({"train.batch_ramp.start_tokens": 32 * SEQ}, "above the full batch"),
    ({"train.batch_ramp.tokens": 0}, "set the ramp's length"),
    ({"train.batch_ramp.stages": 0}, "train.batch_ramp.stages=0"),
    ({"train.epochs": 2}, "epochs count constant batches"),
  ],
)
def test_bad_ramps_are_refused_with_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(ramp_config(**overrides))


def test_gpt3_125m_ramp_lr_follows_tokens_seen():
  """Peak at the first update whose tokens reach 375M, 10% by 260B (within one full
  batch), flat after that, although early updates see 16 sequences, not 256."""
  spec = importlib.util.spec_from_file_location("gpt3", os.path.join(ROOT, "experiments/gpt3.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("125m,ramp")
  config_lib.validate(c)
  table = batch_shape.table(c.train, 2048)
  assert table[0].batch_size == 16 and table[-1].batch_size == 256
  lr = jax.jit(optim.schedule(c))

  def tokens_after(step):
    return batch_shape.rows_before(table, step + 1) * 2048

  peak = next(s for s in range(12_000) if tokens_after(s) >= 375_000_000)
  assert tokens_after(peak - 1) < 375_000_000 < tokens_after(peak)
  np.testing.assert_allclose(float(lr(peak)), 6e-4, rtol=1e-6)
  assert float(lr(peak - 1)) < float(lr(peak))  # 374,996,992 of 375M tokens: just below
  assert 0 < float(lr(0)) < 1e-7  # 32k of 375M tokens: far smaller than the first constant-batch lr
  last = config_lib.train_steps(c) - 1
  floor = next(s for s in range(520_000, 530_000) if tokens_after(s) >= 260_000_000_000)
  for step in (floor, floor + 1000, last):
    np.testing.assert_allclose(float(lr(step)), 6e-5, rtol=1e-6)
  assert float(lr(floor - 2000)) > 6e-5 * (1 + 1e-6)
  assert tokens_after(last) >= 300e9 > tokens_after(last - 1)


def test_every_row_is_consumed_exactly_once_across_the_ramp():
  """The rows the stages read, update by update, are the stream's first rows in order,
  each once: a hash of the ids read stage by stage equals the hash of the stream."""
  c = ramp_config(**{"data.tokenizer": "bytes"})
  table = batch_shape.table(c.train, SEQ)
  _, lm = data.load(c.data, SEQ, c.train.seed)
  steps = config_lib.train_steps(c)
  read = np.concatenate(
    [
      lm.stream_rows(batch_shape.rows_before(table, s), batch_shape.stage_at(table, s).batch_size)
      for s in range(steps)
    ]
  )
  stream = lm.stream_rows(0, batch_shape.rows_before(table, steps))
  assert hashlib.sha256(read.tobytes()).hexdigest() == hashlib.sha256(stream.tobytes()).hexdigest()
  assert len(np.unique(read)) == len(read)  # one epoch holds far more than 160 rows


RAMP_RUN = {  # micro-batches of 4 over a 4-way data axis; 4 -> 8 -> 12 -> 16 sequences
  "mesh.ici.data": 4,
  "mesh.ici.tensor": 2,
  "train.batch_size": 16,
  "train.grad_accum_steps": 4,
  "train.batch_ramp.start_tokens": 4 * 32,
  "train.batch_ramp.tokens": 320 * 32,
  "train.batch_ramp.stages": 3,
  "train.steps": 0,
  "train.tokens": 640 * 32,
  "train.checkpoint_every": 5,
  "train.eval_every": 0,
  "train.log_every": 5,
  "train.num_samples": 0,
  "model.dropout": 0.1,
}


@pytest.mark.slow
def test_a_ramped_run_killed_mid_ramp_resumes_bit_for_bit(tmp_path):
  c = tiny_config(**RAMP_RUN)
  table = batch_shape.table(c.train, 32)
  assert [s.batch_size for s in table] == [4, 8, 12, 16]
  ramp_end, total = table[-1].first_step, config_lib.train_steps(c)

  reference = str(tmp_path / "reference")
  done = subprocess.run(cli(reference, **RAMP_RUN), capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  # One compile per distinct stage batch, and no other.
  assert done.stderr.count("compiled the train step for") == 4
  reference_rows = [r for r in rows(reference) if "train_loss" in r]
  # Rows never straddle a stage: each stage's tokens/s is its own.
  assert {s.first_step for s in table[1:]} <= {r["step"] for r in reference_rows}
  for r in reference_rows:
    assert r["tokens"] == batch_shape.rows_before(table, r["step"]) * 32
    assert r["batch_size"] == batch_shape.stage_at(table, r["step"] - 1).batch_size
  assert reference_rows[-1]["tokens"] == batch_shape.rows_before(table, total) * 32 >= 640 * 32

  resumed = str(tmp_path / "resumed")
  resume_point = kill_at_checkpoint(resumed, 10, **RAMP_RUN)
  assert resume_point < ramp_end  # killed mid-ramp
  rerun = subprocess.run(cli(resumed, **RAMP_RUN), capture_output=True, text=True, cwd=ROOT)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"at step {resume_point}" in rerun.stderr
  later_stages = {batch_shape.stage_at(table, s).batch_size for s in range(resume_point, total)}
  assert rerun.stderr.count("compiled the train step for") == len(later_stages)

  assert_same_run(resumed, reference)
  with open(os.path.join(resumed, "summary.json")) as f:
    assert json.load(f)["tokens"] == reference_rows[-1]["tokens"]


@pytest.mark.slow
def test_a_degenerate_ramp_is_bit_identical_to_a_constant_batch(tmp_path):
  base = {"train.steps": 4, "train.num_samples": 0, "train.eval_every": 0}
  constant = train.run(tiny_config(**base), str(tmp_path / "constant"))
  degenerate = train.run(
    tiny_config(
      **base,
      **{"train.batch_ramp.start_tokens": 8 * 32, "train.batch_ramp.tokens": 10_000},
    ),
    str(tmp_path / "degenerate"),
  )
  assert_same_curve(rows(str(tmp_path / "degenerate")), rows(str(tmp_path / "constant")), rtol=0)
  assert degenerate["final_eval_loss"] == constant["final_eval_loss"]
