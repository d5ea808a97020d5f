"""The sweep runner end to end: run, skip on rerun, record failures, print commands."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from gptjax import config as config_lib
from gptjax import flops
from gptjax.scaling import sizes
from gptjax.sweep import load_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "scaling_tiny.py")
CPU = os.path.join(ROOT, "experiments", "scaling_cpu.py")
MEMBERS = ["l1-d64", "l2-d128", "l3-d192"]


def sweep(config: str, workdir, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "gptjax.sweep", f"--config={config}",
                         f"--workdir={workdir}", *flags], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny_sweep")
  result = sweep(TINY, workdir, "--parallel=2")
  assert result.returncode == 0, result.stdout + result.stderr
  return workdir, result


def test_tiny_sweep_runs_every_member(finished):
  workdir, result = finished
  with open(workdir / "sweep.json") as f:
    assert json.load(f) == json.loads(json.dumps(load_sweep(TINY)))
  for name, overrides in load_sweep(TINY).items():
    with open(workdir / name / "summary.json") as f:
      summary = json.load(f)
    assert summary["status"] == "completed"
    assert (summary["n_layer"], summary["d_model"]) == (overrides["model.n_layer"],
                                                        overrides["model.d_model"])
    assert summary["tokens"] == 768
    assert (workdir / name / "train.log").stat().st_size > 0
  assert "done 3/3" in result.stdout


def test_rerunning_a_finished_sweep_trains_nothing(finished):
  workdir, _ = finished
  before = {name: [(workdir / name / f).stat().st_mtime_ns for f in ("metrics.jsonl",
                                                                      "summary.json")]
            for name in MEMBERS}
  result = sweep(TINY, workdir, "--parallel=2")
  assert result.returncode == 0, result.stdout + result.stderr
  after = {name: [(workdir / name / f).stat().st_mtime_ns for f in ("metrics.jsonl",
                                                                     "summary.json")]
           for name in MEMBERS}
  assert after == before
  assert "skipped 3" in result.stdout


def test_a_failing_member_is_recorded_and_the_others_complete(tmp_path):
  experiment = tmp_path / "with_bad_member.py"
  experiment.write_text(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('tiny', {TINY!r})\n"
      "tiny = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(tiny)\n"
      "get_config = tiny.get_config\n"
      "def get_sweep():\n"
      "  good = tiny.get_sweep()['l1-d64']\n"
      "  return {'good': good, 'bad-heads': {**good, 'model.n_head': 5}}\n")
  workdir = tmp_path / "sweep"
  result = sweep(str(experiment), workdir, "--parallel=2")
  assert result.returncode != 0
  assert "bad-heads" in result.stderr and "good" not in result.stderr.split("failed:")[1]
  with open(workdir / "status.json") as f:
    status = json.load(f)
  assert status["good"]["status"] == "completed"
  assert status["bad-heads"]["status"] == "failed"
  assert "model.n_head=5" in (workdir / "bad-heads" / "train.log").read_text()
  with open(workdir / "good" / "summary.json") as f:
    assert json.load(f)["status"] == "completed"


def test_print_launcher_prints_commands_and_runs_nothing(tmp_path):
  workdir = tmp_path / "sweep"
  result = sweep(CPU, workdir, "--launcher=print")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == len(load_sweep(CPU))
  for line, (name, overrides) in zip(lines, load_sweep(CPU).items()):
    assert f"-m gptjax.main --config={CPU} --workdir={workdir / name}" in line
    for key, value in overrides.items():
      assert f"--config.{key}={value}" in line
  assert not workdir.exists()


def test_scaling_cpu_members_validate_and_span_one_and_a_half_decades():
  spec = importlib.util.spec_from_file_location("scaling_cpu", CPU)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  ns = []
  for overrides in module.get_sweep().values():
    c = module.get_config()
    for key, value in overrides.items():
      group, name = key.split(".")
      c[group][name] = value
    config_lib.validate(c)
    ns.append(flops.param_counts(c.model)["n_params_non_embedding"])
  assert len(ns) >= 5
  assert max(ns) / min(ns) >= 10**1.5
  assert sizes.non_embedding_params(sizes.shape(1)) == min(ns)
