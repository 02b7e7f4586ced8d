"""Ibrahim et al. (2024), strong shift: Pythia-410M, Pile (300B tokens) -> German Common Crawl
(200B tokens) with 25% Pile replay (their recommendation for a strong shift), re-warmed and
re-decayed cosine, optimizer state reset between datasets.

Command:  cpt-jax train --config=configs/pythia_410m_pile_german.py --workdir=gs://B/run \\
            --config.data.tokenizer.path=/data/neox/tokenizer.json ...
          Variants `:infinite` and `:replay0` as in pythia_410m_pile_slimpajama.py.
Hardware: as pythia_410m_pile_slimpajama.py; 500B tokens take about 13 hours on 64 H100s at
          45% MFU (an estimate from `cpt-jax info`, not measured).
Data:     JSONL shards with a "text" field; any German web text works, or a TFDS source
          (`corpora.source_config("tfds", tfds_name=..., data_dir="gs://...")`).
Result to compare with: Table 2 of the paper, rows for the German shift at 405M (25% replay
          against the union baseline): the German loss falls far more than SlimPajama's does,
          and without replay (`:replay0`) the Pile loss rises markedly.
"""

from configs import pythia_410m_pile_slimpajama as weak
from cpt_jax import corpora

GERMAN_TOKENS = 200_000_000_000


def get_config(variant: str = ""):
  config = weak.get_config(variant)
  del config.data.sources["slimpajama"]
  config.data.sources.german = corpora.source_config(
      "text_files", glob="/data/german_cc/train/*.jsonl",
      validation_glob="/data/german_cc/validation/*.jsonl")
  replay = 0.0 if variant == "replay0" else 0.25
  second = config.stages[1]
  second.name = "german"
  second.steps = GERMAN_TOKENS // (weak.BATCH * weak.SEQ_LEN)
  second.mixture = {"german": 1.0 - replay}
  second.replay = {"pile": replay}
  return config
