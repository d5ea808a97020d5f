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

One writer at a time (see `RunLock`): WORKDIR/lock names the process that holds the
run directory, and a second process is refused before it writes anything.
"""

from __future__ import annotations

import datetime
import fcntl
import importlib
import json
import os
import re
import secrets
import shlex
import socket
import sys
import threading
import time
from typing import Any

from absl import logging
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
      raise ValueError(
        f"--workdir={workdir}: is a file, not a directory; pass a run "
        "directory (it is created if missing)"
      )
    return
  if url_scheme not in _REMOTE_MODULES:
    raise ValueError(
      f"--workdir={workdir}: unsupported URL scheme {url_scheme}://; use a local "
      "directory or gs://BUCKET/PATH"
    )
  missing = [m for m in _REMOTE_MODULES[url_scheme] if not _importable(m)]
  if missing:
    raise ValueError(
      f"--workdir={workdir}: a {url_scheme}:// run directory needs {' and '.join(missing)}, "
      "which this Python cannot import; install them with pip install 'gptjax[tpu]' "
      "(or 'gptjax[cuda]' on GPUs)"
    )


def _importable(module: str) -> bool:
  try:
    importlib.import_module(module)
  except ImportError:
    return False
  return True


def write_atomic(target: epath.Path, text: str | bytes) -> None:
  """Replaces `target` with `text` so that no reader ever sees half of it.

  Locally: write a temp file, then rename. On GCS: one upload of the finished
  text (the text is built before the file opens, because a failed write inside
  an open gcsfs file still uploads what it has when the file closes).
  """
  write = epath.Path.write_bytes if isinstance(text, bytes) else epath.Path.write_text
  if is_remote(target):
    write(target, text)
    return
  tmp = target.parent / (target.name + ".tmp")
  write(tmp, text)
  tmp.replace(target)


def write_json(target: epath.PathLike, obj: dict[str, Any]) -> None:
  """`obj` as indented JSON, atomically (write_atomic): every JSON file of a run or a sweep."""
  write_atomic(epath.Path(target), json.dumps(obj, indent=2))


def append_line(target: epath.Path, line: str) -> None:
  """Adds one line to a small log file (resumes.jsonl). An object store cannot
  append, so there the file is read and uploaded whole (write_atomic)."""
  if is_remote(target):
    write_atomic(target, (target.read_text() if target.exists() else "") + line + "\n")
    return
  with target.open("a") as f:
    f.write(line + "\n")


# --- one writer per run directory --------------------------------------------------

LOCK_NAME = "lock"
# A holder rewrites its lock's heartbeat this often. A lock written on another host is
# taken to be left behind by a process that died (kill -9, a lost VM) once its heartbeat
# is STALE_S old: nothing on this host can ask whether that process still runs. That is
# ten missed beats, so a slow GCS write or a briefly stalled host keeps its lock.
HEARTBEAT_S = 30.0
STALE_S = 300.0
_COMMAND_CHARS = 200  # of the holder's command line, in the refusal


class InUse(ValueError):
  """The run directory is held by another process, or was taken from this one."""


class RunLock:
  """WORKDIR/lock: one process at a time writes a run directory.

  Two processes on one run directory interleave metrics.jsonl rows and fight over
  checkpoints, so a second one must stop before it writes anything. The lock is a
  small JSON file naming its holder (host, pid, start, heartbeat, command), so the
  refusal can say who holds the directory, since when, and what to do.

    with rundir.RunLock(workdir):
      ...  # everything the run writes

  `acquire` (entering the block) creates WORKDIR if needed, and raises `InUse`, a
  ValueError with a one-line message, having created or changed nothing, while
  another live process holds the directory. Leaving the block releases the lock
  (removes the file), on an exception too; so does a SIGTERM that is handled by
  setting a flag and returning, as training does. A process killed outright (kill -9,
  a lost host) leaves the file behind, and the next start takes it over, logging a
  warning, as soon as it can tell the holder is gone:

  - Local disk: the file is held with flock(2), which the kernel drops however its
    holder exits, so a file left by a process of this host is taken over at once.
    flock reaches across hosts on NFS but not on every network filesystem, so a file
    written by another host is trusted until its heartbeat is STALE_S old, even when
    its flock is free. A filesystem without flock is refused with a ValueError.
  - gs://: GCS has no locks, but an upload can be conditional on the object's
    generation. Creating the lock requires that no object exists
    (if_generation_match=0); taking over a stale one and refreshing the heartbeat
    require the generation last read. So two processes never both create the lock,
    nor both take over the same stale one. A stale holder from this host (same pid
    namespace) is recognised by its pid being gone or reused; one from another host,
    by its heartbeat being STALE_S old. Removing the lock on release is conditional
    too, so it never removes another process's lock.

  A daemon thread rewrites the heartbeat every HEARTBEAT_S. If it finds the lock
  removed or taken over (by hand, or by another host after this process stalled for
  STALE_S), it logs an error, and `check` raises from then on: call it before writes
  that must not be doubled, such as a checkpoint.

  In a multi-process run, process 0 alone holds the lock (the other processes are the
  same run). Acquire it there before the first collective, and stop every process when
  it is refused (e.g. broadcast the outcome with multihost_utils.broadcast_one_to_all),
  or the others wait for process 0 until jax.distributed times out.
  """

  def __init__(self, workdir: str, command: str | None = None):
    """`command` is shown to a refused process; by default this process's argv."""
    self.workdir = workdir
    self.path = epath.Path(workdir) / LOCK_NAME
    self._command = shlex.join(sys.argv) if command is None else command
    self._record: dict[str, Any] = {}
    self._fd: int | None = None  # local: the open, flocked lock file
    self._blob: Any = None  # gs://: the lock object ...
    self._generation: int | None = None  # ... and the generation this process wrote
    self._stop = threading.Event()
    self._heartbeat: threading.Thread | None = None
    self._lost: str | None = None

  def __enter__(self) -> RunLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, or raises InUse naming its holder and the fix (see the class)."""
    now = _now()
    self._record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "pid_ns": _pid_namespace(),
      "pid_start": _process_start(os.getpid()),
      "started": now,
      "heartbeat": now,
      "token": secrets.token_hex(8),
      "command": self._command,
    }
    if is_remote(self.workdir):
      self._acquire_gcs()
    else:
      self._acquire_local()
    self._lost = None
    self._stop.clear()
    self._heartbeat = threading.Thread(target=self._beat, name="gptjax-run-lock", daemon=True)
    self._heartbeat.start()

  def check(self) -> None:
    """Raises InUse if the heartbeat found the lock removed or taken over."""
    if self._lost:
      raise InUse(
        f"--workdir={self.workdir}: this run lost its lock {self.path}: {self._lost}; "
        "another process may be writing this run directory, so this one stops"
      )

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file, unless it is no longer this process's."""
    if self._heartbeat is None:
      return
    self._stop.set()
    self._heartbeat.join()
    self._heartbeat = None
    if self._fd is not None:
      if _same_file(self._fd, os.fspath(self.path)):
        os.unlink(self.path)  # while still flocked: a racing start then opens a new file
      os.close(self._fd)
      self._fd = None
      return
    from google.api_core import exceptions

    try:
      self._blob.delete(if_generation_match=self._generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      pass  # removed or taken over: no longer this process's to remove
    except exceptions.GoogleAPIError as e:  # the run itself is done; don't hide how it ended
      logging.warning(
        "could not remove %s (%s); the next start takes it over once its heartbeat is %.0f s old",
        self.path,
        e,
        STALE_S,
      )

  def _acquire_local(self) -> None:
    path = os.fspath(self.path)
    while True:
      try:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise ValueError(
          f"--workdir={self.workdir}: cannot create {path} ({e.strerror}); use "
          "a directory this user can write"
        ) from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise self._in_use(holder) from None
      except OSError as e:
        os.close(fd)
        raise ValueError(
          f"--workdir={self.workdir}: cannot lock {path} ({e.strerror}): this filesystem has "
          "no flock; use a run directory on local disk, NFS or gs://"
        ) from e
      if _same_file(fd, path):
        break
      os.close(fd)  # its holder removed it on release after we opened it: open the new one
    text = os.pread(fd, 1 << 16, 0)  # empty when this process just created the file
    previous = _parse(text)
    reason = _stale_reason(previous, self._record, flock_free=True) if previous else None
    if previous and not reason:
      os.close(fd)
      raise self._in_use(previous)
    self._fd = fd
    self._write_local()
    if previous:
      _log_takeover(self.path, previous, reason)
    elif text:
      logging.warning("took over %s, which did not say who held it", self.path)

  def _acquire_gcs(self) -> None:
    from google.api_core import exceptions
    from google.cloud import storage

    bucket, _, name = os.fspath(self.path).removeprefix("gs://").partition("/")
    self._blob = storage.Client().bucket(bucket).blob(name)
    try:
      self._take_gcs()
    except exceptions.GoogleAPIError as e:  # no such bucket, no permission, no network
      raise ValueError(
        f"--workdir={self.workdir}: cannot create {self.path} "
        f"({str(e).splitlines()[0]}); use a bucket this account can write"
      ) from e

  def _take_gcs(self) -> None:
    from google.api_core import exceptions

    holder = None
    for _ in range(3):  # each retry follows another process's change: rarely more than one
      if self._upload(0):
        return
      try:
        holder = _parse(self._blob.download_as_bytes())
      except exceptions.NotFound:
        continue  # released meanwhile
      if holder and holder.get("token") == self._record["token"]:
        self._generation = self._blob.generation  # our create, retried after a lost reply
        return
      reason = _stale_reason(holder, self._record, flock_free=False) if holder else None
      if not reason:  # live; or unreadable, which a whole upload never is: the user decides
        raise self._in_use(holder)
      if self._upload(self._blob.generation):
        _log_takeover(self.path, holder, reason)
        return
    raise self._in_use(holder)

  def _upload(self, generation: int) -> bool:
    """Writes the record if the object is still at `generation` (0: absent); False if not."""
    from google.api_core import exceptions

    try:
      self._blob.upload_from_string(
        json.dumps(self._record), content_type="application/json", if_generation_match=generation
      )
    except exceptions.PreconditionFailed:
      return False
    self._generation = self._blob.generation
    return True

  def _write_local(self) -> bool:
    """Rewrites the record in place (the flock belongs to this file); False if it was removed."""
    if not _same_file(self._fd, os.fspath(self.path)):
      return False
    data = json.dumps(self._record).encode()
    os.pwrite(self._fd, data, 0)
    os.ftruncate(self._fd, len(data))
    return True

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      self._record["heartbeat"] = _now()
      try:
        held = self._write_local() if self._fd is not None else self._upload(self._generation)
      except Exception as e:  # a network or disk hiccup: the next beat tries again
        logging.warning("could not refresh the heartbeat of %s: %s", self.path, e)
        continue
      if not held:
        self._lost = "it was removed or taken over by another process"
        logging.error(
          "--workdir=%s: %s was removed or taken over by another process while this run held it",
          self.workdir,
          self.path,
        )
        return

  def _in_use(self, holder: dict[str, Any] | None) -> InUse:
    if holder is None:
      return InUse(
        f"--workdir={self.workdir} is in use: {self.path} does not say which process "
        f"holds it; if no run uses this directory, delete {self.path} and start again"
      )
    command = holder.get("command", "?")
    if len(command) > _COMMAND_CHARS:
      command = command[:_COMMAND_CHARS] + "..."
    remote = (
      f" (a lock from another host is taken over once its heartbeat is {STALE_S:.0f} s old)"
      if holder["host"] != self._record["host"]
      else ""
    )
    return InUse(
      f"--workdir={self.workdir} is in use by pid {holder['pid']} on {holder['host']} since "
      f"{holder['started']} (last heartbeat {_age(holder):.0f} s ago; command: {command}); wait "
      f"for it to finish, or, if that process is gone, delete {self.path} and start "
      f"again{remote}"
    )


def _stale_reason(holder: dict[str, Any], me: dict[str, Any], flock_free: bool) -> str | None:
  """Why `holder` can no longer hold the lock, or None while it may."""
  if holder["host"] == me["host"]:
    if flock_free:
      return f"pid {holder['pid']} no longer holds it"
    if holder.get("pid_ns") == me["pid_ns"]:  # pids of this host mean the same process
      alive = _alive(holder["pid"], holder.get("pid_start"))
      return None if alive else f"pid {holder['pid']} is no longer running"
  age = _age(holder)
  return f"its last heartbeat was {age:.0f} s ago" if age >= STALE_S else None


def _log_takeover(path: epath.Path, holder: dict[str, Any], reason: str) -> None:
  logging.warning(
    "took over %s from pid %s on %s (since %s): %s",
    path,
    holder["pid"],
    holder["host"],
    holder["started"],
    reason,
  )


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _age(holder: dict[str, Any]) -> float:
  """Seconds since the holder's last heartbeat (by this host's clock; never negative)."""
  return max(0.0, time.time() - datetime.datetime.fromisoformat(holder["heartbeat"]).timestamp())


def _parse(text: bytes) -> dict[str, Any] | None:
  """The holder a lock file names, or None when it names none (empty, cut short, foreign)."""
  try:
    holder = json.loads(text)
    datetime.datetime.fromisoformat(holder["started"])
    datetime.datetime.fromisoformat(holder["heartbeat"])
  except (ValueError, TypeError, KeyError):
    return None
  if not (isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int)):
    return None
  return holder


def _read_holder(fd: int) -> dict[str, Any] | None:
  """The holder of a locked file, waiting briefly if it is being written right now."""
  for _ in range(20):
    holder = _parse(os.pread(fd, 1 << 16, 0))
    if holder:
      return holder
    time.sleep(0.05)
  return None


def _same_file(fd: int, path: str) -> bool:
  """Whether `path` still names the file open as `fd` (not removed, not replaced)."""
  try:
    named = os.stat(path)
  except FileNotFoundError:
    return False
  held = os.fstat(fd)
  return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _pid_namespace() -> str | None:
  """Which pid namespace this process is in (containers on one host differ); Linux only."""
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _process_start(pid: int) -> int | None:
  """When `pid` started, in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rpartition(")")[2].split()
  except OSError:
    return None
  return int(fields[19])  # field 22, starttime, counting from the state after "(comm)"


def _alive(pid: int, start: int | None) -> bool:
  """Whether process `pid` of this host is the one that started at `start`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: alive
  return start is None or _process_start(pid) in (None, start)
