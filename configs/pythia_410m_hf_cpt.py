"""Continue the released Pythia-410M (a Hugging Face checkpoint) on a new corpus with 5% replay
of a Pile sample: the seed paper's recipe applied to a model someone else pretrained.

Commands (the model from the Hub, fetched into the Hugging Face cache; or a local directory
holding config.json, model.safetensors, tokenizer.json: --from=/data/hf/pythia-410m):
  cpt-jax import-hf --from=hf://EleutherAI/pythia-410m --workdir=/data/runs/pythia-410m
  cpt-jax train --config=configs/pythia_410m_hf_cpt.py --workdir=/data/runs/pythia-410m-cpt \\
    --config.data.sources.new.glob='/data/new/train/*.jsonl' \\
    --config.data.sources.pile.glob='/data/pile_sample/*.jsonl'
  cpt-jax export-hf --from=/data/runs/pythia-410m-cpt --out=/data/hf/pythia-410m-cpt
  lm_eval --model hf --model_args pretrained=/data/hf/pythia-410m-cpt --tasks lambada_openai
Variant `:replay0` drops the replay (the forgetting baseline).
Hardware: one GPU node or TPU slice. `cpt-jax info` gives 2.73e9 training FLOPs per token, so
          the 10B tokens below take about 17 hours on one H100 (989 bf16 TFLOP/s) at 45% MFU,
          or about 16 minutes on 64 (estimates, not measured). The global batch of 1104
          needs a device count that divides it (e.g. 48). `cpt-jax info --memory` on one host
          says whether a device's rows fit it; where they do not, `optimizer.microbatches` (a
          divisor of a device's rows) splits them.
Data:     `new`: JSONL shards with a "text" field (the new domain); `pile`: a sample of the Pile
          (the model's pretraining data) for replay. Pythia's tokenizer comes with the import.
Schedule: re-warm to 3e-4 over 1% of the stage, cosine to 3e-5 (Ibrahim et al.); the import has
          no optimizer state, so Adam starts fresh (init.optimizer_state="reset").
Result to compare with: for its own weak shift (Pile -> SlimPajama, 405M, 300B tokens) the
          paper reports final losses Pile 2.23 / SlimPajama 2.51 with 5% replay against 2.17 /
          2.53 for retraining on the union (Table 2): replay keeps most of the old domain.
"""

from cpt_jax import base_config
from cpt_jax import corpora
from cpt_jax import model_config
from cpt_jax import run_plan
from cpt_jax import schedule_config

TOKENS = 10_000_000_000
BATCH, SEQ_LEN = 1104, 2048
IMPORTED_RUN = "/data/runs/pythia-410m"  # What `cpt-jax import-hf` wrote.


def get_config(variant: str = ""):
  base_config.check_variant(variant, ("replay0",))
  config = base_config.base_config()
  # The architecture comes from the imported run (init.model="source"); this sets the dtype.
  config.model = model_config.preset_config_dict("pythia-410m", compute_dtype="bfloat16")
  config.init.from_checkpoint = IMPORTED_RUN
  config.init.model = "source"
  config.init.optimizer_state = "reset"
  # GPT-NeoX (the code the paper ran) decays every weight but norms and biases.
  config.optimizer.decay_embeddings = True
  config.data.seq_len = SEQ_LEN
  config.data.global_batch_size = BATCH
  config.data.tokenizer.kind = "hf_json"  # Inherited from the imported run.
  config.data.sources.new = corpora.source_config("text_files", glob="/data/new/train/*.jsonl",
                                                  validation_fraction=0.001)
  config.data.sources.pile = corpora.source_config("text_files", glob="/data/pile_sample/*.jsonl",
                                                   validation_fraction=0.01)
  replay = 0.0 if variant == "replay0" else 0.05
  config.stages = [run_plan.stage(
      "new", TOKENS // (BATCH * SEQ_LEN), {"new": 1.0 - replay},
      schedule_config.config_for("cosine_with_warmup", peak_value=3e-4, end_value=3e-5,
                                 warmup=0.01),
      replay={"pile": replay})]
  config.eval.every = 500
  config.eval.max_batches = 50
  config.checkpoint.every = 500
  config.log.every = 50
  return config
