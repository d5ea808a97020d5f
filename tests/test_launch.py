"""Launchers: the exact gcloud commands and sbatch script for a sweep, their refusals, and a
real 2-process local run."""

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from shell import remote, shellcheck

from gptjax import sweep
from gptjax.launch import local, slurm, tpu
from gptjax.launch.job import Job, LaunchError, completed_test, member

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = {
  "s1": {"model.n_layer": 2, "model.d_model": 128},
  "s2": {"model.n_layer": 4, "model.d_model": 256},
}
ENV = {"GPTJAX_CACHE": "/home/me/cache dir"}  # a space: quoting must survive the remote shell


def sweep_jobs(sweep_dir):
  return {
    name: member(
      sweep_dir,
      name,
      "experiments/gpt3.py:xl",
      {**overrides, "data.data_dir": "gs://bucket/tfds"},
      ENV,
    )
    for name, overrides in SWEEP.items()
  }


def v4_32(name, **kw):
  return tpu.Tpu(
    name=f"sweep-{name}",
    project="proj",
    zone="us-central2-b",
    accelerator="v4-32",
    provisioning="spot",
    repo="https://example.com/gptjax.git",
    revision="abc123",
    **kw,
  )


def test_tpu_sweep_starts_every_member_on_all_workers_in_its_own_workdir(tmp_path):
  for name, job in sweep_jobs("gs://bucket/sweep").items():
    spec = v4_32(name)
    create, setup, run = tpu.commands("up", spec, job)
    assert create == [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      f"sweep-{name}",
      "--accelerator-type=v4-32",
      "--version=tpu-ubuntu2204-base",
      "--spot",
      "--project=proj",
      "--zone=us-central2-b",
    ]
    assert "--worker=all" in setup and "--worker=all" in run
    assert "git checkout abc123" in remote(setup)
    assert "pip install -e '.[tpu]'" in remote(setup)
    text = remote(run)
    assert text.startswith("cd ~/gptjax && ")
    main = job.main_args()
    assert f"GPTJAX_CACHE='/home/me/cache dir' {shlex.join(['python3', *main])} ||" in text
    assert f"--workdir=gs://bucket/sweep/{name}" in main
    assert f"--config.model.d_model={SWEEP[name]['model.d_model']}" in main
    assert "--config.data.data_dir=gs://bucket/tfds" in main
    assert f"if {completed_test(job.workdir)}; then" in text  # a finished run is not retrained
    for command in (setup, run):
      shellcheck(tmp_path, remote(command))
    (logs,) = tpu.commands("logs", spec)
    assert "--worker=0" in logs and tpu.log_path(spec) in remote(logs)


def test_tpu_run_skips_completed_jobs_goes_on_after_a_failure_and_never_starts_twice(tmp_path):
  """Runs the workers' side of `tpu run` here: HOME stands in for a worker's home directory."""
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  (home / "gptjax").mkdir(parents=True)
  bin_dir.mkdir()
  for tool in ("cat", "grep"):  # and no python3: the job to train fails at once, exit 127
    os.symlink(shutil.which(tool), bin_dir / tool)
  done, todo = (
    member(str(tmp_path / "sweep"), name, "experiments/gpt3.py:xl", {}) for name in ("done", "todo")
  )
  os.makedirs(done.workdir)
  with open(os.path.join(done.workdir, "summary.json"), "w") as f:
    json.dump({"status": "completed"}, f, indent=2)
  spec = dataclasses.replace(v4_32("s1"), accelerator="v4-8")  # one host: a local workdir is fine
  text = remote(tpu.run(spec, done, todo))
  env = {"HOME": str(home), "PATH": str(bin_dir)}
  log, pid = home / "gptjax_sweep-s1.log", home / "gptjax_sweep-s1.pid"
  subprocess.run([shutil.which("bash"), "-c", text], env=env, check=True, timeout=30)
  deadline = time.monotonic() + 30
  while "todo: failed" not in (log.read_text() if log.exists() else ""):
    assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
    time.sleep(0.1)
  first = log.read_text()
  assert first.splitlines()[0] == f"{done.workdir}: completed, skipped"
  assert first.splitlines()[-1] == f"{todo.workdir}: failed (exit 127)"
  pid.write_text(f"{os.getpid()}\n")  # a start that is still alive: nothing new may start
  again = subprocess.run(
    [shutil.which("bash"), "-c", text],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=30,
  )
  assert again.stdout == f"already running, pid {os.getpid()}\n"
  assert log.read_text() == first


def test_tpu_relaunch_recreates_the_vm_and_reruns_the_same_command():
  job = sweep_jobs("gs://bucket/sweep")["s1"]
  spec = v4_32("s1")
  up = tpu.commands("up", spec, job)
  relaunch = tpu.commands("relaunch", spec, job)
  assert relaunch[0] == tpu.commands("delete", spec)[0]
  assert relaunch[1:] == up  # same workdir, same command: the run resumes from its checkpoint


def test_tpu_queued_resources():
  spec = v4_32("s1", queued=True)
  (create,) = tpu.commands("create", spec)
  assert create[3:6] == ["queued-resources", "create", "sweep-s1"]
  assert "--node-id=sweep-s1" in create and "--runtime-version=tpu-ubuntu2204-base" in create
  assert "--spot" in create
  assert tpu.commands("delete", spec)[0][3:5] == ["queued-resources", "delete"]
  # up waits for the queued request to become a VM before it sets the VM up.
  job = sweep_jobs("gs://b/s")["s1"]
  create, wait, setup, _ = tpu.commands("up", spec, job)
  assert create[3:5] == ["queued-resources", "create"] and wait[:2] == ["bash", "-c"]
  assert wait[2].splitlines() == tpu.wait_until_ready(spec) and "ssh" in setup
  assert [c[:2] for c in tpu.commands("relaunch", spec, job)].count(["bash", "-c"]) == 1
  assert len(tpu.commands("up", dataclasses.replace(spec, queued=False), job)) == 3
  with pytest.raises(LaunchError, match="--provisioning=preemptible with --queued.*spot"):
    tpu.commands("create", dataclasses.replace(spec, provisioning="preemptible"))


@pytest.mark.parametrize(
  "accelerator,hosts",
  [
    ("v4-8", 1),
    ("v4-32", 4),
    ("v5p-128", 16),
    ("v5litepod-8", 1),
    ("v5litepod-16", 4),
    ("v6e-256", 64),
    ("v3-32", 4),
  ],
)
def test_tpu_host_counts(accelerator, hosts):
  assert tpu.hosts(accelerator) == hosts


def test_slurm_script_for_each_member(tmp_path):
  for name, job in sweep_jobs("/shared/sweep").items():
    cluster = slurm.Cluster(
      job_name=name, nodes=2, gpus_per_node=8, repo_dir="/shared/gptjax", partition="gpu"
    )
    text = slurm.script(cluster, job)
    lines = text.splitlines()
    for option in (
      f"--job-name={name}",
      "--nodes=2",
      "--ntasks-per-node=8",
      "--gpus-per-node=8",
      f"--output=/shared/sweep/{name}/logs/slurm-%j.out",
      "--requeue",
      "--partition=gpu",
    ):
      assert f"#SBATCH {option}" in lines
    assert "export GPTJAX_CACHE='/home/me/cache dir'" in lines
    assert "#SBATCH --dependency=singleton" in lines  # a resubmission waits, never runs alongside
    assert f"if {completed_test(job.workdir)}; then" in lines  # a finished run is not retrained
    assert shlex.split(lines[-1]) == ["srun", "--kill-on-bad-exit=1", "python", *job.main_args()]
    assert f"--workdir=/shared/sweep/{name}" in lines[-1]
    shellcheck(tmp_path, text)
  per_node = slurm.script(slurm.Cluster("s1", 2, 8, tasks="node", repo_dir="/shared/g"), job)
  assert "#SBATCH --ntasks-per-node=1" in per_node.splitlines()
  # One task per node drives all 8 GPUs (JAX's SLURM default would give it GPU 0 alone).
  assert shlex.split(per_node.splitlines()[-1])[-len(job.overrides) - 1] == (
    "--local_device_ids=0,1,2,3,4,5,6,7"
  )


def test_slurm_makes_a_relative_workdir_absolute_before_the_script_changes_directory(
  tmp_path, monkeypatch
):
  """The completed check and the log path are read before `cd REPO_DIR`, training after it:
  a relative workdir would name two directories."""
  monkeypatch.chdir(tmp_path)
  text = slurm.script(slurm.Cluster("s1", 1, 8, repo_dir="/shared/g"), Job("e.py", "runs/x"))
  assert f"#SBATCH --output={tmp_path}/runs/x/logs/slurm-%j.out" in text.splitlines()
  assert f"--workdir={tmp_path}/runs/x" in text.splitlines()[-1]
  assert "runs/x" not in text.replace(f"{tmp_path}/runs/x", "")


@pytest.mark.parametrize(
  "missing,flag", [("project", "--project"), ("zone", "--zone"), ("accelerator", "--accelerator")]
)
def test_tpu_refuses_a_missing_flag_by_name(missing, flag):
  spec = dataclasses.replace(v4_32("s1"), **{missing: ""})
  for action in ("create", "up", "delete"):
    job = sweep_jobs("gs://b/s")["s1"] if action == "up" else None
    with pytest.raises(LaunchError, match=f"{flag} is required: pass e.g. {flag}="):
      tpu.commands(action, spec, job)


def test_cli_refuses_missing_project_and_prints_without_executing():
  base = [
    sys.executable,
    "-m",
    "gptjax.launch",
    "tpu",
    "create",
    "--name=s1",
    "--zone=us-central2-b",
    "--accelerator=v4-32",
  ]
  result = subprocess.run(base, capture_output=True, text=True, cwd=ROOT)
  assert result.returncode != 0
  assert "error: --project is required" in result.stderr
  result = subprocess.run(
    [*base, "--project=p"], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PATH": ""}
  )  # no gcloud could run: dry-run only
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("gcloud compute tpus tpu-vm create s1 ")


def test_slurm_refuses_missing_accelerator_and_bookkeeping():
  job = Job("experiments/gpt3.py:xl", "/shared/run")
  with pytest.raises(LaunchError, match=r"--gpus_per_node=0: use 1 or more"):
    slurm.script(slurm.Cluster("s1", 1, 0, repo_dir="/shared/g"), job)
  with pytest.raises(LaunchError, match="--repo_dir is required"):
    slurm.script(slurm.Cluster("s1", 1, 8), job)
  with pytest.raises(LaunchError, match="--job_name is required"):
    slurm.script(slurm.Cluster("", 1, 8, repo_dir="/shared/g"), job)


@pytest.mark.parametrize("workdir", ["/tmp/run", "runs/s1", "/dev/shm/run"])
def test_multi_host_refuses_a_workdir_that_is_not_shared(workdir):
  job = Job("experiments/gpt3.py:xl", workdir)
  with pytest.raises(LaunchError, match=rf"--workdir='{workdir}': v4-32 has 4 hosts.*gs://"):
    tpu.commands("up", v4_32("s1"), job)
  with pytest.raises(LaunchError, match=rf"--workdir='{workdir}' with --nodes=2: .*shared"):
    slurm.script(slurm.Cluster("s1", 2, 8, repo_dir="/shared/g"), job)
  # One host sees its own disk, so both accept it there.
  tpu.commands("up", dataclasses.replace(v4_32("s1"), accelerator="v4-8"), job)
  slurm.script(slurm.Cluster("s1", 1, 8, repo_dir="/shared/g"), job)


def test_multi_host_tpu_refuses_a_local_data_dir():
  job = Job("experiments/gpt3.py:xl", "gs://b/run", {"data.data_dir": "/home/me/tfds"})
  with pytest.raises(LaunchError, match=r"--config.data.data_dir='/home/me/tfds'.*gs://"):
    tpu.commands("run", v4_32("s1"), job)


def test_member_names_the_run_directory_and_refuses_unusable_names():
  assert member("gs://b/sweep", "s1", "c.py", {}).workdir == "gs://b/sweep/s1"
  with pytest.raises(LaunchError, match="member name 'S 1'"):
    member("/shared/sweep", "S 1", "c.py", {})


TINY = {
  "model.n_layer": 2,
  "model.d_model": 64,
  "model.n_head": 8,
  "model.d_ff": 128,
  "model.vocab_size": 264,
  "model.seq_len": 16,
  "data.tokenizer": "bytes",
  "data.eval_sequences": 8,
  "train.batch_size": 8,
  "train.steps": 20,
  "train.log_every": 5,
  "train.eval_every": 10,
  "train.checkpoint_every": 10,
  "train.num_samples": 0,
  "optim.warmup_steps": 1,
}


@pytest.mark.slow
def test_local_two_processes_train_a_sweep_member_end_to_end(tmp_path):
  job = member(str(tmp_path), "s1", f"{ROOT}/experiments/quickstart.py", TINY)
  local.run(job, num_processes=2, devices_per_process=2, timeout_s=240)
  with open(os.path.join(job.workdir, "summary.json")) as f:
    assert json.load(f)["status"] == "completed"
  with open(os.path.join(job.workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert max(row["step"] for row in rows) == 20
  assert any("eval_loss" in row for row in rows)
  with open(os.path.join(job.workdir, "logs", "process_1.log")) as f:
    log = f.read()
  assert "process 1 of 2, 2 local devices" in log
  # Both processes share this host's cores: one CPU peak, not one per process.
  assert log.split("MFU divides by ")[1].splitlines()[0].endswith(", 1 of them")


@pytest.mark.slow
def test_local_names_the_process_that_failed(tmp_path):
  job = Job(f"{ROOT}/experiments/quickstart.py", str(tmp_path), {"model.n_layer": 0})
  with pytest.raises(LaunchError, match=r"process \d of 2 exited with code 1; its log: .*process_"):
    local.run(job, num_processes=2, timeout_s=120)


def test_launch_scripts_are_shellcheck_clean_and_print_what_the_python_prints(tmp_path):
  """launch/*.sh are thin wrappers: each passes its arguments to the Python launcher
  unchanged, so `launch/tpu.sh up ...` prints exactly `python -m gptjax.launch tpu up ...`,
  with every remote command on --worker=all."""
  scripts = sorted(p for p in os.listdir(os.path.join(ROOT, "launch")) if p.endswith(".sh"))
  assert scripts == ["local.sh", "slurm.sh", "sweep.sh", "tpu.sh"]
  for name in scripts:
    with open(os.path.join(ROOT, "launch", name)) as f:
      shellcheck(tmp_path, f.read())
  args = [
    "up",
    "--name=vm",
    "--project=p",
    "--zone=z",
    "--accelerator=v4-32",
    "--repo=https://example.com/gptjax.git",
    "--revision=abc",
    "--config=experiments/gpt3.py:xl",
    "--workdir=gs://b/run",
    "--config.train.steps=5",
  ]
  env = {**os.environ, "PYTHON": sys.executable}
  script = subprocess.run(
    [os.path.join(ROOT, "launch", "tpu.sh"), *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    check=True,
  ).stdout
  direct = subprocess.run(
    [sys.executable, "-m", "gptjax.launch", "tpu", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=True,
  ).stdout
  assert script == direct
  lines = script.splitlines()
  assert len(lines) == 3 and all("--worker=all" in line for line in lines[1:])


@pytest.mark.parametrize(
  "key, ok", [("train.batch_ramp.tokens", True), ("train", False), ("train..steps", False)]
)
def test_sweep_override_keys_may_name_nested_fields(tmp_path, key, ok):
  experiment = tmp_path / "nested.py"
  experiment.write_text(
    f"def get_config():\n  return None\ndef get_sweep():\n  return {{'m': {{{key!r}: 1}}}}\n"
  )
  if ok:
    assert sweep.load_sweep(str(experiment)) == {"m": {key: 1}}
  else:
    with pytest.raises(LaunchError, match=f"override key {key!r} is not 'group.field'"):
      sweep.load_sweep(str(experiment))


@pytest.mark.slow
def test_sigterm_to_the_local_launcher_checkpoints_every_process_and_stops(tmp_path):
  """The launcher passes SIGTERM on (it alone gets it from a scheduler or `kill`), waits for
  the processes to agree on a step and checkpoint it, then says how to resume."""
  workdir = tmp_path / "run"
  overrides = {
    **TINY,
    "train.steps": 100_000,
    "train.log_every": 1,
    "train.checkpoint_every": 10**5,
  }
  launcher = subprocess.Popen(
    [sys.executable, "-m", "gptjax.launch", "local", "--num_processes=2"]
    + [f"--config={ROOT}/experiments/quickstart.py", f"--workdir={workdir}"]
    + [f"--config.{k}={v}" for k, v in overrides.items()],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  log = workdir / "logs" / "process_0.log"
  deadline = time.monotonic() + 240
  while not (log.exists() and "step 3/" in log.read_text()):
    assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
    time.sleep(0.2)
  launcher.send_signal(signal.SIGTERM)
  output, _ = launcher.communicate(timeout=240)
  assert launcher.returncode == 1 and "stopped by SIGTERM" in output, output
  for i in (0, 1):
    assert "interrupted: checkpointed step" in (workdir / "logs" / f"process_{i}.log").read_text()
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "running" and 3 <= summary["step"] < 100_000
  assert (workdir / "checkpoints" / str(summary["step"])).is_dir()
