"""`cpt-jax score`: a checkpoint's loss on a text file, the first check after an import or a stage.

The file's text is encoded by the run's tokenizer without special tokens, and its tokens
t_0 .. t_{n-1} are scored in windows t[i N : i N + N + 1] (stride N, the last one shorter), each
one plain causal sequence with no document masking: every token after the first is a target
exactly once. For an imported model this is what transformers computes on the same windows.
Each local device scores its own share of the windows, the model replicated on every one.
"""

from __future__ import annotations

import dataclasses

from etils import epath
import jax
import ml_collections
import numpy as np
from flax import nnx

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import corpora
from cpt_jax import data_parallel
from cpt_jax import model as model_lib
from cpt_jax import model_config as model_config_lib
from cpt_jax import paths
from cpt_jax import run_directory
from cpt_jax import train_step as train_step_lib
from cpt_jax.config_error import ConfigError


def windows(ids: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """Model batches of the windows of `ids`: (W, seq_len) inputs, targets and a loss mask."""
  count = max(-(-(len(ids) - 1) // seq_len), 0)
  padded = np.zeros(count * seq_len + 1, np.int32)
  padded[:len(ids)] = ids
  starts = np.arange(count)[:, None] * seq_len + np.arange(seq_len)
  real = (starts + 1) < len(ids)
  return {"inputs": padded[starts], "targets": padded[starts + 1],
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), starts.shape),
          "segment_ids": np.ones(starts.shape, np.int32), "loss_mask": real.astype(np.float32)}


def device_batches(batches: dict[str, np.ndarray], windows_per_device: int):
  """`windows`' arrays in steps of `windows_per_device` rows on each local device, the
  rows split over the devices; the last step is padded with rows whose loss mask is 0."""
  rows = jax.sharding.NamedSharding(data_parallel.replicated_sharding().mesh,
                                    jax.sharding.PartitionSpec(data_parallel.AXIS_NAME))
  step = windows_per_device * jax.local_device_count()
  count = len(batches["inputs"])
  padded = {key: np.pad(value, [(0, -count % step)] + [(0, 0)] * (value.ndim - 1))
            for key, value in batches.items()}
  for start in range(0, count, step):
    yield jax.device_put({key: value[start:start + step] for key, value in padded.items()},
                         rows)


@dataclasses.dataclass(frozen=True)
class Score:
  loss: float  # Mean next-token loss in nats.
  tokens: int  # Targets scored: the file's token count minus one.

  def __str__(self) -> str:
    return f"loss: {self.loss:.6f} over {self.tokens} tokens"


def score(reference: str, file: str, seq_len: int | None = None,
          windows_per_device: int = 8) -> Score:
  reference, file = paths.resolve_reference(reference), paths.resolve(file)
  run_dir, step = checkpoint_lib.parse_reference(reference)
  stored = run_directory.source_config(run_dir)
  if not epath.Path(file).is_file():
    what = "a directory" if epath.Path(file).is_dir() else "no such file"
    raise ConfigError(f"--file={file}: {what}; expected a text file")
  config = ml_collections.ConfigDict(stored)
  model = model_config_lib.from_config_dict(config.model)
  seq_len = config.data.seq_len if seq_len is None else seq_len
  if seq_len < 1:
    raise ConfigError(f"--seq_len={seq_len}: expected a positive number of tokens")
  model.check_sequence_length(seq_len, "--seq_len")
  tokenizer = run_directory.tokenizer_for_run(config, run_dir)
  ids = tokenizer.encode(corpora.read_text(epath.Path(file), f"--file={file}"))
  if len(ids) < 2:
    raise ConfigError(f"--file={file}: fewer than two tokens; nothing to score")

  source = checkpoint_lib.Checkpointer(run_dir, read_only=True)
  params = source.restore_params(source.existing_step(step, f"--from={reference}"), model)
  graphdef = nnx.split(nnx.eval_shape(lambda: model_lib.Transformer(model, rngs=nnx.Rngs(0))),
                       nnx.Param)[0]
  loss_sums = jax.jit(lambda p, batch: train_step_lib.loss_sums(graphdef, p, batch))
  total, count = 0.0, 0.0
  for batch in device_batches(windows(ids, seq_len), windows_per_device):
    loss_sum, tokens = jax.device_get(loss_sums(params, batch))
    total, count = total + float(loss_sum), count + float(tokens)
  return Score(total / count, int(count))
