"""The strong shift on a laptop: English man pages -> German man pages with 25% replay.

Command:  cpt-jax train --config=configs/demo_en_de.py --workdir=runs/demo_en_de
Needs:    Debian's manpages, manpages-dev, manpages-de and manpages-de-dev
          (apt-get install manpages manpages-dev manpages-de manpages-de-dev); without them
          the run stops with a message naming the missing packages. Pages are rendered with
          groff once (a minute or two) and cached under ~/.cache/cpt_jax.
Hardware: a 2-core CPU; about as long as configs/demo.py.
Data:     one document per page; pages are split by page id in both languages, so no German
          validation page's English original is trained on. Byte-level BPE (4k) trained on
          the English pages, as a real run keeps its first tokenizer.
Result:   the table at the end shows the German loss falling and the English loss rising
          during stage 2; compare with --config.stages[1].replay.en=0
          --config.stages[1].mixture.de=1.0 for the cost of no replay.
"""

from configs import demo
from cpt_jax import corpora


def get_config(variant: str = ""):
  config = demo.get_config(variant)
  del config.data.sources["prose"]
  del config.data.sources["code"]
  config.data.sources.en = corpora.source_config("embedded", corpus="manpages_en")
  config.data.sources.de = corpora.source_config("embedded", corpus="manpages_de")
  config.data.tokenizer.train_source = "en"
  first, second = config.stages
  first.name, first.mixture = "english", {"en": 1.0}
  second.name, second.mixture, second.replay = "german", {"de": 0.75}, {"en": 0.25}
  return config
