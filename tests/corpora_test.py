"""Tests for cpt_jax/corpora.py."""

import gzip
import json
import os
import re
import sys
import types

import numpy as np
import pytest

from cpt_jax import corpora
from cpt_jax.config_error import ConfigError

import fake_bucket
import run_helpers as helpers


def test_embedded_corpora_split_deterministically_and_disjointly():
  for corpus in ("shakespeare", "python_stdlib"):
    config = corpora.source_config("embedded", corpus=corpus)
    train_ids, train = corpora._documents(corpus, config, "train")
    validation_ids, validation = corpora._documents(corpus, config, "validation")
    assert len(train) > 10 * len(validation) > 0
    assert not set(train_ids) & set(validation_ids)
    assert all(text.strip() for text in train + validation)
    assert corpora.documents(corpus, config, "validation") == validation


def test_split_record_lists_the_held_out_documents():
  record = corpora.split_record("prose", corpora.source_config("embedded", corpus="shakespeare"))
  assert record["validation_ids"] and all("/" in doc_id for doc_id in record["validation_ids"])


def test_hash_split_is_independent_of_order():
  documents = [(f"doc{i}", f"text {i}") for i in range(200)]
  shuffled = [documents[i] for i in np.random.default_rng(0).permutation(200)]
  assert sorted(corpora._split(documents, "validation", 0.3)) == sorted(
      corpora._split(shuffled, "validation", 0.3))
  held_out = sum(corpora.is_validation(f"doc{i}", 0.1) for i in range(5000))
  assert 400 < held_out < 600


def test_hash_split_is_pinned():
  # Which side an id falls on must never change: runs record their splits, resume with them,
  # and replay from them. If this fails, the hash or its threshold changed.
  assert [corpora.is_validation(doc_id, 0.5) for doc_id in
          ("hamlet/3", "macbeth/1", "lear/7", "a", "b")] == [False, True, True, False, True]


def test_text_files_txt_and_jsonl(tmp_path):
  for index in range(40):
    (tmp_path / f"doc{index}.txt").write_text(f"text number {index}")
  with open(tmp_path / "records.jsonl", "w") as f:
    for index in range(40):
      f.write(json.dumps({"body": f"record {index}"}) + "\n")
  txt = corpora.source_config("text_files", glob=str(tmp_path / "*.txt"), validation_fraction=0.2)
  train, validation = (corpora.documents("t", txt, split) for split in corpora.SPLITS)
  assert len(train) + len(validation) == 40 and validation
  jsonl = corpora.source_config("text_files", glob=str(tmp_path / "*.jsonl"), text_field="body",
                                validation_glob=str(tmp_path / "doc1*.txt"))
  assert "record 7" in corpora.documents("j", jsonl, "train")
  assert corpora.documents("j", jsonl, "validation")[0].startswith("text number 1")


def test_missing_files_are_named(tmp_path):
  config = corpora.source_config("text_files", glob=str(tmp_path / "nothing*.txt"))
  with pytest.raises(ValueError, match=r"data.sources.web.glob=.*nothing\*.txt.*no files match"):
    corpora.documents("web", config, "train")


def test_empty_files_are_named(tmp_path):
  (tmp_path / "empty.txt").write_text("   ")
  config = corpora.source_config("text_files", glob=str(tmp_path / "*.txt"))
  with pytest.raises(ValueError, match="hold no text"):
    corpora.documents("web", config, "train")


def test_an_empty_split_names_the_share_that_would_fill_it(tmp_path):
  (tmp_path / "few.jsonl").write_text("".join(f'{{"text": "document {i}"}}\n' for i in range(3)))
  config = corpora.source_config("text_files", glob=str(tmp_path / "few.jsonl"))
  assert len(corpora.documents("web", config, "train")) == 3  # None of them held out.
  with pytest.raises(ValueError, match=r"data.sources.web: the validation split is empty: no "
                     r"document of its 3 fell in the held-out share data.sources.web."
                     r"validation_fraction=0.05 .*config.eval.sources without it"):
    corpora.documents("web", config, "validation")
  config.validation_fraction = 0.0
  with pytest.raises(ValueError, match=r"validation_fraction=0.0 .*validation_glob"):
    corpora.documents("web", config, "validation")
  for share in (1.0, -0.5):
    config.validation_fraction = share
    with pytest.raises(ValueError, match=r"data.sources.web.validation_fraction=.*: expected a "
                       r"share of the documents in \[0, 1\)"):
      corpora.documents("web", config, "train")


def test_bad_jsonl_line_is_named(tmp_path):
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"other": 1}\n')
  config = corpora.source_config("text_files", glob=str(tmp_path / "*.jsonl"))
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
    corpora.documents("web", config, "train")


def test_unknown_kind_and_corpus_are_named():
  with pytest.raises(ValueError, match="data.sources.x.kind='csv'"):
    corpora.documents("x", corpora.source_config("csv"), "train")
  with pytest.raises(ValueError, match="data.sources.x.corpus='wikipedia'"):
    corpora.documents("x", corpora.source_config("embedded", corpus="wikipedia"), "train")


def test_tfds_source_reads_mocked_data_offline():
  import tensorflow_datasets as tfds
  config = corpora.source_config("tfds", tfds_name="lm1b", text_field="text")
  with tfds.testing.mock_data(num_examples=5):
    texts = corpora.documents("lm1b", config, "train")
    assert len(texts) == 5 and all(isinstance(text, str) for text in texts)


def test_tfds_text_accepts_real_bytes_and_mocked_str():
  texts = corpora._TfdsTexts([{"text": "Grüße".encode()}, {"text": "mocked"}], "text")
  assert list(texts) == ["Grüße", "mocked"]


def test_tfds_missing_dataset_is_named(tmp_path):
  config = corpora.source_config("tfds", tfds_name="wiki40b/en", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="data.sources.wiki: cannot open tfds 'wiki40b/en'"):
    corpora.documents("wiki", config, "train")


def test_text_file_split_does_not_depend_on_where_the_data_lives(tmp_path):
  for directory in ("a", "b/deeper"):
    os.makedirs(tmp_path / directory)
    for index in range(50):
      (tmp_path / directory / f"doc{index}.txt").write_text(f"document {index}")
  splits = [corpora.documents("t", corpora.source_config(
      "text_files", glob=str(tmp_path / directory / "*.txt"), validation_fraction=0.3),
                              "validation") for directory in ("a", "b/deeper")]
  assert splits[0] == splits[1] and splits[0]


def test_a_tfds_source_without_tensorflow_datasets_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # As if not installed.
  config = corpora.source_config("tfds", tfds_name="lm1b")
  with pytest.raises(ValueError, match=re.escape(
      "data.sources.wiki: kind 'tfds' needs tensorflow-datasets; pip install 'cpt_jax[tfds]'")):
    corpora.documents("wiki", config, "train")


_DOCUMENTS = ["first document\nwith two lines", "second, ünïcode", "third " * 50]


def _write_formats(directory):
  """The same three documents as .txt files, and in every row format text_files reads."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  directory.mkdir()
  for index, text in enumerate(_DOCUMENTS):
    (directory / f"doc{index}.txt").write_text(text, encoding="utf-8")
  lines = "".join(json.dumps({"text": text, "meta": 1}) + "\n" for text in _DOCUMENTS).encode()
  (directory / "rows.jsonl.gz").write_bytes(gzip.compress(lines))
  compressor = zstandard.ZstdCompressor().compressobj()  # A frame without its content size.
  (directory / "rows.jsonl.zst").write_bytes(compressor.compress(lines) + compressor.flush())
  table = pa.table({"id": list(range(3)), "text": _DOCUMENTS})
  pq.write_table(table, directory / "rows.parquet", row_group_size=2)  # Two row groups.
  with pa.ipc.new_stream(str(directory / "data-00000-of-00001.arrow"), table.schema) as writer:
    writer.write_table(table, max_chunksize=2)  # datasets' save_to_disk layout.


def _file_documents(pattern, text_field="text"):
  """(id, text) of every document the files matching `pattern` hold, both splits."""
  config = corpora.source_config("text_files", glob=pattern, text_field=text_field)
  return [(doc_id, text) for unit in corpora.read_units("s", config)
          for _, doc_id, text in corpora.unit_documents(unit, config)]


@pytest.mark.parametrize("suffix", ["jsonl.gz", "jsonl.zst", "parquet", "arrow"])
def test_compressed_and_columnar_files_give_the_text_files_documents(suffix, tmp_path):
  _write_formats(tmp_path / "data")
  texts = _file_documents(str(tmp_path / "data" / "*.txt"))
  rows = _file_documents(str(tmp_path / "data" / f"*.{suffix}"))
  assert [text for _, text in rows] == [text for _, text in texts] == _DOCUMENTS
  assert [doc_id for doc_id, _ in rows][-1].endswith(f".{suffix}:3")


def test_a_missing_text_column_is_named(tmp_path):
  _write_formats(tmp_path / "data")
  with pytest.raises(ValueError, match=r"rows.parquet: no column 'body'.*\['id', 'text'\]"):
    _file_documents(str(tmp_path / "data" / "*.parquet"), "body")


def test_a_gs_glob_reads_the_same_documents_through_epath(tmp_path):
  _write_formats(tmp_path / "data")
  local = _file_documents(str(tmp_path / "data" / "*.parquet"))
  with fake_bucket.serve(tmp_path) as bucket:
    remote = _file_documents(f"{bucket.prefix}/data/*.parquet")
    with pytest.raises(ValueError, match="no files match"):
      _file_documents(f"{bucket.prefix}/data/*.csv")
  assert remote == local  # The same ids (relative to the glob's root) and texts.


def _write_dataset(directory, tag):
  for part in range(2):
    path = directory / "data" / f"part-{part}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"{tag} document {part}.{i} " * 5}) + "\n"
                            for i in range(40)))
  (directory / "README.md").write_text("a dataset card, not data")


def test_a_hub_dataset_glob_reads_its_revisions_files_as_local_ones(tmp_path, offline_hub):
  for tag, revision, commit in (("main", "main", "a" * 40),
                                ("parquet", "refs/convert/parquet", "b" * 40)):
    _write_dataset(tmp_path / tag, tag)
    helpers.put_in_hub_cache(offline_hub, "org/corpus", revision, tmp_path / tag, commit,
                             kind="datasets")
  for tag, reference in (("main", "org/corpus"), ("main", "org/corpus@main"),
                         ("parquet", "org/corpus@refs%2Fconvert%2Fparquet")):
    hub = corpora.source_config("text_files", glob=f"hf://datasets/{reference}/data/*.jsonl")
    local = corpora.source_config("text_files", glob=f"{tmp_path}/{tag}/data/*.jsonl")
    for split in corpora.SPLITS:
      # The same documents, ids (relative to the glob's fixed part) and so the same split.
      assert corpora._documents("web", hub, split) == corpora._documents("web", local, split)
    assert corpora.documents("web", hub, "train")[0].startswith(tag)


@pytest.mark.parametrize("glob, message", [
    ("hf://datasets/org/missing/data/*.jsonl",
     "not in the local Hugging Face cache and the Hub cannot be reached"),
    ("hf://datasets/org/corpus", "expected hf://datasets/ORG/NAME[@REVISION]/PATTERN"),
    ("hf://datasets/org/corpus/none/*.jsonl", "no files match"),
])
def test_a_hub_dataset_glob_that_cannot_be_read_is_named(tmp_path, offline_hub, glob, message):
  _write_dataset(tmp_path / "main", "main")
  helpers.put_in_hub_cache(offline_hub, "org/corpus", "main", tmp_path / "main", "a" * 40,
                           kind="datasets")
  config = corpora.source_config("text_files", glob=glob)
  with pytest.raises(ConfigError, match=re.escape("data.sources.web.glob=") + ".*"
                     + re.escape(message)):
    corpora.documents("web", config, "train")


def test_a_hub_dataset_glob_is_listed_at_one_commit_and_each_file_fetched_when_read(
    tmp_path, offline_hub, monkeypatch):
  """Online (the Hub stood in for): the glob is listed at the commit `main` names now, with
  fnmatch's `*` spanning directories as the Hub's own patterns do, and a unit's files are
  fetched only when that unit is read (a host of a multi-host prepare reads its share)."""
  import huggingface_hub
  from huggingface_hub import constants
  _write_dataset(tmp_path / "main", "main")
  (tmp_path / "main" / "data" / "more").mkdir()
  (tmp_path / "main" / "data" / "more" / "part-2.jsonl").write_text(
      json.dumps({"text": "a nested document " * 5}) + "\n")
  commit = "c" * 40
  helpers.put_in_hub_cache(offline_hub, "org/corpus", "main", tmp_path / "main", commit,
                           kind="datasets")
  names = ["README.md", "data/part-0.jsonl", "data/part-1.jsonl", "data/more/part-2.jsonl"]
  asked = []

  class FakeApi:
    def repo_info(self, repo_id, repo_type, revision):
      asked.append(("info", repo_id, repo_type, revision))
      return types.SimpleNamespace(sha=commit)

    def list_repo_files(self, repo_id, repo_type, revision):
      asked.append(("list", repo_id, repo_type, revision))
      return names

  fetched, download = [], huggingface_hub.hf_hub_download

  def recording_download(repo_id, filename, **kwargs):
    fetched.append((filename, kwargs["revision"]))
    return download(repo_id, filename, local_files_only=True, **kwargs)

  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
  config = corpora.source_config("text_files", glob="hf://datasets/org/corpus/data/*.jsonl")
  units = corpora.read_units("web", config)
  assert asked == [("info", "org/corpus", "dataset", None),
                   ("list", "org/corpus", "dataset", commit)]
  assert [unit.files for unit in units] == [
      (f"hf://datasets/org/corpus@{commit}/data/{name}",)
      for name in ("more/part-2.jsonl", "part-0.jsonl", "part-1.jsonl")]
  assert fetched == []  # Listing fetches nothing.
  ids = [doc_id for _, doc_id, _ in corpora.unit_documents(units[1], config)]
  assert fetched == [("data/part-0.jsonl", commit)]
  assert ids[0] == "part-0.jsonl:1"  # Relative to the glob's fixed part, as locally.
  # Offline, the listing kept from the Hub still names every file, also those this cache
  # lacks (fetched by other hosts): reading one is named, never silently skipped.
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  os.remove(offline_hub / "datasets--org--corpus" / "snapshots" / commit / "data" / "part-1.jsonl")
  assert corpora.read_units("web", config) == units
  with pytest.raises(ConfigError, match=re.escape(
      f"hf://datasets/org/corpus@{commit}/data/part-1.jsonl (matched by "
      "data.sources.web.glob): not in the local Hugging Face cache")):
    list(corpora.unit_documents(units[2], config))


def test_a_hub_dataset_the_hub_and_the_cache_lack_is_named(offline_hub, monkeypatch):
  import huggingface_hub
  from huggingface_hub import constants

  class Unreachable:
    def repo_info(self, *args, **kwargs):
      raise ConnectionError("Name or service not known")

  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
  config = corpora.source_config("text_files", glob="hf://datasets/org/absent/*.jsonl")
  with pytest.raises(ConfigError, match=re.escape(
      "data.sources.web.glob='hf://datasets/org/absent/*.jsonl': the Hub cannot be reached "
      "(Name or service not known) and the local Hugging Face cache does not hold it")):
    corpora.read_units("web", config)
