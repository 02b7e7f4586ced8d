"""Tests for cpt_jax/input_pipeline.py and cpt_jax/token_cache.py."""

import json
import os

import ml_collections
import numpy as np
import pytest

from cpt_jax import corpora
from cpt_jax import input_pipeline
from cpt_jax import packing
from cpt_jax import run_plan
from cpt_jax import token_cache
import run_helpers as helpers
from cpt_jax import tokenizer as tokenizer_lib

TOKENIZER = tokenizer_lib.bytes_tokenizer()


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpora")
  rng = np.random.default_rng(0)
  for name, alphabet in (("old", "abcdefgh "), ("new", "01234567 ")):
    os.makedirs(root / name)
    for index in range(60):
      length = int(rng.integers(20, 400))
      (root / name / f"{index}.txt").write_text("".join(rng.choice(list(alphabet), length)))
  config = input_pipeline.default_config()
  config.seq_len = 16
  config.global_batch_size = 20
  config.sources = ml_collections.ConfigDict({
      name: corpora.source_config("text_files", glob=str(root / name / "*.txt"))
      for name in ("old", "new")})
  return config


def _stage(mixture, replayed=(), replay_position="start"):
  return run_plan.StagePlan(1, "s", 10, 0, mixture, "reset", replay_position, tuple(replayed))


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _targets_by_source(batch, num_sources):
  """Target tokens (non-padding) each source contributed to a batch."""
  targets_per_row = (batch["segment_ids"][:, 1:] != 0).sum(axis=1)
  return np.bincount(batch["source_id"], weights=targets_per_row, minlength=num_sources)


def test_replay_weight_is_the_share_of_training_tokens(data_config):
  iterator = iter(input_pipeline.stage_dataset(data_config, _stage({"new": 0.95, "old": 0.05},
                                                                   ["old"]), TOKENIZER))
  tokens = sum(_targets_by_source(batch, 2) for batch in _take(iterator, 50))
  share = tokens[input_pipeline.source_names(data_config).index("old")] / tokens.sum()
  assert abs(share - 0.05) < 0.005


def test_stage_batches_have_the_model_layout(data_config):
  batch = next(iter(input_pipeline.stage_dataset(data_config, _stage({"new": 1.0}), TOKENIZER)))
  assert batch["tokens"].shape == (20, 17) and batch["source_id"].shape == (20,)
  model_batch = packing.to_model_batch(batch)
  assert model_batch["inputs"].shape == (20, 16) and model_batch["loss_mask"].sum() > 0


def test_pipeline_is_deterministic_and_resumes_identically(data_config):
  dataset = input_pipeline.stage_dataset(data_config, _stage({"new": 0.75, "old": 0.25}, ["old"]),
                                         TOKENIZER)
  first, second = iter(dataset), iter(dataset)
  for a, b in zip(_take(first, 5), _take(second, 5)):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  state = json.loads(json.dumps(first.get_state()))  # Survives a JSON round trip.
  expected = _take(first, 30)  # Past several epochs of the short sources.
  restored = iter(dataset)
  restored.set_state(state)
  for a, b in zip(expected, _take(restored, 30)):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["source_id"], b["source_id"])


def test_replay_starts_from_the_beginning_of_the_earlier_stream(data_config):
  stage_one = iter(input_pipeline.stage_dataset(data_config, _stage({"old": 1.0}), TOKENIZER))
  old_rows = np.concatenate([batch["tokens"] for batch in _take(stage_one, 3)])
  stage_two = iter(input_pipeline.stage_dataset(data_config, _stage({"new": 0.5, "old": 0.5},
                                                                    ["old"]), TOKENIZER))
  old_id = input_pipeline.source_names(data_config).index("old")
  batch = next(stage_two)
  replayed = batch["tokens"][batch["source_id"] == old_id]
  np.testing.assert_array_equal(replayed, old_rows[:len(replayed)])


def test_replay_can_continue_where_the_earlier_stage_stopped(data_config):
  stage_one = iter(input_pipeline.stage_dataset(data_config, _stage({"old": 1.0}), TOKENIZER))
  old_rows = np.concatenate([batch["tokens"] for batch in _take(stage_one, 4)])
  continued = iter(input_pipeline.stage_dataset(
      data_config, _stage({"new": 0.5, "old": 0.5}, ["old"], "continue"), TOKENIZER,
      positions={"old": 40}))
  old_id = input_pipeline.source_names(data_config).index("old")
  batch = next(continued)
  replayed = batch["tokens"][batch["source_id"] == old_id]
  np.testing.assert_array_equal(replayed, old_rows[40:40 + len(replayed)])


def _plans(data_config, *stages):
  config = ml_collections.ConfigDict({"data": data_config, "stages": list(stages),
                                      "init": {"from_checkpoint": ""}})
  return run_plan.plan(config)


def test_stream_positions_are_the_furthest_row_served_before_a_stage(data_config):
  plans = _plans(data_config, run_plan.stage("a", 3, {"old": 1.0}),
                 run_plan.stage("b", 2, {"new": 0.75}, replay={"old": 0.25},
                                replay_position="continue"),
                 run_plan.stage("c", 1, {"new": 0.5}, replay={"old": 0.5}))
  # Served rows, counted from the batches the stages really build.
  served, positions = {}, []
  for index, stage in enumerate(plans):
    positions.append(input_pipeline.stream_positions(data_config, plans, index))
    assert positions[-1] == served, stage.name
    iterator = iter(input_pipeline.stage_dataset(data_config, stage, TOKENIZER,
                                                 positions=positions[-1]))
    counts = np.bincount(np.concatenate([b["source_id"] for b in _take(iterator, stage.steps)]),
                         minlength=2)
    for name, count in zip(input_pipeline.source_names(data_config), counts):
      start = positions[-1].get(name, 0) if name in stage.replayed_sources and (
          stage.replay_position == "continue") else 0
      if count:
        served[name] = max(served.get(name, 0), start + int(count))
  assert positions == [{}, {"old": 60}, {"old": 70, "new": 30}]


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_take_their_rows_of_the_same_global_batches(data_config, processes):
  stage = _stage({"new": 0.75, "old": 0.25}, ["old"])
  whole = iter(input_pipeline.stage_dataset(data_config, stage, TOKENIZER))
  parts = [iter(input_pipeline.stage_dataset(data_config, stage, TOKENIZER,
                                             input_pipeline.ProcessShard(i, processes)))
           for i in range(processes)]
  for _ in range(6):
    expected = next(whole)
    pieces = [next(part) for part in parts]
    for key in ("tokens", "segment_ids", "positions", "source_id"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), expected[key])


def test_processes_share_the_validation_batches(data_config):
  whole = input_pipeline.validation_batches("old", data_config, TOKENIZER, max_batches=100)
  halves = [input_pipeline.validation_batches("old", data_config, TOKENIZER, 100,
                                              input_pipeline.ProcessShard(i, 2)) for i in range(2)]
  assert len(halves[0]) == len(halves[1]) == len(whole)
  for batch, first, second in zip(whole, *halves):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])


def test_validation_batches_are_fixed_padded_and_finite(data_config):
  batches = input_pipeline.validation_batches("old", data_config, TOKENIZER, max_batches=100)
  again = input_pipeline.validation_batches("old", data_config, TOKENIZER, max_batches=100)
  assert len(batches) == len(again) < 100
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert all(batch["inputs"].shape == (20, 16) for batch in batches)
  assert batches[-1]["loss_mask"][-1].sum() == 0  # Padding rows never count.
  held_out = corpora.documents("old", data_config.sources.old, "validation")
  targets = sum(batch["loss_mask"].sum() for batch in batches)
  # Every validation byte and EOS is a target except each document's first token.
  assert targets == sum(len(text.encode()) for text in held_out)


def test_unknown_source_is_named(data_config):
  with pytest.raises(ValueError, match="data source 'web' is unknown"):
    input_pipeline.tokenized_documents("web", data_config, "train", TOKENIZER)


def test_batch_not_divisible_by_processes_is_refused(data_config):
  with pytest.raises(ValueError, match="global_batch_size=20: expected a multiple of the 3"):
    input_pipeline.per_process_batch_size(data_config, input_pipeline.ProcessShard(0, 3))


def test_token_cache_round_trip_gives_the_same_batches(data_config, tmp_path):
  cached_config = ml_collections.ConfigDict(data_config.to_dict())
  cached_config.token_cache_dir = str(tmp_path)
  for name in ("old", "new"):
    live = input_pipeline.tokenized_documents(name, data_config, "train", TOKENIZER)
    arrays = live.read(range(len(live)))
    meta = token_cache.write(str(tmp_path), name, "train", arrays, TOKENIZER.fingerprint,
                             corpora.definition(data_config.sources[name]))
    assert meta["documents"] == len(live)
  cached = input_pipeline.tokenized_documents("new", cached_config, "train", TOKENIZER)
  np.testing.assert_array_equal(cached.lengths, [len(a) for a in arrays])
  stage = _stage({"new": 0.75, "old": 0.25}, ["old"])
  for a, b in zip(_take(iter(input_pipeline.stage_dataset(data_config, stage, TOKENIZER)), 8),
                  _take(iter(input_pipeline.stage_dataset(cached_config, stage, TOKENIZER)), 8)):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_token_cache_of_another_tokenizer_is_refused(data_config, tmp_path):
  token_cache.write(str(tmp_path), "old", "train", [np.arange(5)], "someone-else", {})
  with pytest.raises(ValueError, match="tokenized with another tokenizer"):
    token_cache.read(str(tmp_path), "old", "train", TOKENIZER.fingerprint, {})


def test_token_cache_of_another_source_definition_is_refused(data_config, tmp_path):
  definition = corpora.definition(data_config.sources["old"])
  token_cache.write(str(tmp_path), "old", "train", [np.arange(5)], "fp", definition)
  token_cache.read(str(tmp_path), "old", "train", "fp", definition)
  moved = dict(definition, glob="/elsewhere/*.txt")
  with pytest.raises(ValueError, match="prepared from another definition of source 'old'"):
    token_cache.read(str(tmp_path), "old", "train", "fp", moved)


def test_corrupt_token_cache_shard_is_named(tmp_path):
  token_cache.write(str(tmp_path), "old", "train", [np.arange(500)] * 20, "fp", {})
  [records_path] = token_cache.records_paths(str(tmp_path), "old", "train")
  with open(records_path, "r+b") as f:
    f.truncate(os.path.getsize(records_path) // 2)
  with pytest.raises(ValueError, match=r"old: corrupt or truncated train shards"):
    token_cache.read(str(tmp_path), "old", "train", "fp", {})


def test_a_cache_from_before_shards_still_reads(tmp_path):
  """One `<split>.array_record` and no shard list: the layout caches had before shards."""
  arrays = [np.arange(n, dtype=np.int32) for n in (5, 9, 2)]
  token_cache.write(str(tmp_path), "old", "train", arrays, "fp", {})
  [shard] = token_cache.records_paths(str(tmp_path), "old", "train")
  legacy_records, meta_path, _ = token_cache.paths(str(tmp_path), "old", "train")
  os.rename(shard, legacy_records)
  with open(meta_path) as f:
    meta = json.load(f)
  del meta["shards"]
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  cached = token_cache.read(str(tmp_path), "old", "train", "fp", {})
  for got, want in zip(cached.read(range(3)), arrays):
    np.testing.assert_array_equal(got, want)
  assert cached.read([]) == []


def test_background_prefetch_gives_the_same_batches_and_state(data_config):
  prefetched = ml_collections.ConfigDict(data_config.to_dict())
  prefetched.prefetch_batches = 2
  stage = _stage({"new": 0.75, "old": 0.25}, ["old"])
  plain = iter(input_pipeline.stage_dataset(data_config, stage, TOKENIZER))
  ahead = iter(input_pipeline.stage_dataset(prefetched, stage, TOKENIZER))
  for a, b in zip(_take(plain, 5), _take(ahead, 5)):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert ahead.get_state()["batch"] == plain.get_state()["batch"] == 5  # Not the thread's.
  restored = iter(input_pipeline.stage_dataset(prefetched, stage, TOKENIZER))
  restored.set_state(ahead.get_state())
  np.testing.assert_array_equal(next(restored)["tokens"], next(plain)["tokens"])


def test_rows_served_count_every_process_rows_of_each_source(data_config):
  plans = _plans(data_config, run_plan.stage("a", 2, {"old": 1.0}),
                 run_plan.stage("b", 4, {"new": 0.75}, replay={"old": 0.25}))
  halves = [iter(input_pipeline.stage_dataset(data_config, plans[1], TOKENIZER,
                                              input_pipeline.ProcessShard(i, 2)))
            for i in range(2)]
  counted = np.array([0, 2 * 20])  # Stage "a": 2 batches of 20 "old" rows.
  for step in range(3, 7):
    first, second = next(halves[0]), next(halves[1])
    counted += np.bincount(np.concatenate([first["source_id"], second["source_id"]]),
                           minlength=2)
    served = input_pipeline.rows_served(data_config, plans, step)
    np.testing.assert_array_equal([served["new"], served["old"]], counted)
    targets = sum(_targets_by_source(b, 2) for b in (first, second))
    assert targets.sum() == 20 * data_config.seq_len  # Training rows are never padded.


def test_every_document_starts_with_the_tokenizers_prefix_and_ends_with_eos(data_config):
  plain = tokenizer_lib.train_bpe(["abcdefgh 01234567 " * 40], vocab_size=300, megabytes=1)
  serialized, bos = helpers.with_begin_of_text(plain.serialized)
  tokenizer = tokenizer_lib.from_serialized("hf_json", serialized, tokenizer_lib.EOS_TOKEN, "t")
  iterator = iter(input_pipeline.stage_dataset(data_config, _stage({"new": 0.5, "old": 0.5}),
                                               tokenizer))
  starts = 0
  for rows in _take(iterator, 30):
    tokens, segments = rows["tokens"], rows["segment_ids"]
    # A document starting inside a row (rows restart positions, so a segment change marks it):
    # its first token is the prefix, the token before it the end of the previous document.
    first = (segments[:, 1:] != segments[:, :-1]) & (segments[:, 1:] != 0)
    np.testing.assert_array_equal(tokens[:, 1:] == bos, first)  # There and nowhere else.
    np.testing.assert_array_equal(tokens[:, :-1][first], tokenizer.eos_id)
    starts += first.sum()
  assert starts > 20
