"""Run directories on local disk and gs://: what is refused, writes that are never half done,
and one writer at a time."""

import datetime
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from gptjax import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("workdir", ["s3://bucket/run", "file:///tmp/run", "hf://x/y"])
def test_unknown_url_schemes_are_refused(workdir):
  with pytest.raises(ValueError) as e:
    rundir.check(workdir)
  assert f"--workdir={workdir}: unsupported URL scheme" in str(e.value)
  assert "gs://BUCKET/PATH" in str(e.value)


def test_local_and_gs_workdirs_pass_when_gcsfs_is_installed():
  rundir.check("runs/x")
  rundir.check("/tmp/x")
  rundir.check("gs://bucket/runs/x")


@pytest.mark.slow
def test_a_gs_workdir_without_gcsfs_fails_before_any_work(tmp_path):
  """`gptjax.main` with gcsfs unimportable (as when it is not installed) names the fix at once."""
  argv = [f"--config={ROOT}/experiments/quickstart.py", "--workdir=gs://bucket/run"]
  program = (
    "import sys; sys.modules['gcsfs'] = None\n"  # import gcsfs now raises ImportError
    "from absl import app; from gptjax import main\n"
    f"sys.argv = ['main', *{argv!r}]; app.run(main.main)"
  )
  result = subprocess.run(
    [sys.executable, "-c", program],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert result.returncode != 0
  assert (
    "error: --workdir=gs://bucket/run: a gs:// run directory needs gcsfs" in result.stderr
    and "pip install 'gptjax[tpu]'" in result.stderr
  ), result.stderr
  assert "process 0 of" not in result.stderr  # stopped before training started
  assert not os.listdir(tmp_path)  # and wrote nothing, least of all ./gs:/bucket/run


def test_local_atomic_writes_leave_no_temp_file(tmp_path):
  target = epath.Path(tmp_path) / "summary.json"
  rundir.write_atomic(target, "one")
  rundir.write_atomic(target, "two")
  assert target.read_text() == "two" and os.listdir(tmp_path) == ["summary.json"]


def test_gs_atomic_writes_replace_the_object_in_one_upload(gcs_bucket):
  target = epath.Path(f"gs://{gcs_bucket}/atomic/summary.json")
  rundir.write_atomic(target, "one")
  rundir.write_atomic(target, "two")
  assert target.read_text() == "two"
  assert [p.name for p in target.parent.iterdir()] == ["summary.json"]


def files_of(root) -> dict[str, tuple[str, int]]:
  """Every file under `root`: relative path -> (sha256 of its bytes, mtime in ns)."""
  found = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, root)] = (
          hashlib.sha256(f.read()).hexdigest(),
          os.stat(path).st_mtime_ns,
        )
  return found


def left_behind(path, host: str, pid: int, heartbeat_age_s: float = 0.0) -> None:
  """Writes the lock file a process that is gone now would have left at `path`."""
  beat = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=heartbeat_age_s)
  epath.Path(path).write_text(
    json.dumps(
      {
        "host": host,
        "pid": pid,
        "pid_ns": rundir._pid_namespace(),
        "pid_start": None,
        "started": "2026-01-01T00:00:00+00:00",
        "heartbeat": beat.isoformat(),
        "token": "gone",
        "command": "python -m gptjax.main --workdir=old",
      }
    )
  )


def dead_pid() -> int:
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


def test_a_second_writer_is_refused_naming_the_holder_and_changes_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  with rundir.RunLock(workdir, command="python -m gptjax.main --workdir=run"):
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 25}\n')
    before = files_of(workdir)
    with pytest.raises(rundir.InUse) as e:
      rundir.RunLock(workdir).acquire()
    assert files_of(workdir) == before
  message = str(e.value)
  assert isinstance(e.value, ValueError) and "\n" not in message
  assert message.startswith(
    f"--workdir={workdir} is in use by pid {os.getpid()} on {socket.gethostname()} since "
  ), message
  assert "command: python -m gptjax.main --workdir=run)" in message
  assert f"if that process is gone, delete {workdir}/lock and start again" in message
  assert sorted(os.listdir(workdir)) == ["config.json", "metrics.jsonl"]  # released: no lock


def test_the_lock_is_released_when_the_run_raises(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(RuntimeError), rundir.RunLock(workdir):
    raise RuntimeError("the run failed")
  assert not os.listdir(workdir)
  with rundir.RunLock(workdir):
    pass


def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  pid = dead_pid()
  left_behind(workdir / "lock", socket.gethostname(), pid, heartbeat_age_s=5)
  with rundir.RunLock(str(workdir)):
    assert json.loads((workdir / "lock").read_text())["pid"] == os.getpid()
  assert f"took over {workdir}/lock from pid {pid} on {socket.gethostname()}" in caplog.text


def test_a_lock_of_another_host_is_trusted_until_its_heartbeat_is_stale(tmp_path, caplog):
  """flock may not reach other hosts (some network filesystems), so their heartbeat decides."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  left_behind(workdir / "lock", "other-host", 4242, heartbeat_age_s=60)
  before = files_of(workdir)
  with pytest.raises(
    rundir.InUse,
    match=r"in use by pid 4242 on other-host since .*\(last "
    r"heartbeat 60 s ago.*\(a lock from another host is taken over once its "
    r"heartbeat is 300 s old\)$",
  ):
    rundir.RunLock(str(workdir)).acquire()
  assert files_of(workdir) == before
  left_behind(workdir / "lock", "other-host", 4242, heartbeat_age_s=rundir.STALE_S + 1)
  with rundir.RunLock(str(workdir)):
    pass
  assert (
    "from pid 4242 on other-host (since 2026-01-01T00:00:00+00:00): its last heartbeat"
    in caplog.text
  )


def test_the_heartbeat_refreshes_the_lock_and_notices_its_removal(tmp_path, monkeypatch):
  monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.01)
  lock_file = tmp_path / "run" / "lock"
  with rundir.RunLock(str(tmp_path / "run")) as lock:
    written = lock_file.stat().st_mtime_ns
    wait_for(lambda: lock_file.stat().st_mtime_ns != written)
    lock.check()
    lock_file.unlink()  # as a user told to delete a stale lock might, with this run alive
    wait_for(lambda: lock._lost)
    with pytest.raises(rundir.InUse, match="this run lost its lock"):
      lock.check()
  assert not lock_file.exists()


def wait_for(condition, timeout_s: float = 10.0) -> None:
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.01)


def test_gs_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(gcs_bucket, caplog):
  """Creating needs the object absent, taking over needs the generation read (preconditions)."""
  workdir = f"gs://{gcs_bucket}/locked/run"
  lock_file = epath.Path(workdir) / "lock"
  with rundir.RunLock(workdir):
    holder = json.loads(lock_file.read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(rundir.InUse, match=f"in use by pid {os.getpid()} on "):
      rundir.RunLock(workdir).acquire()
    assert json.loads(lock_file.read_text()) == holder
  assert not lock_file.exists()

  pid = dead_pid()
  left_behind(lock_file, socket.gethostname(), pid)
  with rundir.RunLock(workdir):
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  assert f"from pid {pid} on {socket.gethostname()}" in caplog.text
  assert "is no longer running" in caplog.text
  assert not lock_file.exists()


HOLDER = """
import signal, sys, time
from gptjax import rundir
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as training handles it: unwinding
with rundir.RunLock(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def start_holder(workdir: str) -> subprocess.Popen:
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLDER, workdir],
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert holder.stdout.readline() == "held\n"
  return holder


@pytest.mark.slow
def test_another_process_is_refused_and_its_lock_taken_over_after_kill_9(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  holder = start_holder(workdir)
  try:
    with pytest.raises(rundir.InUse, match=f"in use by pid {holder.pid} on "):
      rundir.RunLock(workdir).acquire()
  finally:
    holder.kill()
    holder.wait()
  assert os.listdir(workdir) == ["lock"]  # kill -9 leaves it behind ...
  with rundir.RunLock(workdir):  # ... and the next start takes it over, saying so
    pass
  assert f"from pid {holder.pid} on {socket.gethostname()}" in caplog.text


@pytest.mark.slow
def test_sigterm_releases_the_lock(tmp_path):
  workdir = str(tmp_path / "run")
  holder = start_holder(workdir)
  holder.send_signal(signal.SIGTERM)
  assert holder.wait() == 143
  assert not os.listdir(workdir)


@pytest.mark.slow
@pytest.mark.parametrize(
  "row, says",
  [
    # Eval rows from a single document carry no SEM (null): the line says so.
    ('"eval_loss": 3.25, "eval_loss_sem": null', "3.2500 (SEM n/a: one document or example)"),
    # sft: the loss over response targets, with its SEM over examples.
    ('"eval_loss": 1.5, "eval_loss_sem": 0.125, "eval_targets": 90', "1.5000 ± 0.1250"),
  ],
)
def test_closing_line_says_the_eval_and_its_sem(tmp_path, row, says):
  """The run's closing line after a finished run, also where the SEM is null (no crash)."""
  (tmp_path / "metrics.jsonl").write_text(f'{{"step": 4, {row}}}\n')
  summary = {"status": "completed", "step": 4, "wall_s": 61.0}
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      f"import sys; from gptjax import main; print(main._closing_line({summary!r}, sys.argv[1]))",
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=True,
  )
  on_responses = "on responses " if "eval_targets" in row else ""
  assert result.stdout.strip() == (
    f"completed: 4 steps, eval loss {says} nats/token {on_responses}at step 4, "
    f"1m01s of training, run directory {tmp_path}"
  )
