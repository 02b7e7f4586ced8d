"""The seed paper's comparisons on a pretrained Hugging Face model: continue it on Python code
with 0%, 5% and 25% replay of English prose, re-warmed or not, as one study.

Commands: cpt-jax import-hf --from=hf://EleutherAI/pythia-70m --workdir=runs/pythia-70m
          cpt-jax study --config=configs/study_hf_continue.py --workdir=runs/study-pythia-70m
          (another imported model: --config.base.init.from_checkpoint=RUN_DIR)
Hardware: as configs/hf_continue.py, once per variant: four runs of 300 steps of 16 x 256
          tokens (Pythia-70M: a few minutes each on a GPU, hours on a 2-core CPU).
          `:smoke` runs 6 steps per variant (tests, on a tiny GPT-NeoX made locally).
Data:     as configs/hf_continue.py: the CPython standard library as the new data, Shakespeare
          as the earlier data replayed, both tokenized with the model's own tokenizer.
Variants: (each one run from the imported model; Adam starts fresh, as the model has no
          optimizer state)
  replay5    5% prose replay, LR re-warmed to 3e-4 and re-decayed (cosine) to 3e-5
  replay0    code alone: the forgetting baseline, which every row is compared with
  replay25   25% replay, the paper's choice for a strong shift
  no_rewarm  5% replay at a constant 3e-5 (the decayed LR a released model ends at): no
             re-warming
Result:   forgetting and adaptation are measured from the imported model's own evaluation
          (the first run's first evaluation) to each variant's end. Pythia-70M is not
          measured here: this machine cannot reach the Hub. Measured instead on a stand-in
          pretrained on prose, the demo's tiny model after its prose stage, exported and
          imported (2026-12-04, 2-core CPU, 10m15s for the four runs; commands:
            cpt-jax train --config=configs/demo.py --workdir=runs/demo
                --config.checkpoint.keep_every=250
            cpt-jax export-hf --from=runs/demo:250 --out=hf/prose-model
            cpt-jax import-hf --from=hf/prose-model --workdir=runs/imported
            cpt-jax study --config=configs/study_hf_continue.py --workdir=runs/study-hf
                --config.base.init.from_checkpoint=runs/imported),
          as the paper (Ibrahim et al. 2024) finds: prose loss rise +2.24 without replay,
          +0.61 with 5%, +0.13 with 25%, at code adaptation 3.84 / 3.82 / 3.72; without
          re-warming the code loss falls 2.72 rather than 3.82 and prose is forgotten as much
          (+0.64). Average loss against no replay: 5% -14.3%, 25% -17.7%, no re-warming -4.3%.
"""

from configs import hf_continue
from cpt_jax import base_config
from cpt_jax import schedule_config
from cpt_jax import study

END = 3e-5  # The re-warmed cosine's end, and the no-re-warming variant's constant LR.


def get_config(variant: str = ""):
  base_config.check_variant(variant, ("smoke",))
  base = hf_continue.get_config(variant)

  def replay(share):
    return {"stages[0].mixture.code": 1.0 - share, "stages[0].replay.prose": share}

  variants = [
      study.variant("replay5", replay(0.05),
                    description="5% replay, re-warmed and re-decayed cosine"),
      study.variant("replay0", replay(0.0), description="no replay: the forgetting baseline"),
      study.variant("replay25", replay(0.25), description="25% replay"),
      study.variant("no_rewarm", {
          **replay(0.05), "stages[0].schedule": schedule_config.config_for("constant",
                                                                          value=END)},
          description=f"5% replay at a constant {END:g}: no re-warming"),
  ]
  return study.study_config(base, variants, baseline="replay0")
