"""train.branch_from: cooldown branches of a stable-phase checkpoint."""

import json
import os

import jax
import numpy as np
import pytest
from run_rows import rows as all_rows

import gptjax
from gptjax import branch, train
from gptjax import config as config_lib


def rows(workdir):
  return [r for r in all_rows(workdir) if "train_loss" in r]


def tiny(**train_fields):
  """A byte-level 2-layer model, constant lr after 2 warmup updates, 8 updates of 8 x 32."""
  c = config_lib.base_config()
  c.model.update(dict(n_layer=2, d_model=32, n_head=2, d_ff=128, seq_len=32, vocab_size=257))
  c.data.tokenizer = "bytes"
  c.data.eval_sequences = 8
  c.optim.update(dict(lr=3e-3, warmup_steps=2, schedule="constant"))
  c.train.update(
    dict(steps=8, batch_size=8, log_every=1, eval_every=0, checkpoint_every=4, num_samples=0)
  )
  c.train.update(train_fields)
  return c


def fake_source(tmp_path, steps=(4, 8), **train_fields):
  """A run directory with config.json and (empty) checkpoint directories: enough for
  resolve, which reads only those."""
  source = tmp_path / "source"
  for s in steps:
    (source / "checkpoints" / str(s)).mkdir(parents=True)
  (source / "config.json").write_text(tiny(**train_fields).to_json_best_effort())
  return str(source)


def cooldown(source_spec, **optim_fields):
  c = tiny(branch_from=source_spec)
  c.optim.update(dict(schedule="wsd", decay_fraction=0.5, **optim_fields))
  return c


def test_resolve_makes_the_source_exact_and_finds_the_decay_start(tmp_path):
  source = fake_source(tmp_path)
  os.chdir(tmp_path)
  resolved = branch.resolve(cooldown("source@4"), str(tmp_path / "b"))
  assert resolved.train.branch_from == f"{source}@4"
  # wsd over 8 updates with fraction 0.5: updates 0..4 at (or below, in warmup) the peak,
  # the decay's first update (4) is still the peak, 5 is the first below it.
  assert branch.decay_start(cooldown(source)) == 5
  assert branch.decay_start(tiny()) == 8  # constant: never decays
  cosine = tiny()
  cosine.optim.schedule = "cosine"
  assert branch.decay_start(cosine) == 3  # after 2 warmup updates, update 2 is the peak


@pytest.mark.parametrize(
  "spec, mutate, expected",
  [
    ("source", None, "use 'DIR@STEP'"),
    ("source@x", None, "use 'DIR@STEP'"),
    ("nowhere@4", None, "no run directory (with a config.json)"),
    ("source@6", None, "no checkpoint at step 6 in"),
    ("source@4", lambda c: c.model.update(dict(d_model=64)), "model.d_model: source 32, branch 64"),
    ("source@4", lambda c: c.train.update(dict(batch_size=4)), "train.batch_size: source 8"),
    ("source@4", lambda c: c.data.update(dict(tokenizer="bpe")), "data.tokenizer: source"),
    ("source@8", None, "step 8 is past this branch's decay start (update 5 of 8)"),
    ("source@4", lambda c: c.optim.update(dict(lr=1e-3)), "trained update 0 at lr 0.0015"),
    ("source@4", lambda c: c.train.update(dict(init_from="run:source")), "exclusive with"),
  ],
)
def test_a_bad_branch_is_refused_in_one_line_before_anything_is_written(
  tmp_path, spec, mutate, expected
):
  fake_source(tmp_path)
  os.chdir(tmp_path)
  c = cooldown(spec)
  if mutate:
    mutate(c)
  workdir = tmp_path / "branch"
  with pytest.raises(ValueError) as e:
    train.run(c, str(workdir))
  message = str(e.value).removeprefix("invalid config:\n  ")
  assert expected in message and "\n" not in message, message
  assert not workdir.exists()


def test_a_branch_whose_accumulation_moves_the_ramps_stages_is_refused(tmp_path):
  """A ramp of 4 -> 8 sequences in 3 stages is 4, 4, 6 in micro-batches of 2 but 4, 4, 4 in
  micro-batches of 4: the branch would read other rows from the branch step on."""

  def ramped(c, accum):
    c.train.grad_accum_steps = accum
    c.train.batch_ramp.update(dict(start_tokens=4 * 32, tokens=16 * 32, stages=3))
    return c

  source = tmp_path / "source"
  (source / "checkpoints" / "4").mkdir(parents=True)
  (source / "config.json").write_text(ramped(tiny(), 4).to_json_best_effort())  # micro 2
  os.chdir(tmp_path)
  with pytest.raises(
    ValueError, match=r"stage batch sizes: source \[4, 4, 6\], branch \[4, 4, 4\]"
  ):
    branch.resolve(ramped(cooldown("source@4"), 2), str(tmp_path / "b"))  # micro-batches of 4


def test_a_source_that_decayed_before_the_branch_point_is_refused(tmp_path):
  """A cosine source is decaying at step 4: a branch of it would not share its updates."""
  fake_source(tmp_path)
  source = tmp_path / "source"
  cosine = tiny()
  cosine.optim.schedule = "cosine"
  (source / "config.json").write_text(cosine.to_json_best_effort())
  with pytest.raises(ValueError, match="the source trained update 3 at lr"):
    branch.resolve(cooldown(f"{source}@4"), str(tmp_path / "b"))


@pytest.mark.slow
def test_a_branch_continues_its_source_exactly_and_cools_down_on_its_own(tmp_path):
  """A constant-lr source of 8 updates, checkpointed at 4 and 8. A branch from step 4 whose
  schedule is the source's (wsd with decay fraction 0) retraces updates 5..8 bit for bit,
  which needs the source's parameters, optimizer moments, step, rng and data position at 4
  exactly. A cooldown branch (decay fraction 0.5) follows its own schedule from step 5, is
  recorded as a branch, and resumes from its own checkpoints without the source."""
  source = str(tmp_path / "source")
  train.run(tiny(), source)
  same = tiny(branch_from=f"{source}@4")
  same.optim.update(dict(schedule="wsd", decay_fraction=0.0))
  same_dir = str(tmp_path / "same")
  train.run(same, same_dir)
  source_rows, same_rows = rows(source), rows(same_dir)
  assert [r["step"] for r in same_rows] == [5, 6, 7, 8]
  assert [r["train_loss"] for r in same_rows] == [r["train_loss"] for r in source_rows[4:]]
  for a, b in zip(
    jax.tree.leaves(gptjax.load(source, 8).params), jax.tree.leaves(gptjax.load(same_dir).params)
  ):
    np.testing.assert_array_equal(a, b)

  cool_dir = str(tmp_path / "cool")
  summary = train.run(cooldown(f"{source}@4"), cool_dir)
  cool_rows = rows(cool_dir)
  lrs = branch.learning_rates(cooldown(source), 8)
  np.testing.assert_allclose([r["lr"] for r in cool_rows], lrs[4:], rtol=1e-6)
  assert cool_rows[0]["train_loss"] == source_rows[4]["train_loss"]  # update 4: still the peak
  assert cool_rows[-1]["train_loss"] != source_rows[-1]["train_loss"]
  assert summary["branch_from"] == f"{source}@4" and summary["tokens"] == 8 * 8 * 32
  config_json = json.loads(open(f"{cool_dir}/config.json").read())
  assert config_json["train"]["branch_from"] == f"{source}@4"
  os.rename(source, f"{source}-gone")  # a resume reads the branch's own checkpoints only
  longer = cooldown(f"{source}@4")
  longer.train.update(dict(steps=10, extend=True))
  assert train.run(longer, cool_dir)["step"] == 10
  assert [r["step"] for r in rows(cool_dir)] == [5, 6, 7, 8, 9, 10]
