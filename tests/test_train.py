"""End-to-end training behaviour: accumulation, the run directory, exact resume."""

import functools
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
from etils import epath
from google.cloud import storage
from run_rows import assert_same_curve, assert_same_run, rows

from gptjax import config as config_lib
from gptjax import objectives, optim, train
from gptjax.model import GPT, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ROW = {
  "step",
  "tokens",
  "flops",
  "train_loss",
  "lr",
  "grad_norm",
  "step_time_s",
  "tokens_per_s",
  "mfu",
}
EVAL_ROW = {
  "step",
  "tokens",
  "flops",
  "eval_loss",
  "eval_loss_sem",
  "eval_ppl",
  "eval_bits_per_byte",
  "eval_sequences",
}
SUMMARY = {
  "n_params",
  "n_params_non_embedding",
  "n_layer",
  "d_model",
  "n_head",
  "seq_len",
  "vocab_size",
  "tokens",
  "flops",
  "final_train_loss",
  "final_eval_loss",
  "wall_s",
  "status",
}

# A tiny model on the embedded corpus; the same overrides drive in-process and CLI runs.
# The model's vocabulary is larger than the tokenizer's, as with GPT-2's 50257 rows over a
# smaller corpus tokenizer: samples must still only use the tokenizer's ids. Batches of 8
# split over the 8 test devices (tests/conftest.py).
TINY = {
  "model.n_layer": 2,
  "model.d_model": 32,
  "model.n_head": 2,
  "model.d_ff": 64,
  "model.seq_len": 32,
  "model.vocab_size": 640,
  "data.vocab_size": 512,
  "data.tokenizer_sample_chars": 500_000,
  "data.eval_sequences": 8,
  "train.batch_size": 8,
  "train.log_every": 1,
  "train.num_samples": 1,
  "train.sample_tokens": 8,
  "optim.warmup_steps": 2,
}


def tiny_config(**overrides):
  return config_lib.override(config_lib.base_config(), {**TINY, **overrides})


def cli(workdir, **overrides) -> list[str]:
  flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
  return [
    sys.executable,
    "-m",
    "gptjax.main",
    f"--config={ROOT}/experiments/quickstart.py",
    f"--workdir={workdir}",
    *flags,
  ]


@pytest.mark.slow
def test_grad_accumulation_matches_one_big_batch():
  """4 micro-batches of b must be the same update as one batch of 4b (3 steps)."""
  c = tiny_config(**{"train.steps": 3, "train.tokens": 0})
  model = GPT(model_config(c.model))
  tx = optim.make(
    c,
    nn.get_partition_spec(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32), np.int32))[
        "params"
      ]
    ),
  )
  schedule = optim.schedule(c)
  objective = objectives.make("lm", model)
  state = jax.jit(
    lambda r: nn.unbox(train._init_state(r, model=model, objective=objective, tx=tx))
  )(jax.random.PRNGKey(0))
  batches = jax.random.randint(jax.random.PRNGKey(1), (3, 16, 33), 0, 512)

  def run(accum):
    step = jax.jit(
      functools.partial(
        train.train_step,
        objective=objective,
        tx=tx,
        schedule=schedule,
        micro_batch_size=16 // accum,
        use_dropout=False,
      )
    )
    s, losses = state, []
    for batch in batches:
      s, m = step(s, {"tokens": batch})
      losses.append(m["train_loss"])
    return s, np.array(losses)

  state_1, losses_1 = run(1)
  state_4, losses_4 = run(4)
  np.testing.assert_allclose(losses_4, losses_1, rtol=1e-5)
  assert losses_1[2] < losses_1[0]  # the updates did something
  # Adam divides by sqrt(v) + eps, so an entry whose gradient is ~eps turns a float32
  # reduction-order difference into a visible fraction of one lr-sized step: atol is 1% of lr.
  for a, b in zip(jax.tree.leaves(state_4.params), jax.tree.leaves(state_1.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = train.run(
    tiny_config(**{"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3}), workdir
  )
  return workdir, summary


def test_run_directory_follows_the_contract(finished_run):
  workdir, summary = finished_run
  for name in (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "samples.txt",
    "tokenizer/spm.model",
  ):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{workdir}/tensorboard"))
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["3", "6"]
  with open(f"{workdir}/config.json") as f:
    assert json.load(f)["model"]["d_model"] == 32
  train_rows = [r for r in rows(workdir) if "train_loss" in r]
  eval_rows = [r for r in rows(workdir) if "eval_loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in eval_rows] == [3, 6]
  assert all(set(r) == TRAIN_ROW for r in train_rows)
  assert all(set(r) == EVAL_ROW for r in eval_rows)
  assert train_rows[-1]["tokens"] == 6 * 8 * 32
  with open(f"{workdir}/summary.json") as f:
    on_disk = json.load(f)
  assert SUMMARY <= set(on_disk) and on_disk["status"] == "completed"
  assert on_disk["final_eval_loss"] == eval_rows[-1]["eval_loss"]
  assert on_disk["tokens"] == 6 * 8 * 32 and summary["status"] == "completed"


def test_metrics_are_sane(finished_run):
  workdir, _ = finished_run
  first, *_, last = [r for r in rows(workdir) if "train_loss" in r]
  assert np.log(640) - 1 < first["train_loss"] < np.log(640) + 1  # starts near uniform
  evals = [r for r in rows(workdir) if "eval_loss" in r]
  assert evals[-1]["eval_ppl"] == pytest.approx(np.exp(evals[-1]["eval_loss"]))
  assert 0 < evals[-1]["eval_bits_per_byte"] < 8 and evals[-1]["eval_loss_sem"] > 0
  assert last["lr"] == pytest.approx(1e-3 * 0.1)  # cosine ends at 10% of the peak


def test_each_eval_keeps_its_per_row_losses(finished_run):
  workdir, _ = finished_run
  for row in (r for r in rows(workdir) if "eval_loss" in r):
    with open(f"{workdir}/eval/{row['step']}/lm_losses_8.jsonl") as f:
      parts = [json.loads(line) for line in f]
    assert len({p["row"] for p in parts}) == 8  # data.eval_sequences
    assert sum(p["loss_sum"] for p in parts) / sum(p["tokens"] for p in parts) == pytest.approx(
      row["eval_loss"], rel=1e-9
    )


def test_restoring_a_different_model_says_what_differs(finished_run, tmp_path):
  workdir, _ = finished_run
  with pytest.raises(ValueError) as e:
    train.run(tiny_config(**{"train.steps": 8, "model.n_layer": 3}), workdir)
  assert "model.n_layer: checkpoint has 2, config has 3" in str(e.value)
  with pytest.raises(ValueError) as e:
    train.run(tiny_config(**{"train.steps": 8, "model.scan_layers": False}), workdir)
  assert "model.scan_layers: checkpoint has True, config has False" in str(e.value)
  with pytest.raises(ValueError) as e:  # another global batch would change the data order
    train.run(tiny_config(**{"train.steps": 8, "train.batch_size": 16}), workdir)
  assert "train.batch_size: checkpoint has 8, config has 16" in str(e.value)
  with pytest.raises(ValueError) as e:
    train.run(tiny_config(**{"train.steps": 8, "train.seed": 1}), workdir)
  assert "seed: checkpoint 0, now 1" in str(e.value)


@pytest.mark.slow
def test_a_gs_run_directory_holds_the_same_run_and_resumes(finished_run, gcs_bucket, caplog):
  """The run directory on GCS (a local GCS server, tests/gcs_emulator.py): the same files and
  rows as the local run, and a resume that drops the rows past its checkpoint."""
  local, _ = finished_run
  workdir = f"gs://{gcs_bucket}/run"
  run_dir = epath.Path(workdir)
  config = tiny_config(**{"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3})
  train.run(config, workdir)
  assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3", "6"]
  (run_dir / "checkpoints" / "6").rmtree()  # as if killed before the last checkpoint
  caplog.set_level(logging.INFO)
  summary = train.run(config, workdir)
  assert f"resumed from {workdir}/checkpoints at step 3" in caplog.text

  for name in ("config.json", "samples.txt", "tokenizer/spm.model"):
    assert (run_dir / name).is_file(), name
  assert len(list((run_dir / "tensorboard").glob("events.out.tfevents*"))) == 2  # one per run
  gs_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert_same_curve(gs_rows, rows(local))
  on_gcs = json.loads((run_dir / "summary.json").read_text())
  assert on_gcs["status"] == "completed" and on_gcs["tokens"] == summary["tokens"] == 6 * 8 * 32
  assert not os.path.exists("gs:")  # what Python's own open() made of gs:// URLs


def _wait_for(predicate, proc, timeout=300.0):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, "training ended before it could be interrupted"
    assert time.time() < deadline, "timed out waiting for the run"
    time.sleep(0.01)


def kill_at_checkpoint(workdir, at_least, **overrides) -> int:
  """Starts `cli(workdir, **overrides)`, kills it with SIGKILL once a checkpoint of step
  >= at_least exists, and returns the newest checkpoint's step (where a rerun resumes)."""
  proc = subprocess.Popen(
    cli(workdir, **overrides), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  _wait_for(lambda: _checkpoints(workdir) and _checkpoints(workdir)[-1] >= at_least, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return _checkpoints(workdir)[-1]


def _checkpoints(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow
def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path):
  """The acceptance test for exact resume: params, optimizer, step, RNG and data order."""
  overrides = {
    "train.steps": 400,
    "train.checkpoint_every": 50,
    "train.eval_every": 100,
    "model.dropout": 0.1,
  }
  reference = str(tmp_path / "reference")
  subprocess.run(cli(reference, **overrides), check=True, capture_output=True, cwd=ROOT)

  resumed = str(tmp_path / "resumed")
  resume_point = kill_at_checkpoint(resumed, 100, **overrides)
  killed_at = len(rows(resumed))
  assert resume_point < 400
  rerun = subprocess.run(
    cli(resumed, **overrides), check=True, capture_output=True, text=True, cwd=ROOT
  )
  assert f"at step {resume_point}" in rerun.stderr  # it resumed rather than starting over

  assert killed_at < len(rows(reference))
  # The same machine runs both halves, so the resumed run is bit for bit the uninterrupted one.
  assert_same_run(resumed, reference)
  with open(os.path.join(resumed, "summary.json")) as f:
    assert json.load(f)["status"] == "completed"


@pytest.mark.slow
def test_kill_9_on_gcs_loses_no_row_a_resume_keeps(gcs_bucket, tmp_path):
  """On GCS metrics.jsonl is uploaded now and then, and always before each checkpoint."""
  workdir = f"gs://{gcs_bucket}/killed"
  overrides = {"train.steps": 200, "train.checkpoint_every": 20, "train.eval_every": 0}

  def committed_steps():  # listed with google-cloud-storage, which has no listing cache
    blobs = storage.Client().list_blobs(gcs_bucket, prefix="killed/checkpoints/")
    # A step is committed once its own commit file exists; each item inside it has one too.
    return [
      int(parts[2])
      for parts in (b.name.split("/") for b in blobs)
      if len(parts) == 4 and parts[3] == "commit_success.txt"
    ]

  def stored_train_steps():
    lines = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [row["step"] for row in map(json.loads, lines) if "train_loss" in row]

  proc = subprocess.Popen(
    cli(workdir, **overrides), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  _wait_for(lambda: max(committed_steps(), default=0) >= 40, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resume_point = max(committed_steps())
  stored = stored_train_steps()
  assert stored == list(range(1, len(stored) + 1)) and len(stored) >= resume_point
  rerun = subprocess.run(
    cli(workdir, **overrides), check=True, capture_output=True, text=True, cwd=tmp_path
  )
  assert f"at step {resume_point}" in rerun.stderr
  assert stored_train_steps() == list(range(1, 201))
  assert not os.listdir(tmp_path)  # nothing landed on local disk (./gs:/...)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = {"train.steps": 3000, "train.checkpoint_every": 1000, "train.eval_every": 0}
  proc = subprocess.Popen(
    cli(workdir, **overrides), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  _wait_for(
    lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")) and len(rows(workdir)) >= 20,
    proc,
  )
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  saved = _checkpoints(workdir)
  assert saved and 20 <= saved[-1] < 1000  # saved at the interrupted step, not a cadence step
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["status"] == "running"


@pytest.mark.slow
def test_document_mask_only_matters_when_a_row_holds_several_documents():
  c = tiny_config()
  model = GPT(model_config(c.model))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), np.zeros((1, 32), np.int32))["params"])
  eos = 1
  single = np.arange(2, 35, dtype=np.int32)[None]  # no end-of-text inside the row
  packed = single.copy()
  packed[0, 10] = eos
  loss = functools.partial(objectives.loss_sums, model, params, rng=None)
  np.testing.assert_allclose(loss(single, document_eos_id=eos), loss(single, document_eos_id=None))
  assert not np.allclose(loss(packed, document_eos_id=eos), loss(packed, document_eos_id=None))


@pytest.mark.slow
def test_profile_steps_writes_a_trace_of_those_steps(tmp_path):
  """train.profile_steps='1:3' leaves a jax.profiler trace in WORKDIR/profile, and the
  run trains exactly as it does without one."""
  workdir = str(tmp_path / "run")
  summary = train.run(
    tiny_config(**{"train.steps": 4, "train.profile_steps": "1:3", "train.num_samples": 0}), workdir
  )
  traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  (perfetto,) = (tmp_path / "run" / "profile").rglob("perfetto_trace.json.gz")
  with gzip.open(perfetto) as f:
    events = json.load(f)["traceEvents"]
  assert any("windowed_train_step" in e.get("name", "") for e in events)
  plain = train.run(
    tiny_config(**{"train.steps": 4, "train.num_samples": 0}), str(tmp_path / "plain")
  )
  assert summary["final_train_loss"] == plain["final_train_loss"]


@pytest.mark.parametrize("spec", ["3", "3:3", "a:b", "-1:2", "5:2"])
def test_profile_steps_refuses_what_is_not_a_range(spec):
  with pytest.raises(ValueError, match="train.profile_steps"):
    config_lib.validate(tiny_config(**{"train.profile_steps": spec}))
