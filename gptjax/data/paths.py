"""Where gptjax keeps derived artefacts (datasets, tokenizers, token caches).

Everything here is derived data that can be rebuilt, so it lives under one cache
root that users can relocate (e.g. to a bigger disk, or to a tmp dir in tests)
with a single environment variable instead of a flag per artefact.

Several processes (a sweep's members, two terminals) may need the same missing
entry at once; `building` lets one build it while the others wait and reuse it.
"""

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator

from absl import logging

CACHE_ENV_VAR = "GPTJAX_CACHE"


def cache_root() -> str:
  """Returns `$GPTJAX_CACHE`, or `~/.cache/gptjax` when it is unset or empty."""
  root = os.environ.get(CACHE_ENV_VAR) or os.path.join("~", ".cache", "gptjax")
  return os.path.expanduser(root)


def resolve_data_dir(data_dir: str) -> str:
  """Maps the `data.data_dir` setting to a directory; '' means the cache default."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.path.join(cache_root(), "tensorflow_datasets")


def atomic_write_bytes(path: str, payload: bytes) -> None:
  """Writes `payload` so that readers never see a half-written cache file.

  Caches are trusted once they exist, so a crash mid-write must not leave a
  truncated file behind: write to a sibling temp file, then rename.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp_path = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp_path, "wb") as f:
      f.write(payload)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):  # a full disk or a file-size limit: leave no partial file
      os.remove(tmp_path)
    raise


@contextlib.contextmanager
def building(entry: str) -> Iterator[None]:
  """Holds an inter-process lock for building cache `entry`: check again, then build.

  Without it, two processes that both find `entry` missing both build it: TFDS's
  final rename then fails in one of them with FileExistsError, and a large token
  file is encoded twice. With it, the second waits here and then finds the entry
  built. The lock is flock(2) on `entry.lock`, which the kernel releases however
  its holder exits, so a killed build never blocks the next one; the file stays,
  because removing it would let a waiter lock a file that a newcomer cannot see.

  A gs:// entry (a TFDS data_dir) is locked by a file under the local cache root
  instead, which makes the processes of this host wait for each other but not
  those of other hosts: prepare a shared dataset once before a multi-host run.
  """
  if "://" in entry:
    digest = hashlib.sha256(entry.encode()).hexdigest()[:16]
    lock_path = os.path.join(cache_root(), "locks", f"{digest}.lock")
  else:
    lock_path = f"{entry}.lock"
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with open(lock_path, "a") as lock_file:
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("waiting for another process that is building %s", entry)
      fcntl.flock(lock_file, fcntl.LOCK_EX)
    yield
