"""Cooldown sweeps: the members scaling.cooldown.branches declares, and the runner's ordering."""

import json
import os
import subprocess
import sys

import pytest

from gptjax import branch, flops
from gptjax import config as config_lib
from gptjax.launch.job import LaunchError, member
from gptjax.scaling import cooldown, sizes
from gptjax.sweep import (
  Member,
  _load_experiment,
  branch_sources,
  load_sweep,
  planned_flops,
  run_local,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "cooldown_tiny.py")
CPU = os.path.join(ROOT, "experiments", "cooldown_cpu.py")


def test_branches_declare_a_stable_run_then_one_branch_per_budget():
  """experiments/cooldown_tiny.py: budgets of 6 and 12 updates (256 tokens each) decaying
  over their last half, so their first below-peak updates are 4 and 7 and, at a cadence
  of 2, the branch points 4 and 6; the stable run stops at the later one and keeps both."""
  sweep = load_sweep(TINY)
  assert list(sweep) == ["l1-d64-stable", "l1-d64-t1536", "l1-d64-t3072"]
  shape = {"model.n_layer": 1, "model.d_model": 64, "model.n_head": 1, "model.d_ff": 256}
  lr = sizes.peak_lr(sizes.non_embedding_params(shape), "kaplan")
  assert sweep["l1-d64-stable"] == {
    **shape,
    "optim.lr": lr,
    "optim.schedule": "constant",
    "train.tokens": 6 * 256,
    "train.checkpoint_every": 2,
    "train.keep_checkpoints": 4,  # steps 0..6 at a cadence of 2 hold 4 checkpoints
  }
  for name, steps, point in (("l1-d64-t1536", 6, 4), ("l1-d64-t3072", 12, 6)):
    assert sweep[name] == {
      **shape,
      "optim.lr": lr,
      "optim.schedule": "wsd",
      "optim.decay_fraction": 0.5,
      "optim.decay_shape": "linear",
      "train.tokens": steps * 256,
      "train.branch_from": f"l1-d64-stable@{point}",
    }
  base = _load_experiment(TINY)("get_config")
  assert [branch.decay_start(config_lib.override(base, sweep[n])) for n in list(sweep)[1:]] == [
    4,
    7,
  ]


def test_the_runner_points_branches_at_their_source_member_and_counts_only_their_cooldown():
  sweep = load_sweep(CPU)
  resolved, after = branch_sources("/sweeps/cd", sweep)
  branches = [n for n in sweep if "branch_from" in str(sweep[n])]
  assert after == {n: "l2-d64-stable" for n in branches}
  assert [resolved[n]["train.branch_from"] for n in branches] == [
    "/sweeps/cd/l2-d64-stable@150",
    "/sweeps/cd/l2-d64-stable@300",
    "/sweeps/cd/l2-d64-stable@450",
  ]
  assert all(resolved[n] == sweep[n] for n in sweep if n not in branches)
  planned = planned_flops(CPU, resolved)
  model = sizes.model_config(sweep["l2-d64-stable"], _load_experiment(CPU)("get_config"))
  per_update = 16 * 128 * flops.flops_per_token(model)
  assert planned["l2-d64-t399360"] == (195 - 150) * per_update
  assert planned["l2-d64-cosine-t399360"] == 195 * per_update
  assert planned["l2-d64-stable"] == 450 * per_update
  backwards = {"b": {"train.branch_from": "a@2"}, "a": {}}
  with pytest.raises(LaunchError, match="names member 'a', which must come before it"):
    branch_sources("/sweeps/x", backwards)


def test_bad_cooldown_arguments_are_refused():
  size = sizes.family(
    [1], config_lib.base_config(), lr_rule="kaplan", tokens_rule="fixed", tokens_value=4096 * 20
  )
  base = config_lib.base_config()
  with pytest.raises(ValueError, match="fractions"):
    cooldown.branches(size, base, (0.0, 1.0), every=2)
  with pytest.raises(ValueError, match="before the first checkpoint at 100"):
    cooldown.branches(size, base, (1.0,), every=100)


@pytest.mark.slow
def test_a_cooldown_sweep_trains_the_stable_run_then_its_branches(tmp_path):
  """The tiny cooldown sweep end to end: every member completes, each branch records its
  source checkpoint and continues its step count, and a rerun trains nothing."""

  def run():
    return subprocess.run(
      [sys.executable, "-m", "gptjax.sweep", f"--config={TINY}", f"--workdir={tmp_path}"],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=600,
    )

  result = run()
  assert result.returncode == 0, result.stdout + result.stderr
  for name, point, steps in (("l1-d64-t1536", 4, 6), ("l1-d64-t3072", 6, 12)):
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == steps
    assert summary["branch_from"] == f"{tmp_path}/l1-d64-stable@{point}"
    rows = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(point + 1, steps + 1))
  again = run()
  assert again.returncode == 0 and "done 3/3 (skipped 3)" in again.stdout, again.stdout


def test_a_branch_of_a_source_that_did_not_complete_fails_without_running(tmp_path):
  """A diverged stable run is not rerun (it would diverge again), so its branch never starts."""
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "summary.json").write_text(json.dumps({"status": "diverged"}))
  stable = Member(member(str(tmp_path), "s", TINY, {}))
  cooled = Member(member(str(tmp_path), "b", TINY, {"train.branch_from": "x@2"}), after="s")
  run_local([stable, cooled], parallel=1)
  assert (stable.status, cooled.status) == ("diverged", "failed")
  assert cooled.reason == "its source s did not complete" and cooled.process is None
  assert not (tmp_path / "b").exists()
