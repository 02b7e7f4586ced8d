"""`cpt-jax prepare`: tokenize every source once into the token cache (ArrayRecord).

Every later run and stage that points `data.token_cache_dir` at the same directory reads the
pre-tokenized shards instead of tokenizing live. A "bpe" tokenizer is trained here (on the
first stage's source) and stored in the cache as `tokenizer.json`, so the runs that read the
cache also use its vocabulary.
"""

from __future__ import annotations

import logging
import os

import ml_collections

from cpt_jax import corpora
from cpt_jax import input_pipeline
from cpt_jax import paths
from cpt_jax import run_directory
from cpt_jax import token_cache
from cpt_jax.config_error import ConfigError

_log = logging.getLogger(__name__)


def _encode_in_batches(tokenizer, texts, batch_size: int = 64):
  """HF tokenizers encode a batch on all cores; one document at a time would use one."""
  for start in range(0, len(texts), batch_size):
    for ids in tokenizer.encode_batch(list(texts[start:start + batch_size])):
      yield ids


def prepare(config: ml_collections.ConfigDict) -> list[dict]:
  config = paths.resolve_config(config)
  cache_dir = config.data.token_cache_dir
  if not cache_dir:
    raise ConfigError("data.token_cache_dir is empty: set where `prepare` writes the shards, "
                      "e.g. --config.data.token_cache_dir=/data/tokens")
  os.makedirs(cache_dir, exist_ok=True)
  # The cache directory doubles as the tokenizer's home: trained once, reused by every run.
  tokenizer = run_directory.tokenizer_for_run(config, cache_dir)
  run_directory.save_tokenizer(cache_dir, tokenizer)
  summaries = []
  for name in input_pipeline.source_names(config.data):
    for split in corpora.SPLITS:
      definition = corpora.definition(config.data.sources[name])
      if token_cache.exists(cache_dir, name, split):
        reason = token_cache.mismatch(cache_dir, name, split, definition, tokenizer.fingerprint)
        if reason is None:
          _log.info("%s/%s: already prepared", name, split)
          continue
        _log.info("%s/%s: %s; preparing it again", name, split, reason)
      texts = corpora.documents(name, config.data.sources[name], split)
      token_arrays = _encode_in_batches(tokenizer, texts)
      summary = token_cache.write(cache_dir, name, split, token_arrays, tokenizer.fingerprint,
                                  definition)
      _log.info("%s/%s: %d documents, %s tokens", name, split, summary["documents"],
                f"{summary['tokens']:,}")
      summaries.append(summary)
  return summaries
