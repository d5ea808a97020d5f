"""Numbers a report can trust (issue 11): divergence, window means, explicit resumes, faults."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess

import numpy as np
import pytest
from run_rows import assert_same_run, rows
from test_train import ROOT, _checkpoints, _wait_for, cli, tiny_config

from gptjax import checkpoint, rundir, sharding, train


def strict_rows(workdir):
  """metrics.jsonl parsed as strict JSON: a bare NaN or Infinity token fails."""

  def refuse(token):
    raise ValueError(f"non-JSON token {token}")

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line, parse_constant=refuse) for line in f]


def tree_hashes(workdir):
  """sha256 of every file under `workdir`, by relative path."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


SIX_STEPS = {"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3}


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("six"))
  train.run(tiny_config(**SIX_STEPS), workdir)
  return workdir


def copy_of(workdir, tmp_path):
  target = str(tmp_path / "copy")
  shutil.copytree(workdir, target)
  return target


@pytest.mark.slow
def test_a_nan_stops_the_run_as_diverged_and_keeps_the_finite_checkpoints(tmp_path):
  workdir = str(tmp_path / "nan")
  config = tiny_config(
    **{
      "train.steps": 40,
      "optim.lr": 1e4,
      "train.checkpoint_every": 2,
      "train.keep_checkpoints": 1,
      "train.eval_every": 0,
    }
  )
  with pytest.raises(train.Diverged) as e:
    train.run(config, workdir)
  message = str(e.value)
  assert message.startswith("diverged at step ") and "optim.lr (now 10000)" in message
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["status"] == "diverged" and summary["final_train_loss"] is None
  metric_rows = strict_rows(workdir)
  last = metric_rows[-1]
  assert last["train_loss"] is None and "train_loss" in last["nonfinite"]
  assert last["first_nonfinite_step"] == int(message.split()[3].rstrip(":"))
  assert all(r["train_loss"] is not None for r in metric_rows[:-1])
  assert not os.path.exists(os.path.join(workdir, "samples.txt"))
  # The one checkpoint kept is finite, and it is the one the message names.
  mngr = checkpoint.manager(workdir, config)
  program = train.build(config, sharding.make_mesh(config.mesh), eos_id=1)
  step, _, state = checkpoint.restore_latest(
    mngr, workdir, config, program.abstract_state, check=lambda meta: None
  )
  mngr.close()
  assert f"step {step} in" in message and step < last["first_nonfinite_step"]
  assert bool(train.all_finite(state))


@pytest.mark.slow
def test_a_train_row_is_the_mean_of_its_window(six_step_run, tmp_path):
  per_step = [r for r in rows(six_step_run) if "train_loss" in r]
  assert [r["step"] for r in per_step] == [1, 2, 3, 4, 5, 6]
  workdir = str(tmp_path / "windows")
  summary = train.run(tiny_config(**SIX_STEPS, **{"train.log_every": 4}), workdir)
  windows = [r for r in rows(workdir) if "train_loss" in r]
  assert [r["step"] for r in windows] == [4, 6]
  for row, steps in zip(windows, ([1, 2, 3, 4], [5, 6])):
    chosen = [r for r in per_step if r["step"] in steps]
    np.testing.assert_allclose(
      row["train_loss"], np.mean([r["train_loss"] for r in chosen]), rtol=1e-6
    )
    np.testing.assert_allclose(
      row["grad_norm"], np.mean([r["grad_norm"] for r in chosen]), rtol=1e-6
    )
    assert row["lr"] == chosen[-1]["lr"]
  assert summary["final_train_loss"] == windows[-1]["train_loss"]


@pytest.mark.slow
def test_a_resume_inside_a_row_window_writes_an_uninterrupted_runs_rows(tmp_path):
  """Rows every 4 steps, checkpoints every 3: the checkpoint at step 3 is inside the first
  row's window, so the resumed run must carry steps 1-3 into row 4 (the window's sums are
  saved with the checkpoint) to write the uninterrupted run's rows bit for bit."""
  config = tiny_config(
    **{**SIX_STEPS, "train.steps": 8, "train.log_every": 4, "train.keep_checkpoints": 3}
  )
  straight = str(tmp_path / "straight")
  train.run(config, straight)
  resumed = copy_of(straight, tmp_path)
  for step in ("6", "8"):
    shutil.rmtree(os.path.join(resumed, "checkpoints", step))
  train.run(config, resumed)
  assert [r["step"] for r in rows(resumed) if "train_loss" in r] == [4, 8]
  assert_same_run(resumed, straight)


@pytest.mark.parametrize(
  "overrides, expected",
  [
    ({"model.n_layer": 3}, "model.n_layer: checkpoint has 2, config has 3"),
    ({"train.seed": 1}, "seed: checkpoint 0, now 1"),
    ({"data.vocab_size": 400}, "fingerprint"),  # another tokenizer
    ({"train.steps": 4}, "a run cannot be shortened"),
    ({"train.steps": 9}, "train.steps: checkpoint has 6, config has 9"),
    ({"optim.lr": 5e-4}, "optim.lr: checkpoint has 0.001, config has 0.0005"),
    # The optimizer state loses its clipping stage: refused, not read as a damaged checkpoint.
    (
      {"optim.clip_norm": 0.0, "train.extend": True},
      "holds another state layout than this config makes: 34 arrays only in the checkpoint",
    ),
  ],
)
def test_a_refused_resume_changes_no_file(six_step_run, overrides, expected):
  before = tree_hashes(six_step_run)
  with pytest.raises(ValueError) as e:
    train.run(tiny_config(**{**SIX_STEPS, **overrides}), six_step_run)
  assert expected in str(e.value)
  assert tree_hashes(six_step_run) == before


def test_a_second_writer_is_refused_before_it_changes_anything(six_step_run, tmp_path):
  workdir = copy_of(six_step_run, tmp_path)
  with rundir.RunLock(workdir, command="the first writer"):
    before = tree_hashes(workdir)
    with pytest.raises(rundir.InUse) as e:
      train.run(tiny_config(**{**SIX_STEPS, "train.steps": 9, "train.extend": True}), workdir)
    assert f"pid {os.getpid()}" in str(e.value) and "the first writer" in str(e.value)
    assert tree_hashes(workdir) == before
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK_NAME))


def test_rerunning_a_finished_run_adds_nothing_but_an_eval_with_other_settings(
  six_step_run, tmp_path
):
  workdir = copy_of(six_step_run, tmp_path)
  before = tree_hashes(workdir)
  train.run(tiny_config(**SIX_STEPS), workdir)
  assert tree_hashes(workdir) == before
  train.run(tiny_config(**SIX_STEPS, **{"data.eval_sequences": 16}), workdir)
  evals = [(r["step"], r["eval_sequences"]) for r in rows(workdir) if "eval_loss" in r]
  assert evals == [(3, 8), (6, 8), (6, 16)]
  assert [r for r in rows(workdir) if "train_loss" in r] == [
    r for r in rows(six_step_run) if "train_loss" in r
  ]


@pytest.mark.slow
def test_extending_a_run_is_explicit_and_recorded(six_step_run, tmp_path, caplog):
  workdir = copy_of(six_step_run, tmp_path)
  caplog.set_level("INFO")
  summary = train.run(tiny_config(**{**SIX_STEPS, "train.steps": 9, "train.extend": True}), workdir)
  assert summary["status"] == "completed" and summary["step"] == 9
  assert "the learning rate of step 6 goes from 1.000e-04 to" in caplog.text
  with open(os.path.join(workdir, "resumes.jsonl")) as f:
    (record,) = [json.loads(line) for line in f]
  assert record["step"] == 6 and record["changes"]["train.steps"] == [6, 9]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["steps"] == 9


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_is_moved_aside_and_the_previous_one_used(
  six_step_run, tmp_path, caplog
):
  workdir = copy_of(six_step_run, tmp_path)
  manifest = os.path.join(workdir, "checkpoints", "6", "state", "manifest.ocdbt")
  with open(manifest, "r+b") as f:
    f.truncate(10)
  caplog.set_level("INFO")
  summary = train.run(tiny_config(**SIX_STEPS), workdir)
  assert "checkpoint step 6 at" in caplog.text and "is unreadable" in caplog.text
  assert "at step 3" in caplog.text
  (aside,) = os.listdir(os.path.join(workdir, checkpoint.UNREADABLE_DIR))
  assert aside.startswith("6-")
  assert summary["status"] == "completed"
  # Resumed from step 3, the run retraced steps 4-6 exactly.
  np.testing.assert_allclose(
    [r["train_loss"] for r in rows(workdir) if "train_loss" in r],
    [r["train_loss"] for r in rows(six_step_run) if "train_loss" in r],
    rtol=1e-6,
  )


@pytest.mark.slow
def test_ctrl_c_checkpoints_then_exits_and_a_second_one_stops_at_once(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = {"train.steps": 3000, "train.checkpoint_every": 1000, "train.eval_every": 0}
  proc = subprocess.Popen(
    cli(workdir, **overrides),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(
    lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")) and len(rows(workdir)) >= 20,
    proc,
  )
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr
  saved = _checkpoints(workdir)
  assert saved and 20 <= saved[-1] < 1000
  assert "Traceback" not in stderr and "checkpointed step" in stderr
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["status"] == "running"


@pytest.mark.slow
def test_ctrl_c_during_compilation_is_safe(tmp_path):
  """The first Ctrl-C arrives before the first step: the run compiles, takes one step,
  checkpoints it and exits cleanly (it used to segfault)."""
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(
    cli(workdir, **{"train.steps": 3000, "train.eval_every": 0}),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  seen = []

  def reached_compile():
    line = proc.stderr.readline()
    seen.append(line)
    return "training FLOPs/token" in line

  _wait_for(reached_compile, proc)
  proc.send_signal(signal.SIGINT)
  stderr = "".join(seen) + proc.communicate(timeout=300)[1]
  assert proc.returncode == 0, stderr
  assert _checkpoints(workdir) and _checkpoints(workdir)[-1] < 3000
  assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize(
  "argv_tail, first_words",
  [
    (["--config.model.nlayer=3"], "error: unknown --config field 'nlayer' Did you mean"),
    (["--config.mesh.ici.data=16"], "error: mesh.ici="),
    (["--config.model.vocab_size=300"], "error: model.vocab_size=300: smaller than"),
    (
      ["--config=experiments/gpt3.py:bogus"],
      "error: --config=experiments/gpt3.py:bogus: GPT-3 size 'bogus': unknown; use one of",
    ),
    (
      ["--config.model.attention_impl=cudnn", "--config.model.dtype=bfloat16"],
      "error: model.attention_impl='cudnn' needs a GPU (this backend is cpu)",
    ),
  ],
)
def test_user_errors_are_one_error_line_without_a_traceback(tmp_path, argv_tail, first_words):
  workdir = str(tmp_path / "run")
  result = subprocess.run(cli(workdir) + argv_tail, cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(first_words), result.stderr
  assert "Traceback" not in result.stderr
  assert not os.listdir(workdir) if os.path.isdir(workdir) else True


@pytest.mark.slow
def test_missing_experiment_file_is_an_error_line(tmp_path):
  result = subprocess.run(
    [
      *cli(str(tmp_path / "run"))[:3],
      "--config=experiments/no_such_file.py",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
    "error: --config: cannot load the experiment file ([Errno 2] No such file or directory: "
    "'experiments/no_such_file.py'); pass an existing file, e.g. "
    "--config=experiments/quickstart.py"
  ]
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_earlier_checkpoints(tmp_path):
  """A real write error from the filesystem: the process may write no file over 100 kB
  (RLIMIT_FSIZE), which the first checkpoint of this run needs."""
  workdir = str(tmp_path / "run")
  overrides = {
    "data.tokenizer": "bytes",
    "train.steps": 5,
    "train.checkpoint_every": 5,
    "train.eval_every": 0,
    "train.num_samples": 0,
  }
  subprocess.run(cli(workdir, **overrides), check=True, capture_output=True, cwd=ROOT)

  def small_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead

  result = subprocess.run(
    cli(workdir, **{**overrides, "train.steps": 40, "train.extend": True}),
    cwd=ROOT,
    capture_output=True,
    text=True,
    preexec_fn=small_files,
  )
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: a checkpoint save in") and "File too large" in last, last
  assert "checkpoints already written are intact (steps [5])" in last
  # orbax's writer threads print asyncio tracebacks while they fail; main sends them to
  # /dev/null before writing the line above, so it is the last line and starts on its own.
  assert _checkpoints(workdir) == [5]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  # Stopped as soon as the failure was known: at the latest when the next save (step 15)
  # waited for the failed one, long before the 40 steps asked for.
  assert summary["status"] == "failed" and summary["step"] <= 15
