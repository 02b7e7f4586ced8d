"""Where a run's numbers go: `RUN_DIR/metrics.jsonl`, TensorBoard event files and, if asked,
Weights & Biases.

One JSON object per line; a resumed run appends, so a reader takes the last record of each
(step, kind). Only process 0 writes. A W&B run's id is kept in RUN_DIR/wandb_run_id, so a
resumed run continues the same W&B run.

Object stores (a gs:// run directory) cannot append, so there the records are written in a
local staging directory and copied up whole at every `flush` (the trainer flushes with each
checkpoint) and at `close`. What a crash loses after the last checkpoint is recomputed, and
written again, when the run resumes from that checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import tempfile

from etils import epath

_RECORDS = "metrics.jsonl"
_WANDB_ID = "wandb_run_id"


def _is_remote(path: str) -> bool:
  return "://" in path


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported (only by the writing process) without torch:
  tensorboardX imports torch where it is installed, ~1.3 s per process, only to accept torch
  tensors, and these records are floats."""
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX allows.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """Opens its files at the first record, so a run refused at start-up writes nothing. A
  `fresh` run (no checkpoint to resume from) starts the records anew."""

  def __init__(self, workdir: str, enabled: bool = True, staging_dir: str | None = None,
               fresh: bool = False, wandb=None, run_config=None):
    self._enabled, self._fresh, self._opened = enabled, fresh, False
    self._wandb_config, self._run_config = wandb, run_config
    self._wandb = None
    self._workdir = epath.Path(workdir)
    if enabled and staging_dir is None and _is_remote(workdir):
      staging_dir = tempfile.mkdtemp(prefix="cpt_jax_records_")
    self._staging = staging_dir  # None: write in the run directory itself.
    self._local = staging_dir or workdir

  def _open(self) -> None:
    self._opened = True
    os.makedirs(self._local, exist_ok=True)
    local_records = os.path.join(self._local, _RECORDS)
    if self._staging and not self._fresh and (self._workdir / _RECORDS).exists():
      # Keep appending after a resume.
      epath.Path(local_records).write_bytes((self._workdir / _RECORDS).read_bytes())
    self._jsonl = open(local_records, "w" if self._fresh else "a", encoding="utf-8")
    self._tensorboard = _summary_writer_class()(logdir=self._local, flush_secs=30)
    if self._wandb_config is not None and self._wandb_config.project:
      self._wandb = self._start_wandb()

  def _start_wandb(self):
    import wandb  # Optional: pip install 'cpt_jax[wandb]' (checked when the config is).
    id_file = self._workdir / _WANDB_ID
    if id_file.exists() and not self._fresh:
      run_id = id_file.read_text().strip()
    else:
      run_id = secrets.token_hex(4)
      self._workdir.mkdir(parents=True, exist_ok=True)
      id_file.write_text(run_id)
    settings = self._wandb_config
    return wandb.init(project=settings.project, entity=settings.entity or None,
                      name=settings.name or self._workdir.name, tags=list(settings.tags),
                      id=run_id, resume="allow",
                      # Not in a staging directory: flush copies its files up one by one.
                      dir=tempfile.mkdtemp(prefix="cpt_jax_wandb_") if self._staging else
                      self._local,
                      config=self._run_config.to_dict() if self._run_config else None)

  def write(self, record: dict) -> None:
    """`record` holds `step` and `stage`; every other numeric field is a scalar."""
    if not self._enabled:
      return
    if not self._opened:
      self._open()
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    scalars = {key: value for key, value in record.items() if key not in ("step", "stage")
               and isinstance(value, (int, float)) and math.isfinite(value)}
    for key, value in scalars.items():
      self._tensorboard.add_scalar(key, value, record["step"])
    if self._wandb is not None:
      self._wandb.log(scalars, step=record["step"])

  def flush(self) -> None:
    """Makes everything written so far visible in the run directory."""
    if not (self._opened and self._staging):
      return
    self._tensorboard.flush()
    self._workdir.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(self._staging)):
      (self._workdir / name).write_bytes(epath.Path(self._staging, name).read_bytes())

  def close(self) -> None:
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None
    if self._opened:
      self._jsonl.close()
      self._tensorboard.close()
      self.flush()


def eval_losses(record: dict) -> dict[str, float]:
  """An evaluation record's validation loss per source."""
  return {key.split("/")[1]: value for key, value in record.items() if key.startswith("eval/")}


def losses_at(eval_records: list[dict], step: int) -> dict[str, float] | None:
  """The validation loss per source evaluated at `step`, or None if none was."""
  return next((eval_losses(record) for record in eval_records if record["step"] == step), None)


def read_records(workdir: str) -> tuple[list[dict], list[dict]]:
  """(train records, eval records), one per step, the last written winning."""
  train, evaluation = {}, {}
  path = epath.Path(workdir) / _RECORDS
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      if line.strip():
        record = json.loads(line)
        is_eval = any(key.startswith("eval/") for key in record)
        (evaluation if is_eval else train)[record["step"]] = record
  return [train[s] for s in sorted(train)], [evaluation[s] for s in sorted(evaluation)]
