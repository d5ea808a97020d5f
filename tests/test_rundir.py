"""Run directories on local disk and gs://: what is refused, and writes that are never half done."""

import os
import subprocess
import sys

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


def test_a_gs_workdir_without_gcsfs_fails_before_any_work(tmp_path):
  """`gptjax.main` with gcsfs unimportable (as when it is not installed) names the fix at once."""
  argv = [f"--config={ROOT}/experiments/quickstart.py", "--workdir=gs://bucket/run"]
  program = ("import sys; sys.modules['gcsfs'] = None\n"  # import gcsfs now raises ImportError
             "from absl import app; from gptjax import main\n"
             f"sys.argv = ['main', *{argv!r}]; app.run(main.main)")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode != 0
  assert ("error: --workdir=gs://bucket/run: a gs:// run directory needs gcsfs" in result.stderr
          and "pip install 'gptjax[tpu]'" in result.stderr), result.stderr
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
