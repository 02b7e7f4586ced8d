"""Ibrahim et al. (2024)'s grid at 405M: Pile -> SlimPajama (weak shift; the default) and
Pile -> German Common Crawl (strong shift; `:german`), as one study.

Command:  cpt-jax study --config=configs/study_pythia_410m.py --workdir=gs://B/study \\
            --config.base.data.tokenizer.path=/data/neox/tokenizer.json ...
          (data paths as in configs/pythia_410m_pile_slimpajama.py and
          pythia_410m_pile_german.py, overridden under `config.base`); `--only=replay5,union`
          runs a part of it; `--report` writes the table of what has finished. On a TPU
          slice: `RUN=study CONFIG=configs/study_pythia_410m.py WORKDIR=gs://B/study
          tpu/tpu.sh relaunch -- --config.base.data...`; on GPU hosts add
          `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each.
Hardware: a TPU pod or GPU cluster. The shared Pile stage is trained once for the four
          cosine variants: the weak-shift study trains 11 runs, 3.06T tokens in all (Pile
          300B, four second stages of 300B, the infinite variant's 600B + 2 x 30B anneals,
          the union's 600B, new data only 300B), about 3.4 days on 64 H100s at 45% MFU
          (`cpt-jax info`: 2.73e9 FLOPs per token; an estimate, not measured); `:german`
          2.36T tokens, about 2.6 days.
Variants:
  replay5       5% replay, re-warmed and re-decayed cosine (the paper's weak-shift recipe)
  replay0       the second dataset alone after the first: the forgetting baseline
  replay25      25% replay (the paper's strong-shift recipe)
  no_rewarm     5% replay, the second stage at the first's final LR (3e-5): no re-warming
  infinite      5% replay, infinite schedule (warmup 1%, cosine cooldown over 60% of the first
                stage to 1.65e-4, constant after), each stage judged on a 10% anneal branch
  union         the baseline: retrain on the union of both datasets (one cosine, 600B / 500B)
  new_data_only the second dataset from scratch
Result to compare with (the paper, Table 2 and sections 6-7, 405M):
  weak shift:   5% replay ends at Pile 2.23, SlimPajama 2.51 against the union's 2.17 / 2.53,
                the average within about 1%, at half the union's compute; without replay the
                Pile loss rises clearly more; re-warming costs loss on Pile at first but not
                adapting costs more; infinite schedules match the re-warmed cosine.
  strong shift: replay has to be larger (25%) to keep the Pile loss near the union baseline's,
                while the German loss falls far more than SlimPajama's does in the weak shift.
"""

from configs import pythia_410m_pile_german as strong
from configs import pythia_410m_pile_slimpajama as weak
from cpt_jax import base_config
from cpt_jax import study

PEAK, END, CONSTANT = 3e-4, 3e-5, 1.65e-4


def get_config(variant: str = ""):
  base_config.check_variant(variant, ("german",))
  base = strong.get_config() if variant == "german" else weak.get_config()
  new_source = base.stages[1].name  # "slimpajama" or "german".
  variants = study.paper_variants(base, peak=PEAK, end=END, constant=CONSTANT, cooldown=0.6,
                                  anneal_steps=base.stages[0].steps // 10)
  variants.append(study.variant("new_data_only", {"stages": [study.new_data_only_stage(base)]},
                                description=f"{new_source} alone, from scratch"))
  return study.study_config(base, variants, baseline="union")
