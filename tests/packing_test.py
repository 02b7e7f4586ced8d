"""Tests for cpt_jax/packing.py."""

import grain
import numpy as np
import pytest

from cpt_jax import packing

EOS = 99


def _documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 90, length).astype(np.int32) for length in lengths]


def _rows(documents, seq_len, pad_final_row=False):
  dataset = packing.PackIterDataset(grain.MapDataset.source(documents).to_iter_dataset(),
                                    seq_len, EOS, pad_final_row=pad_final_row)
  return list(dataset)


def test_every_stream_token_is_a_target_exactly_once():
  documents = _documents([5, 17, 3, 40, 8, 1, 22])
  stream = np.concatenate([np.append(doc, EOS) for doc in documents])
  rows = _rows(documents, seq_len=8, pad_final_row=True)
  batch = packing.to_model_batch({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  real = np.concatenate([row["tokens"][1:][row["segment_ids"][1:] != 0] for row in rows])
  np.testing.assert_array_equal(real, stream[1:])  # Nothing dropped, nothing overwritten.
  np.testing.assert_array_equal(rows[0]["tokens"][0], stream[0])
  assert batch["inputs"].shape == (len(rows), 8)


def test_rows_overlap_by_one_token():
  rows = _rows(_documents([30, 30]), seq_len=10)
  for previous, current in zip(rows, rows[1:]):
    assert previous["tokens"][-1] == current["tokens"][0]


def test_positions_restart_at_every_document_and_segments_separate_them():
  rows = _rows(_documents([3, 4, 20]), seq_len=12)
  first = rows[0]
  np.testing.assert_array_equal(first["segment_ids"], [1] * 4 + [2] * 5 + [3] * 4)
  np.testing.assert_array_equal(first["positions"], [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3])
  assert first["tokens"][3] == EOS and first["tokens"][8] == EOS


def test_loss_mask_never_crosses_documents_or_counts_padding():
  rows = {"tokens": np.array([[5, 6, EOS, 7, 8, 0, 0]]),
          "segment_ids": np.array([[1, 1, 1, 2, 2, 0, 0]]),
          "positions": np.array([[0, 1, 2, 0, 1, 0, 0]])}
  batch = packing.to_model_batch(rows)
  np.testing.assert_array_equal(batch["loss_mask"], [[1, 1, 0, 1, 0, 0]])
  np.testing.assert_array_equal(batch["targets"], [[6, EOS, 7, 8, 0, 0]])


def test_final_partial_row_is_padded_only_when_asked():
  documents = _documents([10])  # 11 tokens with EOS: one row of 8+1, then 3 left over.
  assert len(_rows(documents, seq_len=8)) == 1
  padded = _rows(documents, seq_len=8, pad_final_row=True)
  assert len(padded) == 2
  np.testing.assert_array_equal(padded[1]["segment_ids"], [1, 1, 1, 0, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("stop_after", [0, 1, 3, 7])
def test_state_restores_the_identical_stream(stop_after):
  documents = _documents([13, 2, 29, 7, 31, 5, 11], seed=3)
  dataset = packing.PackIterDataset(
      grain.MapDataset.source(documents).repeat(3).to_iter_dataset(), 6, EOS)
  iterator = iter(dataset)
  for _ in range(stop_after):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(12)]
  restored = iter(dataset)
  restored.set_state(state)
  for want, got in zip(expected, [next(restored) for _ in range(12)]):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
