"""Ibrahim et al. (2024), weak shift: Pythia-410M, Pile (300B tokens) -> SlimPajama (300B)
with 5% Pile replay, re-warmed and re-decayed cosine, optimizer state reset between datasets.

Command:  cpt-jax train --config=configs/pythia_410m_pile_slimpajama.py --workdir=gs://B/run \\
            --config.data.tokenizer.path=/data/neox/tokenizer.json \\
            --config.data.sources.pile.glob='/data/pile/train/*.jsonl' ...
          At 300B tokens a source, tokenize once into a bucket, a share of the files on each
          host (`--num_processes=N --process_id=I`), and train from it (every host reads its
          own rows): add `--config.data.token_cache_dir=gs://B/tokens` to `cpt-jax prepare`
          and to `cpt-jax train` (`pip install -e '.[gcs]'`).
          Variant `:infinite` replaces the cosines by one infinite schedule (constant 1.65e-4,
          cooldown over 60% of the first stage, never annealed: branch with `cpt-jax anneal`).
          Variant `:replay0` drops the replay (the paper's forgetting baseline).
Hardware: a TPU pod or GPU cluster; `cpt-jax info` gives 2.73e9 training FLOPs per token, so
          600B tokens take about 16 hours on 64 H100s at 45% MFU (an estimate, not measured).
          The global batch of 1104 needs a device count that divides it (e.g. 48, 16 x 3).
          `cpt-jax info --memory` on one host says whether a device's rows fit it; where they
          do not, `optimizer.microbatches` (a divisor of a device's rows) splits them.
Data:     JSONL shards with a "text" field (Pile, SlimPajama); the GPT-NeoX tokenizer.json
          (vocabulary padded to 50304), supplied by path: nothing is downloaded.
Result to compare with (paper, Table 2, 405M, 5% replay): final validation loss Pile 2.23,
          SlimPajama 2.51; the baseline trained on the union of both: 2.17 / 2.53.
"""

from cpt_jax import base_config
from cpt_jax import corpora
from cpt_jax import model_config
from cpt_jax import run_plan
from cpt_jax import schedule_config

TOKENS_PER_STAGE = 300_000_000_000
BATCH, SEQ_LEN = 1104, 2048


def get_config(variant: str = ""):
  base_config.check_variant(variant, ("infinite", "replay0"))
  config = base_config.base_config()
  config.model = model_config.preset_config_dict("pythia-410m", compute_dtype="bfloat16")
  # GPT-NeoX (the code the paper ran) decays every weight but norms and biases.
  config.optimizer.decay_embeddings = True
  config.data.seq_len = SEQ_LEN
  config.data.global_batch_size = BATCH
  config.data.tokenizer.kind = "hf_json"
  config.data.tokenizer.path = "/data/neox/tokenizer.json"
  config.data.sources.pile = corpora.source_config(
      "text_files", glob="/data/pile/train/*.jsonl", validation_glob="/data/pile/val/*.jsonl")
  config.data.sources.slimpajama = corpora.source_config(
      "text_files", glob="/data/slimpajama/train/*.jsonl",
      validation_glob="/data/slimpajama/validation/*.jsonl")
  steps = TOKENS_PER_STAGE // (BATCH * SEQ_LEN)  # 132,684 steps per stage.
  cosine = lambda: schedule_config.config_for("cosine_with_warmup", peak_value=3e-4,
                                              end_value=3e-5, warmup=0.01)
  replay = 0.0 if variant == "replay0" else 0.05
  per_stage = variant != "infinite"
  config.stages = [
      run_plan.stage("pile", steps, {"pile": 1.0}, cosine() if per_stage else None),
      run_plan.stage("slimpajama", steps, {"slimpajama": 1.0 - replay},
                     cosine() if per_stage else None, replay={"pile": replay}),
  ]
  if not per_stage:
    config.schedule = schedule_config.config_for(
        "infinite", peak_value=3e-4, constant_value=1.65e-4, warmup=int(0.01 * steps),
        cooldown=int(0.6 * steps), anneal=0)
  config.eval.every = 2000
  config.eval.max_batches = 50
  config.checkpoint.every = 1000
  config.checkpoint.keep_every = 10_000
  config.log.every = 50
  return config
