"""Per-domain evaluation: validation loss of every source, reported separately.

Forgetting is the rise of an old domain's loss, adaptation the fall of the new one's: one
number per source is the signal continual pre-training needs. The batches are fixed at
start-up, so every evaluation scores exactly the same tokens.
"""

from __future__ import annotations

import jax
import numpy as np


def evaluate(eval_step, params, batches_by_source: dict[str, list[dict]]) -> dict[str, float]:
  """{source: mean next-token loss over its validation batches}. All batches are dispatched
  before any result is fetched."""
  pending = {source: [eval_step(params, batch) for batch in batches]
             for source, batches in batches_by_source.items()}
  losses = {}
  for source, results in jax.device_get(pending).items():
    loss_sum = sum(float(np.sum(total)) for total, _ in results)
    count = sum(float(np.sum(tokens)) for _, tokens in results)
    losses[source] = loss_sum / max(count, 1.0)
  return losses
