"""Helpers for tests of generated shell: shellcheck it, and find what a `gcloud ... ssh` runs."""

import shutil
import subprocess

import pytest


def remote(command: list[str]) -> str:
  """The shell text a `gcloud ... ssh --command=...` runs on the workers."""
  (text,) = [arg[len("--command=") :] for arg in command if arg.startswith("--command=")]
  return text


def shellcheck(tmp_path, text: str) -> None:
  """Fails with shellcheck's findings on `text` (a script, or bash lines without a #! line)."""
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed")
  path = tmp_path / "script.sh"
  path.write_text(text if text.startswith("#!") else "#!/bin/bash\n" + text + "\n")
  result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
