"""Checkpoint cost: save, restore, and how long an async save blocks the training loop.

  python -m benchmarks.checkpoint

For the tiny preset and a ~113M-parameter Pythia-shaped model on CPU: a synchronous save
(call + commit), an async save (time the call blocks the loop, then time to commit in the
background), and a restore, each of params + Adam state + metadata. Target: async blocking
below 10% of a synchronous save. The last line reads `async-blocking/sync ratio: <x>` (for
the larger model, where it matters).
"""

import dataclasses
import shutil
import tempfile
import time

import jax
import ml_collections

from cpt_jax import checkpoint as checkpoint_lib
from cpt_jax import data_parallel
from cpt_jax import model as model_lib
from cpt_jax import model_config
from cpt_jax import optimizer as optimizer_lib
from cpt_jax import train_step

MODELS = {
    "tiny": model_config.preset("tiny"),
    "pythia-113m": dataclasses.replace(model_config.preset("pythia-70m"), num_layers=10,
                                       model_dim=640, num_heads=10, num_kv_heads=10,
                                       mlp_dim=2560),
}


def measure(name, config):
  optimizer = optimizer_lib.make(optimizer_lib.default_config())
  _, state = train_step.init_state(config, optimizer, 0)
  sharding = data_parallel.replicated_sharding()
  state = jax.device_put(state, sharding)
  abstract = checkpoint_lib.abstract_like(state, sharding)
  results = {}
  for mode in ("sync", "async"):
    workdir = tempfile.mkdtemp()
    settings = ml_collections.ConfigDict({"keep": 3, "keep_every": 0,
                                          "async_save": mode == "async"})
    checkpointer = checkpoint_lib.Checkpointer(workdir, settings)
    checkpointer.save(0, state, {"step": 0}, None)  # Warm-up save (creates directories).
    checkpointer.wait()
    start = time.perf_counter()
    checkpointer.save(1, state, {"step": 1}, None)
    blocked = time.perf_counter() - start
    checkpointer.wait()
    results[mode] = (blocked, time.perf_counter() - start)
    if mode == "sync":
      start = time.perf_counter()
      _, arrays, _ = checkpointer.restore_latest(abstract)
      jax.block_until_ready(arrays)
      results["restore"] = time.perf_counter() - start
    checkpointer.close()
    shutil.rmtree(workdir)
  total, _ = model_lib.parameter_counts(config)
  print(f"{name} ({total:,} params): sync save {results['sync'][1]:.3f} s; async save blocks "
        f"{results['async'][0]:.3f} s, commits after {results['async'][1]:.3f} s; restore "
        f"{results['restore']:.3f} s")
  return results["async"][0] / results["sync"][1]


def main():
  ratio = None
  for name, config in MODELS.items():
    ratio = measure(name, config)
  print(f"async-blocking/sync ratio: {ratio:.3f}")


if __name__ == "__main__":
  main()
