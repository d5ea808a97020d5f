"""The sweep runner end to end: run, skip on rerun, record failures, print commands; and the
scripts and sbatch jobs of --launcher=tpu and --launcher=slurm, which no test can run for real."""

import dataclasses
import importlib.util
import json
import math
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from shell import remote, shellcheck

from gptjax import config as config_lib
from gptjax import flops
from gptjax.launch import slurm, tpu, tpu_sweep
from gptjax.launch.job import LaunchError, completed_test, member
from gptjax.scaling import sizes
from gptjax.sweep import Member, launch_slurm, load_sweep, planned_flops, progress

pytestmark = pytest.mark.slow  # sweeps run member processes; the script tests share their fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "scaling_tiny.py")
CPU = os.path.join(ROOT, "experiments", "scaling_cpu.py")
MEMBERS = ["l1-d64", "l2-d128", "l3-d192"]


def sweep(config: str, workdir, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "gptjax.sweep", f"--config={config}", f"--workdir={workdir}", *flags],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )


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
    assert (summary["n_layer"], summary["d_model"]) == (
      overrides["model.n_layer"],
      overrides["model.d_model"],
    )
    assert summary["tokens"] == 768
    assert (workdir / name / "train.log").stat().st_size > 0
  assert "done 3/3" in result.stdout


def test_rerunning_a_finished_sweep_trains_nothing(finished):
  workdir, _ = finished
  before = {
    name: [(workdir / name / f).stat().st_mtime_ns for f in ("metrics.jsonl", "summary.json")]
    for name in MEMBERS
  }
  result = sweep(TINY, workdir, "--parallel=2")
  assert result.returncode == 0, result.stdout + result.stderr
  after = {
    name: [(workdir / name / f).stat().st_mtime_ns for f in ("metrics.jsonl", "summary.json")]
    for name in MEMBERS
  }
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
    # A valid config that fails once it meets the devices: 12 rows over 8 devices.
    "  return {'good': good, 'bad-batch': {**good, 'train.batch_size': 12},\n"
    "          'diverges': {**good, 'optim.lr': 1e4}}\n"
  )
  workdir = tmp_path / "sweep"
  result = sweep(str(experiment), workdir, "--parallel=2")
  assert result.returncode != 0
  named = result.stderr.split("did not complete:")[1]
  assert "bad-batch (failed" in named and "diverges (diverged" in named and "good" not in named
  with open(workdir / "status.json") as f:
    status = json.load(f)
  assert status["good"]["status"] == "completed"
  assert status["bad-batch"]["status"] == "failed"
  assert status["diverges"]["status"] == "diverged"
  assert "batch_size=12" in (workdir / "bad-batch" / "train.log").read_text()
  assert "error: diverged at step" in (workdir / "diverges" / "train.log").read_text()
  with open(workdir / "good" / "summary.json") as f:
    assert json.load(f)["status"] == "completed"
  # A rerun retries the failed member but not the diverged one, which would diverge again.
  log = (workdir / "diverges" / "train.log").read_text()
  rerun = sweep(str(experiment), workdir, "--parallel=2")
  assert "diverges (diverged" in rerun.stderr.split("did not complete:")[1]
  assert (workdir / "diverges" / "train.log").read_text() == log


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
    c = config_lib.override(module.get_config(), overrides)
    config_lib.validate(c)
    ns.append(flops.param_counts(c.model)["n_params_non_embedding"])
  assert len(ns) >= 5
  assert max(ns) / min(ns) >= 10**1.5
  assert sizes.non_embedding_params(sizes.shape(1)) == min(ns)


# --launcher=tpu and --launcher=slurm, on the 3-member tiny sweep.
TINY_REL = "experiments/scaling_tiny.py"  # TPU workers run it from their own checkout
GS = "gs://bucket/sweeps/tiny"
ENV = {"GPTJAX_CACHE": "/home/me/cache dir"}  # a space: quoting must survive every shell
V4_32 = tpu.Tpu(
  name="tiny",
  project="proj",
  zone="us-central2-b",
  accelerator="v4-32",
  provisioning="spot",
  repo="https://example.com/gptjax.git",
  revision="abc123",
)
TPU_FLAGS = [
  "--launcher=tpu",
  "--name=tiny",
  "--project=proj",
  "--zone=us-central2-b",
  "--accelerator=v4-32",
  "--provisioning=spot",
  "--repo=https://example.com/gptjax.git",
  "--revision=abc123",
  f"--env=GPTJAX_CACHE={ENV['GPTJAX_CACHE']}",
]


def jobs(sweep_dir: str, config: str = TINY_REL) -> dict:
  return {
    name: member(sweep_dir, name, config, overrides, ENV)
    for name, overrides in load_sweep(TINY).items()
  }


def gcloud_lines(script: str, *words: str) -> list[list[str]]:
  """The script's `gcloud compute tpus` commands with all of `words` among their arguments."""
  start = "gcloud compute tpus"
  commands = [
    shlex.split(line[line.index(start) :].removesuffix(" ;;"))
    for line in script.splitlines()
    if start in line
  ]
  return [c for c in commands if all(w in c for w in words)]


def files(root) -> dict:
  return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_tpu_one_slice_runs_every_member_on_all_workers_one_after_another(tmp_path):
  sweep = load_sweep(TINY)
  script = tpu_sweep.script(V4_32, GS, sweep, jobs(GS), "one_slice")
  shellcheck(tmp_path, script)
  assert f"{shlex.join(tpu.create(V4_32))} ;;" in script
  assert len(gcloud_lines(script, "tpu-vm", "create")) == 2  # if missing; or after a delete
  setup, run = gcloud_lines(script, "ssh", "tiny", "--worker=all")
  assert setup == tpu.setup(V4_32)
  assert "git checkout abc123" in remote(setup) and "pip install -e '.[tpu]'" in remote(setup)
  assert run == tpu.run(V4_32, *jobs(GS).values())
  text = remote(run)
  shellcheck(tmp_path, text)
  starts = []
  for name, job in jobs(GS).items():
    assert job.workdir == f"{GS}/{name}"
    main = f"GPTJAX_CACHE='/home/me/cache dir' {shlex.join(['python3', *job.main_args()])}"
    assert f"if {completed_test(job.workdir)}; then" in text and main in text
    assert "--distributed" in job.main_args() and f"--workdir={GS}/{name}" in job.main_args()
    for key, value in sweep[name].items():
      assert f"--config.{key}={value}" in job.main_args()
    starts.append(text.index(main))
  assert starts == sorted(starts)  # one after another, in the sweep's order
  upload = f" | gcloud storage cp - {GS}/sweep.json\n"
  printf = shlex.split(script[script.index("printf") : script.index(upload)])
  assert json.loads(printf[2]) == json.loads(json.dumps(sweep))


def test_tpu_vm_per_member_gives_each_member_its_own_queued_vm(tmp_path):
  spec = dataclasses.replace(V4_32, queued=True)
  script = tpu_sweep.script(spec, GS, load_sweep(TINY), jobs(GS), "vm_per_member")
  shellcheck(tmp_path, script)
  for name, job in jobs(GS).items():
    vm = dataclasses.replace(spec, name=f"tiny-{name}")
    assert gcloud_lines(script, "queued-resources", "create", vm.name)[0] == tpu.create(vm)
    assert "--spot" in tpu.create(vm) and f"--node-id={vm.name}" in tpu.create(vm)
    assert '[ "$state" = ACTIVE ]' in script  # a queued request is waited for
    setup, run = gcloud_lines(script, "ssh", vm.name, "--worker=all")
    assert setup == tpu.setup(vm) and run == tpu.run(vm, job)  # this member only
    shellcheck(tmp_path, remote(run))


FAKE_GCLOUD = r"""#!/bin/bash
# Stands in for gcloud: records each call in $FAKE/calls, keeps each VM's state in
# $FAKE/state_NAME (create makes it READY) and each gs://PATH in $FAKE/gcs/PATH.
echo "$*" >> "$FAKE/calls"
if [ "$1" = storage ]; then
  case "$2" in
    cat) cat "$FAKE/gcs/${3#gs://}" 2>/dev/null ;;
    cp) mkdir -p "$(dirname "$FAKE/gcs/${4#gs://}")" && cat > "$FAKE/gcs/${4#gs://}" ;;
  esac
  exit
fi
case "$4" in
  describe) cat "$FAKE/state_$5" 2>/dev/null ;;
  create) echo READY > "$FAKE/state_$5" ;;
  delete) rm "$FAKE/state_$5" ;;
esac
"""


def test_tpu_sweep_rerun_skips_completed_members_and_recreates_preempted_vms(finished, tmp_path):
  """Runs the generated script against a stand-in gcloud that records what it is asked.

  l1-d64 completed (its real summary.json from the finished sweep), l2-d128's VM was
  preempted, l3-d192's was never created.
  """
  workdir, _ = finished
  fake = tmp_path / "fake"
  (fake / "bin").mkdir(parents=True)
  (fake / "bin" / "gcloud").write_text(FAKE_GCLOUD)
  (fake / "bin" / "gcloud").chmod(0o755)
  gcs_sweep = fake / "gcs" / GS[len("gs://") :]
  (gcs_sweep / "l1-d64").mkdir(parents=True)
  shutil.copy(workdir / "l1-d64" / "summary.json", gcs_sweep / "l1-d64")
  (fake / "state_tiny-l2-d128").write_text("PREEMPTED\n")
  script = tmp_path / "sweep.sh"
  script.write_text(tpu_sweep.script(V4_32, GS, load_sweep(TINY), jobs(GS), "vm_per_member"))
  env = {**os.environ, "FAKE": str(fake), "PATH": f"{fake / 'bin'}:{os.environ['PATH']}"}

  def run_script() -> list[str]:
    (fake / "calls").unlink(missing_ok=True)
    result = subprocess.run(
      ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [
      line.split(" --project=")[0]
      for line in (fake / "calls").read_text().splitlines()
      if line.startswith("compute")
    ]

  vm = "compute tpus tpu-vm"
  calls = run_script()
  assert not [c for c in calls if "tiny-l1-d64" in c]  # completed: no VM at all
  assert [c for c in calls if "tiny-l2-d128" in c and "describe" not in c][:2] == [
    f"{vm} delete tiny-l2-d128 --quiet",
    f"{vm} create tiny-l2-d128 --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot",
  ]
  assert [c.split(" --")[0] for c in calls if "tiny-l3-d192" in c and "describe" not in c] == [
    f"{vm} create tiny-l3-d192",
    f"{vm} ssh tiny-l3-d192",
    f"{vm} ssh tiny-l3-d192",
  ]
  with open(gcs_sweep / "sweep.json") as f:
    assert json.load(f) == json.loads(json.dumps(load_sweep(TINY)))

  # Rerun: both VMs are READY now and l2-d128 has completed meanwhile.
  shutil.copytree(workdir / "l2-d128", gcs_sweep / "l2-d128", dirs_exist_ok=True)
  calls = run_script()
  assert not [c for c in calls if "create" in c or "delete" in c]
  assert not [c for c in calls if "tiny-l2-d128" in c]
  assert [c.split(" --")[0] for c in calls if "ssh" in c] == [f"{vm} ssh tiny-l3-d192"] * 2


@pytest.mark.parametrize("missing", ["project", "zone", "accelerator", "repo", "revision"])
def test_tpu_sweep_refuses_a_missing_flag_by_name(missing):
  spec = dataclasses.replace(V4_32, **{missing: ""})
  with pytest.raises(LaunchError, match=f"--{missing} is required: pass e.g. --{missing}="):
    tpu_sweep.script(spec, GS, load_sweep(TINY), jobs(GS), "one_slice")


@pytest.mark.parametrize("accelerator", ["v4-32", "v4-8"])
def test_tpu_sweep_refuses_a_workdir_that_is_not_in_a_bucket(accelerator):
  spec = dataclasses.replace(V4_32, accelerator=accelerator)
  with pytest.raises(LaunchError, match=r"--workdir='/shared/sweep': .*use e.g. --workdir=gs://"):
    tpu_sweep.script(spec, "/shared/sweep", load_sweep(TINY), jobs("/shared/sweep"), "one_slice")
  with pytest.raises(
    LaunchError, match=r"--config='/abs/scaling_tiny.py': .*inside the repository"
  ):
    tpu_sweep.script(spec, GS, load_sweep(TINY), jobs(GS, "/abs/scaling_tiny.py"), "one_slice")


def test_tpu_sweep_cli_prints_the_same_script_each_time_and_touches_nothing(tmp_path):
  """Dry run by default: nothing is run (no gcloud on PATH could be) and no file is written."""
  env = {**os.environ, "PATH": "", "HOME": str(tmp_path)}
  before = files(tmp_path), sorted(os.listdir(ROOT))
  args = [f"--config={TINY_REL}", f"--workdir={GS}", *TPU_FLAGS, "--tpu_mode=vm_per_member"]
  first, second = (
    subprocess.run(
      [sys.executable, "-m", "gptjax.sweep", *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    for _ in range(2)
  )
  assert first.returncode == 0, first.stderr
  assert (
    first.stdout
    == second.stdout
    == tpu_sweep.script(V4_32, GS, load_sweep(TINY), jobs(GS), "vm_per_member")
  )
  assert "dry run: nothing was run; add --execute" in first.stderr
  assert (files(tmp_path), sorted(os.listdir(ROOT))) == before
  missing = subprocess.run(
    [sys.executable, "-m", "gptjax.sweep", *args, "--zone="],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert missing.returncode != 0 and missing.stdout == ""  # refused before anything is printed
  assert "error: --zone is required: pass e.g. --zone=us-central2-b" in missing.stderr


SLURM = slurm.Cluster(
  job_name="tiny", nodes=2, gpus_per_node=8, partition="gpu", repo_dir="/shared/gptjax"
)


def sbatch_scripts(out: str) -> dict:
  """The dry run's output as {member: its sbatch script}; each follows a '### MEMBER: ...' line."""
  scripts = {}
  for chunk in out.split("### ")[1:]:
    header, _, text = chunk.partition("\n")
    name, _, what = header.partition(": ")
    if what.startswith("would write"):
      scripts[name] = text
  return scripts


def test_slurm_sweep_is_one_sbatch_job_per_member(tmp_path, capsys):
  sweep_dir = "/shared/sweeps/tiny"
  assert launch_slurm(SLURM, sweep_dir, load_sweep(TINY), jobs(sweep_dir), execute=False) == 0
  scripts = sbatch_scripts(capsys.readouterr().out)
  assert list(scripts) == MEMBERS
  for name, job in jobs(sweep_dir).items():
    text = scripts[name]
    assert text == slurm.script(dataclasses.replace(SLURM, job_name=f"tiny-{name}"), job)
    lines = text.splitlines()
    for option in (
      f"--job-name=tiny-{name}",
      "--nodes=2",
      "--ntasks-per-node=8",
      "--gpus-per-node=8",
      "--partition=gpu",
      "--requeue",
      "--dependency=singleton",
      f"--output={sweep_dir}/{name}/logs/slurm-%j.out",
    ):
      assert f"#SBATCH {option}" in lines
    assert "export GPTJAX_CACHE='/home/me/cache dir'" in lines
    assert f"if {completed_test(job.workdir)}; then" in lines
    assert shlex.split(lines[-1]) == ["srun", "--kill-on-bad-exit=1", "python", *job.main_args()]
    assert f"--workdir={sweep_dir}/{name}" in lines[-1]
    shellcheck(tmp_path, text)


def test_slurm_sweep_skips_a_diverged_member_as_a_local_sweep_does(tmp_path, capsys):
  """A rerun of a diverged member would diverge again, identically: it is not resubmitted."""
  sweep_dir = str(tmp_path / "sweep")
  os.makedirs(f"{sweep_dir}/{MEMBERS[0]}")
  with open(f"{sweep_dir}/{MEMBERS[0]}/summary.json", "w") as f:
    json.dump({"status": "diverged"}, f)
  one_node = dataclasses.replace(SLURM, nodes=1)  # /tmp is one node's: fine for one
  launch_slurm(one_node, sweep_dir, load_sweep(TINY), jobs(sweep_dir), execute=False)
  out = capsys.readouterr().out
  assert f"### {MEMBERS[0]}: diverged, skipped" in out
  assert list(sbatch_scripts(out)) == MEMBERS[1:]


def test_slurm_sweep_cli_skips_completed_members_touches_nothing_and_refuses_tmp(
  finished, tmp_path
):
  workdir, _ = finished
  sweep_dir = tmp_path / "sweep"
  shutil.copytree(workdir, sweep_dir)
  with open(sweep_dir / "l2-d128" / "summary.json") as f:
    summary = json.load(f)
  with open(sweep_dir / "l2-d128" / "summary.json", "w") as f:
    json.dump({**summary, "status": "running"}, f)  # as a preempted member leaves it
  before = files(sweep_dir)
  flags = [
    "--launcher=slurm",
    "--job_name=tiny",
    "--gpus_per_node=8",
    "--repo_dir=/shared/g",
    f"--env=GPTJAX_CACHE={ENV['GPTJAX_CACHE']}",
  ]
  first, second = (sweep(TINY, sweep_dir, *flags) for _ in range(2))
  assert first.returncode == 0, first.stderr
  assert first.stdout == second.stdout
  assert "### l1-d64: completed, skipped" in first.stdout
  assert "### l3-d192: completed, skipped" in first.stdout
  (text,) = sbatch_scripts(first.stdout).values()
  assert "#SBATCH --job-name=tiny-l2-d128" in text
  assert f"--workdir={sweep_dir / 'l2-d128'}" in text.splitlines()[-1]
  assert files(sweep_dir) == before
  refused = sweep(TINY, sweep_dir, *flags, "--nodes=2")
  assert refused.returncode != 0 and refused.stdout == ""
  assert f"--workdir='{sweep_dir}' with --nodes=2: it is node-local" in refused.stderr


def test_completed_test_reads_the_summaries_training_writes(finished, tmp_path):
  workdir, _ = finished
  for name in MEMBERS:
    assert subprocess.run(["bash", "-c", completed_test(str(workdir / name))]).returncode == 0
  with open(workdir / "l1-d64" / "summary.json") as f:
    summary = json.load(f)
  (tmp_path / "running").mkdir()
  with open(tmp_path / "running" / "summary.json", "w") as f:
    json.dump({**summary, "status": "running"}, f, indent=2)
  for run_dir in ("running", "missing"):
    assert subprocess.run(["bash", "-c", completed_test(str(tmp_path / run_dir))]).returncode != 0


def test_planned_flops_are_each_members_cost_and_bad_members_fail_before_any_training(tmp_path):
  planned = planned_flops(CPU, load_sweep(CPU))
  c = config_lib.base_config()
  c.model.vocab_size, c.model.seq_len = 257, 256
  model = sizes.model_config(sizes.free_shape(4, 256), c)
  tokens = math.ceil(3_000_000 / (16 * 256)) * 16 * 256  # whole updates of 16 x 256 tokens
  assert planned["l4-d256"] == tokens * flops.flops_per_token(model)
  bad = tmp_path / "bad.py"
  bad.write_text(open(TINY).read() + "\n\ndef get_sweep():\n  return {'m': {'model.n_head': 3}}\n")
  result = sweep(str(bad), tmp_path / "w")
  assert result.returncode != 0 and "member 'm'" in result.stderr and "n_head" in result.stderr
  assert not (tmp_path / "w").exists()


def test_eta_weighs_members_by_their_flops():
  def made(name, status, flops_, elapsed=0.0):
    return Member(member("/s", name, TINY, {}), status=status, elapsed_s=elapsed, flops=flops_)

  members = [
    made("a", "completed", 1e12, 10.0),
    made("b", "skipped", 9e12),
    made("c", "pending", 5e12),
  ]
  assert progress(members, 1, 0.0).splitlines()[-1].endswith("ETA 50s")  # 5e12 at 1e11 FLOP/s
  assert "ETA ? (after the first member)" in progress(members[1:], 1, 0.0)


@pytest.mark.parametrize(
  "spec, contents, message",
  [
    ("missing.py", None, r"missing.py: no such file"),
    ("notes.md", "# notes", r"notes.md: not a Python experiment file"),
    ("broken.py", "def get_sweep(:\n", r"broken.py: cannot load it \(SyntaxError"),
    ("noarg.py:x", "def get_sweep():\n  return {}\n", r"get_sweep\(\) failed \(TypeError"),
    ("empty.py", "def get_sweep():\n  return {}\n", r"empty.py: get_sweep\(\) returned no members"),
  ],
)
def test_a_bad_sweep_file_is_one_launch_error(tmp_path, spec, contents, message):
  path, _, arg = spec.partition(":")
  if contents is not None:
    (tmp_path / path).write_text(contents)
  with pytest.raises(LaunchError, match=message):
    load_sweep(str(tmp_path / path) + (f":{arg}" if arg else ""))
