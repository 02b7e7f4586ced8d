"""Tests for cpt_jax/prepare.py: streaming, sharded, resumable tokenization into the cache."""

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cpt_jax import base_config
from cpt_jax import corpora
from cpt_jax import input_pipeline
from cpt_jax import paths
from cpt_jax import prepare
from cpt_jax import run_plan
from cpt_jax import token_cache
from cpt_jax import tokenizer as tokenizer_lib

import fake_bucket
import run_helpers as helpers


def _write_corpus(directory, files=5, lines=40):
  """JSONL.zst files and, with the same documents, Parquet files and .txt files."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  for kind in ("jsonl", "parquet", "txt"):
    (directory / kind).mkdir(parents=True)
  for index in range(files):
    texts = [f"file {index} line {line}: " + "words and more words " * (line % 7 + 1)
             for line in range(lines)]
    rows = "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()
    (directory / "jsonl" / f"part{index}.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(rows))
    pq.write_table(pa.table({"text": texts}), directory / "parquet" / f"part{index}.parquet",
                   row_group_size=16)
    for line, text in enumerate(texts):
      (directory / "txt" / f"part{index}-{line:03d}.txt").write_text(text)


def _config(directory, cache_dir, kind="jsonl"):
  config = base_config.base_config()
  config.data.tokenizer.kind = "bytes"
  pattern = {"jsonl": "*.jsonl.zst", "parquet": "*.parquet", "txt": "*.txt"}[kind]
  config.data.sources = {"web": corpora.source_config(
      "text_files", glob=str(directory / kind / pattern), validation_fraction=0.2)}
  config.data.token_cache_dir = str(cache_dir)
  return config


def _cached_documents(config, split):
  documents = token_cache.read(config.data.token_cache_dir, "web", split,
                               tokenizer_lib.bytes_tokenizer().fingerprint,
                               corpora.definition(config.data.sources.web))
  return [ids.tolist() for ids in documents.read(range(len(documents)))]


def _same_files(left, right):
  comparison = filecmp.dircmp(left, right)
  assert not comparison.left_only and not comparison.right_only
  for sub in comparison.common_dirs:
    _same_files(os.path.join(left, sub), os.path.join(right, sub))
  _, mismatch, errors = filecmp.cmpfiles(left, right, comparison.common_files, shallow=False)
  assert not mismatch and not errors, mismatch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  directory = tmp_path_factory.mktemp("corpus")
  _write_corpus(directory)
  return directory


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
  """The JSONL corpus prepared in this process in one go: the reference bytes."""
  config = _config(corpus, tmp_path_factory.mktemp("prepared") / "cache")
  prepare.prepare(config, workers=0, progress=False)
  return config


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
def test_prepared_shards_hold_the_live_documents_of_every_format(corpus, prepared, kind,
                                                                 tmp_path):
  config = _config(corpus, tmp_path / "cache", kind)
  prepare.prepare(config, workers=0, progress=False)
  tokenizer = tokenizer_lib.bytes_tokenizer()
  for split in corpora.SPLITS:
    live = input_pipeline.tokenized_documents("web", config.data, split, tokenizer)
    live = [ids.tolist() for ids in live.read(range(len(live)))]
    assert live and _cached_documents(config, split) == live
  # JSONL.zst, Parquet and text files hold the same documents (ids, and so splits, differ).
  everything = lambda config: sorted(_cached_documents(config, "train") +
                                     _cached_documents(config, "validation"))
  assert everything(config) == everything(prepared)
  units = corpora.read_units("web", config.data.sources.web)
  assert len(units) == (1 if kind == "txt" else 5)  # 200 small files are read as one unit.


def test_a_tfds_source_is_prepared_in_units_of_rows(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  config = base_config.base_config()
  config.data.tokenizer.kind = "bytes"
  config.data.sources = {"web": corpora.source_config("tfds", tfds_name="lm1b",
                                                      text_field="text")}
  config.data.token_cache_dir = str(tmp_path / "cache")
  monkeypatch.setattr(corpora, "_TFDS_ROWS_PER_UNIT", 3)
  with tfds.testing.mock_data(num_examples=7):  # Each split: units of 3, 3 and 1 rows.
    units = corpora.read_units("web", config.data.sources.web)
    assert [(unit.split, unit.rows) for unit in units] == [
        (split, rows) for split in corpora.SPLITS for rows in ((0, 3), (3, 6), (6, 7))]
    prepare.prepare(config, workers=0, progress=False)
    tokenizer = tokenizer_lib.bytes_tokenizer()
    for split in corpora.SPLITS:
      live = input_pipeline.tokenized_documents("web", config.data, split, tokenizer)
      live = [ids.tolist() for ids in live.read(range(len(live)))]
      assert len(live) == 7 and _cached_documents(config, split) == live


def test_two_worker_processes_write_the_same_bytes(corpus, prepared, tmp_path):
  config = _config(corpus, tmp_path / "cache")
  prepare.prepare(config, workers=2, progress=False)
  _same_files(prepared.data.token_cache_dir, config.data.token_cache_dir)


def test_a_prepare_killed_mid_way_resumes_to_the_same_bytes(corpus, prepared, tmp_path,
                                                            monkeypatch):
  config = _config(corpus, tmp_path / "cache")
  real_documents = corpora.unit_documents

  def dies_in_unit_3(unit, source):
    for count, document in enumerate(real_documents(unit, source)):
      if unit.index == 3 and count == 10:
        raise KeyboardInterrupt  # As if killed: unit 3 is half written.
      yield document

  monkeypatch.setattr(corpora, "unit_documents", dies_in_unit_3)
  monkeypatch.setattr(prepare, "_BATCH_DOCUMENTS", 4)  # Records are written before the kill.
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(config, workers=0, progress=False)
  cache = os.path.join(config.data.token_cache_dir, "web")
  assert not os.path.exists(os.path.join(cache, "train.json"))  # Nothing readable yet.
  assert os.path.exists(os.path.join(cache, "train-00003-of-00005.array_record.tmp"))

  read = []
  monkeypatch.setattr(corpora, "unit_documents",
                      lambda unit, source: read.append(unit.index) or real_documents(unit, source))
  prepare.prepare(config, workers=0, progress=False)
  assert read == [3, 4]  # Finished shards are kept.
  for leftover in [name for name in os.listdir(cache) if name.endswith(".tmp")]:
    os.remove(os.path.join(cache, leftover))  # A killed writer's file; the shard was redone.
  _same_files(prepared.data.token_cache_dir, config.data.token_cache_dir)


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c", "kill-int"])
def test_an_interrupt_stops_the_workers_and_says_how_to_go_on(tmp_path, to_group):
  """SIGINT to the process group (Ctrl-C in a terminal) or to the command alone: it stops
  the workers (one is blocked reading a unit, a named pipe: without being stopped it would
  never end) and exits 130 with one line, no traceback."""
  (tmp_path / "code").mkdir()
  pipe = tmp_path / "code" / "blocks.txt"
  os.mkfifo(pipe)
  code = "--config.data.sources.code"
  process = helpers.start("prepare", f"{code}.kind=text_files", f"{code}.glob={pipe}",
                          "--config.data.tokenizer.kind=bytes", "--workers=2",
                          f"--config.data.token_cache_dir={tmp_path / 'cache'}",
                          new_session=True)
  deadline, writer = time.monotonic() + 120, None
  while writer is None:  # Opening the write end succeeds once a worker reads the pipe.
    try:
      writer = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
      assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
      time.sleep(0.1)
  try:
    (os.killpg if to_group else os.kill)(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)
  finally:
    os.close(writer)
    if process.poll() is None:  # Failed: leave no process behind.
      os.killpg(process.pid, signal.SIGKILL)
  assert process.returncode == 130, output
  assert "Traceback" not in output
  assert re.search(r"cpt-jax: interrupted \(Ctrl-C\): \d of 2 shards written; rerun the "
                   r"same command to write the rest", output)


def test_processes_split_the_units_and_the_last_one_joins(corpus, prepared, tmp_path):
  config = _config(corpus, tmp_path / "cache")
  cache = os.path.join(config.data.token_cache_dir, "web")
  assert prepare.prepare(config, workers=0, num_processes=2, process_id=1, progress=False) == []
  assert sorted(name for name in os.listdir(cache) if name.startswith("train-")) == [
      f"train-0000{index}-of-00005.{suffix}" for index in (1, 3)
      for suffix in ("array_record", "lengths.npy")]
  assert not os.path.exists(os.path.join(cache, "train.json"))
  joined = prepare.prepare(config, workers=0, num_processes=2, process_id=0, progress=False)
  assert [summary["split"] for summary in joined] == list(corpora.SPLITS)
  _same_files(prepared.data.token_cache_dir, config.data.token_cache_dir)


def test_shards_of_another_definition_are_discarded_not_mixed_in(corpus, prepared, tmp_path,
                                                                 monkeypatch):
  config = _config(corpus, tmp_path / "cache")
  config.data.sources.web.validation_fraction = 0.5
  prepare.prepare(config, workers=0, num_processes=2, process_id=0, progress=False)  # Partial.
  config.data.sources.web.validation_fraction = 0.2  # The reference's definition.
  prepare.prepare(config, workers=0, progress=False)
  _same_files(prepared.data.token_cache_dir, config.data.token_cache_dir)


@pytest.mark.parametrize("flags, message", [
    ({"workers": -1}, "--workers=-1"), ({"num_processes": 2, "process_id": 2}, "--process_id=2"),
    ({"num_processes": 0}, "--num_processes=0")])
def test_bad_process_flags_are_named(prepared, flags, message):
  with pytest.raises(ValueError, match=message):
    prepare.prepare(prepared, progress=False, **flags)


def test_a_bucket_cache_holds_the_local_bytes_and_trains_the_same(corpus, prepared, tmp_path):
  """prepare into gs://, then the stage pipeline reads it back through Cloud Storage's API
  (ArrayRecord's own reader, against fake_bucket's server), ahead in a thread."""
  config = _config(corpus, "gs://bucket/tokens")
  config.stages = [run_plan.stage("a", 4, {"web": 1.0})]
  [plan] = run_plan.plan(config)
  tokenizer = tokenizer_lib.bytes_tokenizer()
  with fake_bucket.serve(tmp_path / "bucket") as bucket:
    prepare.prepare(config, workers=0, progress=False)
    _same_files(prepared.data.token_cache_dir, os.path.join(bucket.root, "tokens"))
    dataset = input_pipeline.stage_dataset(config.data, plan, tokenizer)
    iterator = iter(dataset)
    from_bucket = [next(iterator)["tokens"] for _ in range(3)]
    iterator.close()  # Its read-ahead thread, before the bucket goes.
    stream = input_pipeline._stream("web", config.data, "train", tokenizer)
    assert stream._documents_per_read == input_pipeline._BUCKET_DOCUMENTS_PER_READ  # vs 32.
  assert type(dataset).__name__ == "ThreadPrefetchIterDataset"
  assert any(name.startswith("tokens/web/train-") for name in bucket.objects_read)
  local = iter(input_pipeline.stage_dataset(prepared.data, plan, tokenizer))
  for got in from_bucket:
    np.testing.assert_array_equal(got, next(local)["tokens"])


@pytest.mark.parametrize("cache_dir, version, message", [
    ("s3://bucket/tokens", (0, 8, 6), r"token_cache_dir='s3://bucket/tokens': expected a local "
                                      r"directory or a gs:// path"),
    ("gs://bucket/tokens", (0, 8, 1), r"token_cache_dir='gs://bucket/tokens': .* needs "
                                      r"array-record>=0\.8\.3")])
def test_a_cache_arrayrecord_cannot_read_is_refused_with_the_reason(
    prepared, monkeypatch, cache_dir, version, message):
  monkeypatch.setattr(token_cache, "_array_record_version", lambda: version)
  monkeypatch.setattr(paths, "gcs_client_installed", lambda: True)  # As with '.[gcs]'.
  config = prepared.copy_and_resolve_references()
  config.data.token_cache_dir = cache_dir
  with pytest.raises(ValueError, match=message):
    prepare.prepare(config, progress=False)


# Imports first, then the address space is capped at what they take plus HEADROOM bytes.
_CAPPED_PREPARE = textwrap.dedent("""
    import resource, sys
    import zstandard
    from array_record.python import array_record_module
    import tqdm.auto
    from cpt_jax import base_config, corpora, paths, prepare
    config = base_config.base_config()
    config.data.tokenizer.kind = "bytes"
    config.data.sources = {"web": corpora.source_config("text_files", glob=sys.argv[1])}
    config.data.token_cache_dir = sys.argv[2]
    status = open("/proc/self/status").read()
    cap = int(status.split("VmSize:")[1].split()[0]) * 1024 + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    prepare.prepare(config, workers=0, progress=False)
""")
HEADROOM = 96 << 20


def _generated_corpus(directory, megabytes):
  """`megabytes` of text as zstd JSONL (a few hundred KB on disk), 64 KB documents."""
  import zstandard
  directory.mkdir()
  document = json.dumps({"text": ("lorem ipsum dolor sit amet " * 2500)[:65536]}) + "\n"
  for index in range(max(1, megabytes // 8)):  # 8 MB per file.
    (directory / f"part{index}.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(document.encode() * 128))
  return str(directory / "*.jsonl.zst")


def _capped_prepare(glob, cache_dir, script=_CAPPED_PREPARE):
  environment = dict(helpers.environment(), MALLOC_ARENA_MAX="1", OPENBLAS_NUM_THREADS="1")
  return subprocess.run([sys.executable, "-c", script, glob, str(cache_dir), str(HEADROOM)],
                        capture_output=True, text=True, env=environment, timeout=300)


def test_a_corpus_larger_than_the_memory_cap_goes_through(tmp_path):
  """With the address space capped at the imports plus 96 MB, 128 MB of text (and its
  512 MB of int32 tokens) goes through; reading the corpus into memory does not."""
  glob = _generated_corpus(tmp_path / "corpus", 128)
  result = _capped_prepare(glob, tmp_path / "cache")
  assert result.returncode == 0, result.stderr[-2000:]
  cache = tmp_path / "cache" / "web"
  metas = [json.loads((cache / f"{split}.json").read_text()) for split in corpora.SPLITS]
  assert sum(meta["tokens"] for meta in metas) == 128 * 2**20
  assert np.load(cache / "train.lengths.npy").sum() == metas[0]["tokens"]
  # The cap binds: holding the corpus's texts, as prepare once did, fails under it.
  in_memory = _capped_prepare(glob, tmp_path / "unused", _CAPPED_PREPARE.replace(
      "prepare.prepare(config, workers=0, progress=False)",
      "corpora.documents('web', config.data.sources.web, 'train')"))
  # Python's allocator or zstd's, whichever asks first past the cap.
  assert in_memory.returncode != 0, in_memory.stderr[-2000:]
  assert ("MemoryError" in in_memory.stderr
          or "Allocation error : not enough memory" in in_memory.stderr), in_memory.stderr[-2000:]
