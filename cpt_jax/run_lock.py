"""One training process per run directory: `RUN_DIR/run.lock` names its owner.

Two `cpt-jax train` commands on the same run directory would delete each other's temporary
checkpoints, or both train and interleave their records. The first takes the lock (host and
pid, created exclusively); a second refuses with one line naming the owner. A lock whose
process is gone on this host is stale and taken over; one held on another host cannot be
checked from here, so the message says which file to delete if that run is gone. The lock is
released when the run ends, however it ends short of SIGKILL.
"""

from __future__ import annotations

import json
import os
import socket

from etils import epath

from cpt_jax.config_error import ConfigError

LOCK_FILE = "run.lock"


class RunDirectoryInUse(ConfigError):
  pass


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


def _owner() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid()}


class RunLock:
  """A context manager holding `workdir`'s lock."""

  def __init__(self, workdir: str):
    self._path = epath.Path(workdir) / LOCK_FILE
    self._held = False

  def _create(self) -> bool:
    """Writes the lock if there is none; False if one exists."""
    content = json.dumps(_owner()).encode()
    if "://" in str(self._path):  # Object stores have no exclusive create: best effort.
      if self._path.exists():
        return False
      self._path.write_bytes(content)
      return True
    try:
      descriptor = os.open(str(self._path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(descriptor, "wb") as f:
      f.write(content)
    return True

  def acquire(self) -> None:
    if self._create():
      self._held = True
      return
    try:
      owner = json.loads(self._path.read_text())
      host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):  # Half-written or garbled: stale.
      host, pid = socket.gethostname(), -1
    if host == socket.gethostname() and (pid < 0 or not _alive(pid)):
      self._path.unlink(missing_ok=True)  # Stale: its process is gone.
      if self._create():
        self._held = True
        return
      raise RunDirectoryInUse(f"{self._path.parent} was just taken by another process "
                              f"({self._path}); use another --workdir or wait for it")
    if host == socket.gethostname():
      raise RunDirectoryInUse(f"{self._path.parent} is in use by process {pid} on this host "
                              f"({self._path}); wait for it to end or use another --workdir")
    raise RunDirectoryInUse(f"{self._path.parent} is in use by process {pid} on host {host} "
                            f"({self._path}); if that run is gone, delete the lock file")

  def release(self) -> None:
    if self._held:
      self._held = False
      self._path.unlink(missing_ok=True)

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
