"""Tests for cpt_jax/packing.py."""

import numpy as np
import pytest

from cpt_jax import packing

EOS = 99


class _Documents:
  """In-memory `packing.Documents`, with or without known lengths; counts the documents
  read and the calls."""

  def __init__(self, arrays, known_lengths):
    self._arrays = arrays
    self.lengths = np.array([len(a) for a in arrays]) if known_lengths else None
    self.reads = self.calls = 0

  def __len__(self):
    return len(self._arrays)

  def read(self, indices):
    self.reads += len(indices)
    self.calls += 1
    return [self._arrays[i] for i in indices]


def _documents(lengths, seed=0, known_lengths=False):
  rng = np.random.default_rng(seed)
  return _Documents([rng.integers(1, 90, n).astype(np.int32) for n in lengths], known_lengths)


def _finite(documents, seq_len):
  return packing.PackedStream(documents, seq_len, EOS, endless=False)


def test_every_stream_token_is_a_target_exactly_once():
  documents = _documents([5, 17, 3, 40, 8, 1, 22])
  stream = np.concatenate([np.append(doc, EOS) for doc in documents._arrays])
  rows = _finite(documents, 8).rows(0, 20)
  real = rows["tokens"][:, 1:][rows["segment_ids"][:, 1:] != 0]
  np.testing.assert_array_equal(real, stream[1:])  # Nothing dropped, nothing overwritten.
  assert rows["tokens"][0, 0] == stream[0]
  assert packing.to_model_batch(rows)["inputs"].shape == (20, 8)


def test_rows_overlap_by_one_token():
  rows = packing.PackedStream(_documents([30, 30]), 10, EOS).rows(0, 6)
  np.testing.assert_array_equal(rows["tokens"][:-1, -1], rows["tokens"][1:, 0])


def test_positions_restart_at_every_document_and_segments_separate_them():
  rows = _finite(_documents([3, 4, 20]), 12).rows(0, 2)
  np.testing.assert_array_equal(rows["segment_ids"][0], [1] * 4 + [2] * 5 + [3] * 4)
  np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3])
  assert rows["tokens"][0, 3] == EOS and rows["tokens"][0, 8] == EOS
  # The continued third document's positions restart at the second row's start.
  np.testing.assert_array_equal(rows["segment_ids"][1], [1] * 13)
  np.testing.assert_array_equal(rows["positions"][1], np.arange(13))


def test_loss_mask_never_crosses_documents_or_counts_padding():
  rows = {"tokens": np.array([[5, 6, EOS, 7, 8, 0, 0]]),
          "segment_ids": np.array([[1, 1, 1, 2, 2, 0, 0]]),
          "positions": np.array([[0, 1, 2, 0, 1, 0, 0]])}
  batch = packing.to_model_batch(rows)
  np.testing.assert_array_equal(batch["loss_mask"], [[1, 1, 0, 1, 0, 0]])
  np.testing.assert_array_equal(batch["targets"], [[6, EOS, 7, 8, 0, 0]])


@pytest.mark.parametrize("known_lengths", [False, True])
def test_a_finite_stream_ends_in_padding(known_lengths):
  rows = _finite(_documents([10], known_lengths=known_lengths), 8).rows(0, 3)
  # 11 tokens with EOS: one full row of 8 + 1, then 3 tokens, then nothing.
  np.testing.assert_array_equal(rows["segment_ids"][1], [1, 1, 1, 0, 0, 0, 0, 0, 0])
  assert not rows["segment_ids"][2].any() and not rows["tokens"][2].any()


def test_training_streams_reshuffle_every_epoch_and_repeat_each_document_once():
  documents = _documents([7] * 10)  # 8 tokens with EOS: one document per row at seq_len 8.
  rows = packing.PackedStream(documents, 8, EOS, shuffle_seed=1).rows(0, 30)["tokens"][:, :7]
  epochs = [[next(i for i, doc in enumerate(documents._arrays) if (doc == row).all())
             for row in rows[start:start + 10]] for start in (0, 10, 20)]
  assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
  assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.parametrize("seq_len", [4, 9, 50])
def test_any_row_range_in_any_order_equals_the_sequential_stream(seq_len):
  lengths = np.random.default_rng(2).integers(1, 60, 25)
  expected = packing.PackedStream(_documents(lengths), seq_len, EOS, shuffle_seed=5).rows(0, 300)
  for known_lengths in (False, True):
    stream = packing.PackedStream(_documents(lengths, known_lengths=known_lengths), seq_len, EOS,
                                  shuffle_seed=5)
    for first, count in ((250, 50), (3, 4), (0, 1), (120, 77), (7, 200)):
      got = stream.rows(first, count)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key][first:first + count], err_msg=key)


def test_known_lengths_seek_without_reading_what_lies_before():
  documents = _documents([40] * 1000, known_lengths=True)
  packing.PackedStream(documents, 16, EOS, shuffle_seed=0).rows(2000, 4)
  assert documents.reads <= 2 * 32  # The documents at the rows, not the 800 before them.


@pytest.mark.parametrize("known_lengths", [False, True])
@pytest.mark.parametrize("stop_after", [0, 1, 5, 23])
def test_state_restores_the_identical_stream(known_lengths, stop_after):
  def stream():
    documents = _documents([13, 2, 29, 7, 31, 5, 11], seed=3, known_lengths=known_lengths)
    return packing.PackedStream(documents, 6, EOS, shuffle_seed=4)

  original = stream()
  original.rows(0, stop_after)
  state = original.get_state()
  expected = original.rows(stop_after, 12)
  restored = stream()
  restored.set_state(state)
  got = restored.rows(stop_after, 12)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("seq_len", [5, 64])
def test_document_starts_are_marked_alike_by_the_loop_and_the_scan(monkeypatch, seq_len):
  documents = _documents(np.random.default_rng(7).integers(1, 30, 200))
  packed = {}
  for name, threshold in (("loop", 10**9), ("scan", -1)):
    monkeypatch.setattr(packing, "LOOP_BOUNDARIES", threshold)
    packed[name] = packing.PackedStream(documents, seq_len, EOS, shuffle_seed=2).rows(3, 40)
  for key in packing.ROW_KEYS:
    np.testing.assert_array_equal(packed["loop"][key], packed["scan"][key], err_msg=key)
  assert packed["loop"]["segment_ids"].max() > 2  # Several documents start inside rows.


def test_a_huge_document_is_read_once_per_need_not_thirty_two_times():
  # One 1M-token document, endless: each epoch is that document again. Rows need only a few
  # thousand tokens at a time, so a read takes one copy, not a batch of 32.
  documents = _documents([1_000_000])
  stream = packing.PackedStream(documents, 128, EOS, shuffle_seed=0)
  stream.rows(0, 32)
  assert documents.reads == 1
  stream.rows(7_800, 32)  # Crosses into the second epoch.
  assert documents.reads == 2
  assert stream._buffer.size <= 2 * 1_000_001


def test_small_documents_are_still_read_in_groups():
  documents = _documents([50] * 1000)
  packing.PackedStream(documents, 128, EOS, shuffle_seed=0).rows(0, 64)
  assert documents.reads >= 32 and documents.reads < 1000


@pytest.mark.parametrize("known_lengths", [True, False])
def test_rows_do_not_depend_on_how_many_documents_a_read_takes(known_lengths):
  # A bucket's token cache reads up to 1024 documents at a time, live sources 32.
  few, many = (_documents([30] * 3000, known_lengths=known_lengths) for _ in range(2))
  by_few = packing.PackedStream(few, 128, EOS, shuffle_seed=0, documents_per_read=4)
  by_many = packing.PackedStream(many, 128, EOS, shuffle_seed=0, documents_per_read=1024)
  for first in (0, 40, 37, 900):  # Forward, back, and across an epoch.
    a, b = by_few.rows(first, 16), by_many.rows(first, 16)
    for key in packing.ROW_KEYS:
      np.testing.assert_array_equal(a[key], b[key])
  assert many.calls < few.calls / 10
