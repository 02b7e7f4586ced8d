"""Joining JAX's distributed runtime before any other JAX call.

TPU pods configure themselves (`jax.distributed.initialize()` with no arguments); GPU clusters
and local multi-process tests pass the coordinator, process count and index explicitly.
"""

from __future__ import annotations

import os
import secrets

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from cpt_jax.config_error import ConfigError

_PROBE_FILE = ".cpt_jax_shared_probe"


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
  """Refuses, on every process alike, a directory that the processes of a multi-process job
  do not share: process 0 writes a token there, and each process reads it back. A local
  path on each host of a slice would give every process checkpoints of its own, and a resume
  that restores on some processes and starts afresh on others."""
  if jax.process_count() == 1:
    return
  token = str(int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31)))))
  probe = epath.Path(path) / _PROBE_FILE
  if jax.process_index() == 0:
    probe.write_text(token)
  multihost_utils.sync_global_devices("cpt_jax: shared directory probe written")
  sees = probe.exists() and probe.read_text() == token
  seen = multihost_utils.process_allgather(np.array(sees))  # Every process waits here.
  if jax.process_index() == 0:
    probe.unlink(missing_ok=True)
  blind = [index for index, ok in enumerate(seen.tolist()) if not ok]
  if blind:
    raise ConfigError(
        f"{flag}={path}: a file process 0 wrote there is not there for processes {blind} "
        f"(of {jax.process_count()}); a multi-process run needs a directory that every process "
        "shares (gs://BUCKET/..., or a shared filesystem)")
