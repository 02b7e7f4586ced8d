"""Joining JAX's distributed runtime before any other JAX call.

TPU pods configure themselves (`jax.distributed.initialize()` with no arguments); GPU clusters
and local multi-process tests pass the coordinator, process count and index explicitly.
"""

from __future__ import annotations

import os
import secrets
import time

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from cpt_jax.config_error import ConfigError

_PROBE_PREFIX = ".cpt_jax_shared_probe_"
_PROBE_GRACE_S = 5  # How long a process waits to see the probe: a filesystem's own delay.


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise ConfigError("multi-process runs need all of --coordinator_address, "
                        "--num_processes and --process_id")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # A multi-host TPU slice.
    jax.distributed.initialize()


def check_shared_directory(path: str, flag: str) -> None:
  """Refuses, on every process alike, a local directory that the processes of a multi-process
  job do not share: process 0 writes a token there, and each process reads it back. With a
  local path on each host, every process writes checkpoints of its own (two processes with
  different HOMEs and `~/run` hung at the first one). Object stores (`gs://`) are one
  namespace for every host and are not probed."""
  if jax.process_count() == 1 or "://" in path:
    return
  token = str(int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31)))))
  # A name no process has looked up before: network filesystems (NFS) may cache that a name
  # they looked up is absent, for up to a minute.
  probe = epath.Path(path) / f"{_PROBE_PREFIX}{token}"
  if jax.process_index() == 0:
    probe.write_text(token)
  multihost_utils.sync_global_devices("cpt_jax: shared directory probe written")
  deadline = time.monotonic() + _PROBE_GRACE_S
  while not (sees := _holds(probe, token)) and time.monotonic() < deadline:
    time.sleep(0.5)
  seen = multihost_utils.process_allgather(np.array(sees))  # Every process waits here.
  if jax.process_index() == 0:
    probe.unlink(missing_ok=True)
  blind = [index for index, ok in enumerate(seen.tolist()) if not ok]
  if blind:
    raise ConfigError(
        f"{flag}={path}: a file process 0 wrote there is not there for processes {blind} "
        f"(of {jax.process_count()}); a multi-process run needs a directory that every process "
        "shares (gs://BUCKET/..., or a shared filesystem)")


def _holds(probe: epath.Path, token: str) -> bool:
  try:
    return probe.read_text() == token
  except FileNotFoundError:
    return False
