"""Continue a Hugging Face model on new data with replay: Python code, with 5% of English prose
replayed, from a model pretrained on English (Pythia-70M by default).

Commands (the model from the Hub, fetched into the Hugging Face cache; or a local directory):
  cpt-jax import-hf --from=hf://EleutherAI/pythia-70m --workdir=runs/pythia-70m
  cpt-jax train --config=configs/hf_continue.py --workdir=runs/pythia-70m-code
  cpt-jax export-hf --from=runs/pythia-70m-code --out=hf/pythia-70m-code
Another imported model: --config.init.from_checkpoint=RUN_DIR. Without replay (the forgetting
baseline): --config.stages[0].replay.prose=0 --config.stages[0].mixture.code=1.
Notebook: notebooks/continue_a_hugging_face_model.ipynb runs both and compares them.
Hardware: Pythia-70M trains at 2.77e8 FLOPs per token (`cpt-jax info`), 1.1e12 per step of
          16 x 256 tokens: a few minutes for the 300 steps on a GPU (Colab's T4 in float32 at
          30% of its 8 TFLOP/s: ~2.5 minutes), hours on a 2-core CPU (estimates, not measured).
Data:     the embedded corpora (Shakespeare, the CPython standard library), tokenized with the
          model's own tokenizer, which comes with the import.
Schedule: the seed paper's recipe for a new dataset: re-warm to 3e-4 over 5% of the stage, then
          cosine to 3e-5; Adam starts fresh (a Hugging Face checkpoint has no optimizer state).
Result:   the summary printed at the end measures the stage against the imported model: the
          rise of the prose loss (forgetting) and the fall of the code loss (adaptation). Not
          measured here: this machine cannot reach the Hub (the tests run the notebook on a
          tiny GPT-NeoX made locally).
Variant `:smoke`: 6 steps of 8 x 64 tokens (tests, quick checks).
"""

from cpt_jax import base_config
from cpt_jax import corpora
from cpt_jax import run_plan
from cpt_jax import schedule_config

IMPORTED_RUN = "runs/pythia-70m"  # What `cpt-jax import-hf` wrote (relative to the cwd).


def get_config(variant: str = ""):
  base_config.check_variant(variant, ("smoke",))
  config = base_config.base_config()
  # The architecture and the tokenizer come from the imported run (init.model="source").
  config.init.from_checkpoint = IMPORTED_RUN
  config.init.optimizer_state = "reset"
  config.data.tokenizer.kind = "hf_json"
  config.data.sources.prose = corpora.source_config("embedded", corpus="shakespeare")
  config.data.sources.code = corpora.source_config("embedded", corpus="python_stdlib")
  smoke = variant == "smoke"
  config.data.seq_len = 64 if smoke else 256
  config.data.global_batch_size = 8 if smoke else 16
  schedule = schedule_config.config_for("cosine_with_warmup", peak_value=3e-4, end_value=3e-5,
                                        warmup=0.05)
  config.stages = [run_plan.stage("code", 6 if smoke else 300, {"code": 0.95}, schedule,
                                  replay={"prose": 0.05})]
  config.eval.every = 3 if smoke else 50
  config.eval.max_batches = 2 if smoke else 8
  config.eval.dense_start = 0 if smoke else 10  # The loss's jump at the shift, every 2nd step.
  config.eval.dense_every = 2
  config.checkpoint.every = 3 if smoke else 100
  config.log.every = 1 if smoke else 10
  return config
