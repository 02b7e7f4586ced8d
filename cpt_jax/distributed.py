"""Joining JAX's distributed runtime before any other JAX call.

TPU pods configure themselves (`jax.distributed.initialize()` with no arguments); GPU clusters
and local multi-process tests pass the coordinator, process count and index explicitly.
"""

from __future__ import annotations

import os

import jax

from cpt_jax.config_error import ConfigError


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
