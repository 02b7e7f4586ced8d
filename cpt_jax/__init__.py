"""cpt_jax: continual pre-training of language models in JAX.

From Python (a notebook, a script), the commands are functions; each returns what the command
prints (a run's summary, a study's table) and shows a progress bar that renders in notebooks:

  import cpt_jax
  from configs import demo
  summary = cpt_jax.train(demo.get_config("smoke"), "runs/demo")
  table = cpt_jax.study(study_config, "runs/study")

They are imported on first use, so `import cpt_jax` stays cheap.
"""

import importlib

_FUNCTIONS = {
    "train": ("cpt_jax.trainer", "train"),  # (config, workdir) -> summary dict
    "study": ("cpt_jax.study", "run"),  # (study config, study_dir, only=(), report_only=False)
    "anneal": ("cpt_jax.anneal", "anneal"),  # (RUN_DIR[:STEP], workdir, steps, shape, end_value)
    "prepare": ("cpt_jax.prepare", "prepare"),  # (config): tokenize sources into the cache
    "import_hf": ("cpt_jax.hf_checkpoint", "import_hf"),  # (hf_dir, workdir)
    "export_hf": ("cpt_jax.hf_checkpoint", "export_hf"),  # (RUN_DIR[:STEP], out_dir, dtype)
    "score": ("cpt_jax.score", "score"),  # (RUN_DIR[:STEP], text_file, seq_len) -> str
}
__all__ = sorted(_FUNCTIONS)


def __getattr__(name: str):
  if name not in _FUNCTIONS:
    raise AttributeError(f"module 'cpt_jax' has no attribute {name!r}")
  module, function = _FUNCTIONS[name]
  return getattr(importlib.import_module(module), function)
