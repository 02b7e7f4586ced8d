"""Packing tokenized documents into fixed-length training rows, as a checkpointable Grain stage.

Documents (each followed by EOS) are concatenated into one stream that is cut into rows of
`seq_len + 1` tokens with a stride of `seq_len`: row k is stream[k L : k L + L + 1]. Each row
yields `seq_len` (input, target) pairs and every stream token is a target exactly once, so no
real token is dropped or overwritten (Grain's ConcatThenSplit BOS mode overwrites one).
`segment_ids` number the documents within a row from 1 (0 is padding); `positions` restart at
0 for every document (and at the row's start for a continued one): rotary is relative, so
this is what attention would see anyway, and it never crosses documents.

The iterator's state is the parent's state before the document the next row starts in, plus
the offset into it: small, and restoring re-reads that document, so the stream is identical.
"""

from __future__ import annotations

import collections

import grain
import numpy as np


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, row_length: int, eos_id: int,
               pad_final_row: bool):
    super().__init__(parent)
    self._row_length = row_length  # seq_len + 1
    self._eos_id = eos_id
    self._pad_final_row = pad_final_row
    # Documents not yet fully consumed: (parent state before the document, tokens + EOS).
    self._documents: collections.deque = collections.deque()
    self._offset = 0  # Where the next row starts in self._documents[0].
    self._exhausted = False
    self._ramp = np.arange(row_length, dtype=np.int32)

  def _fetch(self) -> bool:
    if self._exhausted:
      return False
    state_before = self._parent.get_state()
    try:
      tokens = np.asarray(next(self._parent), np.int32)
    except StopIteration:
      self._exhausted = True
      return False
    self._documents.append((state_before, np.append(tokens, np.int32(self._eos_id))))
    return True

  def __next__(self) -> dict:
    length = self._row_length
    available = -self._offset + sum(len(doc) for _, doc in self._documents)
    while available < length and self._fetch():
      available += len(self._documents[-1][1])
    if available < 2 or (available < length and not self._pad_final_row):
      raise StopIteration
    tokens = np.zeros(length, np.int32)
    segment_ids = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    filled, offset = 0, self._offset
    for segment, (_, doc) in enumerate(self._documents, start=1):
      take = min(len(doc) - offset, length - filled)
      tokens[filled:filled + take] = doc[offset:offset + take]
      segment_ids[filled:filled + take] = segment
      positions[filled:filled + take] = self._ramp[:take]
      filled += take
      offset = 0
      if filled == length:
        break
    self._advance(length - 1)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}

  def _advance(self, stride: int) -> None:
    while stride > 0 and self._documents:
      remaining = len(self._documents[0][1]) - self._offset
      if remaining > stride:
        self._offset += stride
        return
      stride -= remaining
      self._documents.popleft()
      self._offset = 0

  def get_state(self) -> dict:
    parent_state = self._documents[0][0] if self._documents else self._parent.get_state()
    return {"parent": parent_state, "offset": self._offset}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._documents.clear()
    self._offset = state["offset"]
    self._exhausted = False
    if self._offset:  # Re-read the document the next row starts in.
      self._fetch()


class PackIterDataset(grain.IterDataset):
  """Token-id arrays (one per document) -> rows {tokens, segment_ids, positions} of
  `seq_len + 1`. With `pad_final_row` (validation), a short last row is padded with segment 0;
  otherwise a finite parent's last partial row is dropped."""

  def __init__(self, parent: grain.IterDataset, seq_len: int, eos_id: int, *,
               pad_final_row: bool = False):
    super().__init__(parent)
    self._seq_len, self._eos_id, self._pad_final_row = seq_len, eos_id, pad_final_row

  def __iter__(self) -> _PackIterator:
    return _PackIterator(self._parent.__iter__(), self._seq_len + 1, self._eos_id,
                         self._pad_final_row)


def to_model_batch(rows: dict) -> dict:
  """Stacked rows (B, L + 1) -> the train step's (B, L) inputs, targets and masks.

  A target counts only when it continues its input's document: the first token of a
  document is never predicted from the previous document, and padding never counts.
  """
  tokens, segments = rows["tokens"], rows["segment_ids"]
  loss_mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] != 0)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "positions": rows["positions"][:, :-1], "segment_ids": segments[:, :-1],
          "loss_mask": loss_mask.astype(np.float32)}
