"""The experiment config's skeleton: every field cpt_jax reads, declared with its default.

Experiment files under `configs/` start from `base_config()` and fill in the model, data
sources and stages. A field that is not declared here does not exist: overriding it fails
with close matches (`experiment_config.unknown_override`).
"""

from __future__ import annotations

import ml_collections

from cpt_jax import checkpoint
from cpt_jax import input_pipeline
from cpt_jax import model_config
from cpt_jax import optimizer
from cpt_jax.config_error import ConfigError

PARALLEL_MODES = ("pmap", "fsdp")


def check_variant(variant: str, known: tuple[str, ...]) -> None:
  """A config's `get_config(variant)` calls this first: a misspelt variant is an error, not a
  silent default."""
  if variant not in ("", *known):
    raise ConfigError(f"unknown variant {variant!r}; this config's variants: "
                      f"{', '.join(known) or 'none'} (or none, the default)")


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Parameter initialization seed.
  config.model = model_config.preset_config_dict("tiny")  # Model shape; see model_config.py.
  config.optimizer = optimizer.default_config()  # AdamW without its learning rate.
  config.data = input_pipeline.default_config()  # Sources, tokenizer, sequence length, batch.
  config.stages = []  # run_plan.stage(...) entries, trained in order.
  config.schedule = None  # A run-wide schedule_config block; None = each stage's own schedule.
  config.parallel = "pmap"  # "pmap" (data parallel) or "fsdp" (params sharded over devices).
  config.fsdp_devices = 0  # fsdp: devices each parameter is split over (0 = all); rest = data.

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 100  # Evaluate every this many steps (and at every stage's end).
  config.eval.max_batches = 8  # Validation batches per source; the same batches every time.
  config.eval.sources = ()  # Sources evaluated; () = every source in config.data.sources.
  # True: a target counts only within its document (as training). False: each row is one plain
  # causal window (GPT-NeoX's and transformers' evaluation), to compare with their losses.
  config.eval.document_masking = True
  # The first steps of every stage evaluated densely, to show the loss spike right after a
  # distribution shift (the "stability gap"): a fraction of the stage (< 1) or steps (>= 1);
  # 0 = off. There, every `dense_every` steps.
  config.eval.dense_start = 0.0
  config.eval.dense_every = 1

  config.log = ml_collections.ConfigDict()
  config.log.every = 10  # Write a train record every this many steps.
  config.log.progress_bar = True  # Show a tqdm progress bar (process 0 only).
  # Weights & Biases, beside metrics.jsonl and TensorBoard (pip install 'cpt_jax[wandb]'); a
  # resumed run continues the same W&B run (its id is kept in RUN_DIR/wandb_run_id).
  config.log.wandb = ml_collections.ConfigDict()
  config.log.wandb.project = ""  # The W&B project; "" = no W&B.
  config.log.wandb.entity = ""  # Team or user; "" = W&B's default.
  config.log.wandb.name = ""  # The run's display name; "" = the run directory's name.
  config.log.wandb.tags = ()  # Tags of the W&B run.

  config.profile = ml_collections.ConfigDict()
  config.profile.steps = ""  # "A:B": a jax.profiler trace of steps A to B in RUN_DIR/profile.

  config.checkpoint = checkpoint.default_config()  # Interval, retention, async saving.

  # Start this run from another run's checkpoint (e.g. a pretrained model).
  config.init = ml_collections.ConfigDict()
  config.init.from_checkpoint = ""  # "RUN_DIR" (its latest step) or "RUN_DIR:STEP"; "" = fresh.
  # "source": the architecture comes from that run's config.json (e.g. an imported Hugging Face
  # model; compute_dtype and remat stay this config's); "config": this config's model block,
  # which must fit the checkpoint.
  config.init.model = "source"
  config.init.optimizer_state = "reset"  # "reset" (fresh Adam moments) or "keep" them.
  config.init.step = "reset"  # "reset" the step counter to 0 or "continue" from the checkpoint's.
  # "fresh": the first stage's data starts anew; "continue": it resumes the checkpoint's data
  # stream exactly (its first stage must be the source stage's data, refused otherwise; on any
  # process count; `cpt-jax anneal` uses it).
  config.init.data = "fresh"
  return config
