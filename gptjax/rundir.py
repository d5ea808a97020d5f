"""The run directory (WORKDIR) as a local path or a gs:// URL, through etils.epath.

A TPU pod's hosts need one run directory they all see, and a TPU VM's disk is
lost on preemption, so WORKDIR may be `gs://BUCKET/PATH`. Python's own file
functions would read that as the relative local path `gs:/BUCKET/PATH`, so every
run-directory read and write goes through `epath.Path`: local paths reach the os
functions as before; gs:// reaches GCS through fsspec's gcsfs (or tf.io.gfile
when TensorFlow happens to be installed; gptjax never needs it). Orbax takes the
URL as it is and writes checkpoint arrays with TensorStore's own GCS driver.

What is atomic where (see `write_atomic`):
- Locally a file is written beside its target and renamed over it: POSIX rename is
  atomic, so a reader or a rerun after `kill -9` sees the old file or the new one.
- GCS has no rename (epath's is a copy and a delete, or a server-side move), but it
  replaces an object only when its upload completes, whole. So one upload of the
  finished text is as atomic as the local rename, and cheaper than a copy.
- Nothing spanning several objects is atomic on GCS: a half-written directory can
  be seen (orbax marks finished checkpoints with a commit file for this reason).
  Nor can an object be appended to (gcsfs silently turns append into overwrite),
  so metrics.jsonl is rewritten whole there (metrics.py).
"""

from __future__ import annotations

import importlib
import os
import re

from etils import epath

# URL schemes a run directory may use, with the modules their I/O needs: gcsfs for
# epath's gs:// backend, google.cloud.storage for orbax (it lists checkpoint steps
# with it). Both come with the tpu and cuda extras.
_REMOTE_MODULES = {"gs": ("gcsfs", "google.cloud.storage")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _scheme(workdir: str) -> str | None:
  """The URL scheme of `workdir` ('gs'), or None for a local path."""
  match = _SCHEME.match(workdir)
  return match.group(1) if match else None


def is_remote(workdir: str | os.PathLike) -> bool:
  return _scheme(os.fspath(workdir)) is not None


def check(workdir: str) -> None:
  """Raises ValueError naming --workdir and the fix if this process cannot write `workdir`.

  Called before any work, so a pod run without the GCS packages stops at once
  rather than after data preparation and compilation.
  """
  url_scheme = _scheme(workdir)
  if url_scheme is None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise ValueError(f"--workdir={workdir}: is a file, not a directory; pass a run "
                       "directory (it is created if missing)")
    return
  if url_scheme not in _REMOTE_MODULES:
    raise ValueError(
        f"--workdir={workdir}: unsupported URL scheme {url_scheme}://; use a local "
        "directory or gs://BUCKET/PATH")
  missing = [m for m in _REMOTE_MODULES[url_scheme] if not _importable(m)]
  if missing:
    raise ValueError(
        f"--workdir={workdir}: a {url_scheme}:// run directory needs {' and '.join(missing)}, "
        "which this Python cannot import; install them with pip install 'gptjax[tpu]' "
        "(or 'gptjax[cuda]' on GPUs)")


def _importable(module: str) -> bool:
  try:
    importlib.import_module(module)
  except ImportError:
    return False
  return True


def write_atomic(target: epath.Path, text: str) -> None:
  """Replaces `target` with `text` so that no reader ever sees half of it.

  Locally: write a temp file, then rename. On GCS: one upload of the finished
  text (the text is built before the file opens, because a failed write inside
  an open gcsfs file still uploads what it has when the file closes).
  """
  if is_remote(target):
    target.write_text(text)
    return
  tmp = target.parent / (target.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(target)


def append_line(target: epath.Path, line: str) -> None:
  """Adds one line to a small log file (resumes.jsonl). An object store cannot
  append, so there the file is read and uploaded whole (write_atomic)."""
  if is_remote(target):
    write_atomic(target, (target.read_text() if target.exists() else "") + line + "\n")
    return
  with target.open("a") as f:
    f.write(line + "\n")
