"""Where a run's numbers go: `RUN_DIR/metrics.jsonl` and TensorBoard event files.

One JSON object per line; a resumed run appends, so a reader takes the last record of each
(step, kind). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os


class MetricsWriter:

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    from tensorboardX import SummaryWriter  # Deferred: only the writing process needs it.
    self._tensorboard = SummaryWriter(logdir=workdir, flush_secs=30)

  def write(self, record: dict) -> None:
    """`record` holds `step` and `stage`; every other numeric field is a scalar."""
    if not self._enabled:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for key, value in record.items():
      if key not in ("step", "stage") and isinstance(value, (int, float)) and math.isfinite(value):
        self._tensorboard.add_scalar(key, value, record["step"])

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()


def read_records(workdir: str) -> tuple[list[dict], list[dict]]:
  """(train records, eval records), one per step, the last written winning."""
  train, evaluation = {}, {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          is_eval = any(key.startswith("eval/") for key in record)
          (evaluation if is_eval else train)[record["step"]] = record
  return [train[s] for s in sorted(train)], [evaluation[s] for s in sorted(evaluation)]
