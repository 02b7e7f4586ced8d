"""Packing one source's documents into fixed-length training rows, a whole range at a time.

A source's token stream is its documents, each followed by EOS, concatenated in order
(training: a fresh permutation per epoch, endless; validation: file order, once). The stream is
cut into rows of `seq_len + 1` tokens with a stride of `seq_len`: row k is
stream[k L : k L + L + 1]. Each row yields `seq_len` (input, target) pairs and every stream
token is a target exactly once, so no real token is dropped or overwritten (Grain's
ConcatThenSplit BOS mode overwrites one). `segment_ids` number the documents within a row from
1 (0 is padding); `positions` restart at 0 for every document (and at the row's start for a
continued one): rotary is relative, so this is what attention would see anyway, and it never
crosses documents.

Rows are addressed by index, so any process can build any rows: the stream does not depend on
how many processes read it. `write_rows` packs a range of rows straight into a batch with a
few numpy operations (no per-row Python), which is what makes the pipeline fast. Documents are
read (and tokenized, for live sources) forward from a buffered window; when their lengths are
known (the token cache), a seek jumps straight to any position without reading what lies
before it.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

# A read takes at most DOCUMENTS_PER_READ documents (a stream may set another number)...
DOCUMENTS_PER_READ = 32  # ...which bounds the tokenizing a live source does at a time...
_READ_TOKENS = 1 << 16  # ...and about this many tokens beyond what a request needs, at most.
ROW_KEYS = ("tokens", "segment_ids", "positions")
LOOP_BOUNDARIES = 16  # Up to this many documents starting inside a batch's rows, loop.


class Documents(Protocol):
  """Random access to a split's documents as token ids (without EOS)."""
  lengths: np.ndarray | None  # Tokens per document, when known without reading them.

  def __len__(self) -> int: ...

  def read(self, indices: Sequence[int]) -> list[np.ndarray]: ...


class PackedStream:
  """Rows of one source's token stream; its state is the buffered window's first document."""

  def __init__(self, documents: Documents, seq_len: int, eos_id: int, *,
               shuffle_seed: int | None = None, endless: bool = True,
               documents_per_read: int = DOCUMENTS_PER_READ):
    if len(documents) == 0:
      raise ValueError("no documents to pack")
    self._documents, self._eos_id = documents, eos_id
    self._documents_per_read = documents_per_read
    self._stride, self._length = seq_len, seq_len + 1
    self._seed, self._endless = shuffle_seed, endless
    self._tokens_read, self._documents_read = 0, 0  # For the size of the next read.
    self._orders: dict[int, np.ndarray] = {}  # epoch -> document order (the last few).
    self._epoch_ends: dict[int, np.ndarray] = {}  # epoch -> cumulative stream ends.
    if documents.lengths is not None:  # Stream tokens per document (with EOS) and per epoch.
      self._sizes = documents.lengths + 1
      self._epoch_tokens = int(self._sizes.sum())
      self._tokens_read, self._documents_read = self._epoch_tokens, len(documents)
    self._restart(document=0, start=0)

  @property
  def row_length(self) -> int:
    return self._length

  # The buffered window. `_starts` holds the stream position of each buffered document and,
  # last, the end of the buffer; `_starts[0]` is document `_base` (ordinals count over
  # epochs) and the window's first live document is `_base + _front`. Dropped documents stay
  # buffered until the next read, so moving the window never copies.
  def _restart(self, document: int, start: int) -> None:
    self._base, self._front = document, 0
    self._starts = np.array([start], np.int64)
    self._buffer = np.zeros(0, np.int32)  # Tokens from stream position `_starts[0]`.

  def get_state(self) -> dict:
    return {"document": int(self._base + self._front), "start": int(self._starts[self._front])}

  def set_state(self, state: dict) -> None:
    self._restart(state["document"], state["start"])

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      if len(self._orders) > 2:
        self._orders.pop(min(self._orders))
      count = len(self._documents)
      if self._seed is None:
        self._orders[epoch] = np.arange(count)
      else:
        self._orders[epoch] = np.random.default_rng([self._seed, epoch]).permutation(count)
    return self._orders[epoch]

  def _read_count(self, until: int) -> int:
    """How many documents the next read takes: enough for stream position `until` plus
    _READ_TOKENS, by the mean document size so far (one, before any is known), so memory stays
    a small multiple of the largest document, however large."""
    if not self._documents_read:
      return 1
    wanted = max(until - int(self._starts[-1]), 0) + _READ_TOKENS
    mean = self._tokens_read / self._documents_read
    return int(min(self._documents_per_read, max(1, np.ceil(wanted / mean))))

  def _read_more(self, until: int) -> bool:
    """Appends the next documents to the window, towards stream position `until`; False at
    the end of a finite stream."""
    count = len(self._documents)
    ordinal = self._base + len(self._starts) - 1
    reads = self._read_count(until)
    if not self._endless:
      if ordinal >= count:
        return False
      ordinals = np.arange(ordinal, min(ordinal + reads, count))
    else:
      ordinals = np.arange(ordinal, ordinal + reads)
    epochs, within = np.divmod(ordinals, count)
    indices = [int(self._order(int(e))[i]) for e, i in zip(epochs, within)]
    eos = np.array([self._eos_id], np.int32)
    keep_from = self._starts[self._front]
    pieces, sizes = [self._buffer[keep_from - self._starts[0]:]], []
    for tokens in self._documents.read(indices):
      pieces += [np.asarray(tokens, np.int32), eos]
      sizes.append(len(tokens) + 1)
    if self._documents.lengths is None:
      self._tokens_read += sum(sizes)
      self._documents_read += len(sizes)
    self._buffer = np.concatenate(pieces)
    self._starts = np.concatenate([self._starts[self._front:],
                                   self._starts[-1] + np.cumsum(sizes, dtype=np.int64)])
    self._base += self._front
    self._front = 0
    return True

  def _locate(self, position: int) -> tuple[int, int]:
    """The ordinal and start of the document holding `position`, from known lengths."""
    count, epoch_tokens = len(self._documents), self._epoch_tokens
    epoch, offset = divmod(position, epoch_tokens)
    if not self._endless and epoch:
      return count, epoch_tokens
    if epoch not in self._epoch_ends:
      if len(self._epoch_ends) > 2:
        self._epoch_ends.pop(min(self._epoch_ends))
      self._epoch_ends[epoch] = np.cumsum(self._sizes[self._order(epoch)])
    ends = self._epoch_ends[epoch]
    index = int(np.searchsorted(ends, offset, side="right"))
    return epoch * count + index, epoch * epoch_tokens + (int(ends[index - 1]) if index else 0)

  def _seek(self, position: int) -> None:
    """Makes the window start at the document that holds stream `position`."""
    if position < self._starts[self._front]:
      if self._documents.lengths is None:
        self._restart(0, 0)  # Without lengths, only reading forward finds a position.
      else:
        self._restart(*self._locate(position))
    elif position >= self._starts[-1] and self._documents.lengths is not None:
      self._restart(*self._locate(position))
    while True:
      self._front = int(np.searchsorted(self._starts, position, side="right")) - 1
      if position < self._starts[-1] or not self._read_more(position + 1):
        return

  def rows(self, first: int, count: int) -> dict[str, np.ndarray]:
    """Rows `first` .. `first + count - 1` as {tokens, segment_ids, positions}: (count, L + 1).

    Past the end of a finite stream, rows are padding (segment 0)."""
    out = {key: np.empty((count, self._length), np.int32) for key in ROW_KEYS}
    self.write_rows(first, out, np.arange(count))
    return out

  def write_rows(self, first: int, out: dict[str, np.ndarray], at: np.ndarray) -> None:
    """Writes rows `first`, `first + 1`, ... into rows `at` of the arrays `out` (a batch
    mixed from several streams), saving a copy per row."""
    count = len(at)
    start = first * self._stride
    end = (first + count - 1) * self._stride + self._length
    self._seek(start)
    while self._starts[-1] < end and self._read_more(end):
      pass
    buffer, offset = self._buffer, start - self._starts[0]
    if len(buffer) < offset + end - start:  # Past the end of a finite stream: padding.
      buffer = np.concatenate([buffer, np.zeros(offset + end - start - len(buffer), np.int32)])
    # Row k starts `stride` tokens after row k - 1: a strided view of the buffer.
    out["tokens"][at] = np.ndarray((count, self._length), np.int32, buffer, int(offset) * 4,
                                   (self._stride * 4, 4))
    ramp = np.arange(self._length, dtype=np.int32)
    out["segment_ids"][at] = 1
    out["positions"][at] = ramp
    # Documents that start inside the rows (each at column 1..L of exactly one row) begin a
    # new segment there and restart its positions.
    inside = self._starts[self._front + 1:-1]
    inside = inside[:np.searchsorted(inside, end)]
    rows = (inside - 1 - start) // self._stride
    columns = inside - start - rows * self._stride
    if len(inside) <= LOOP_BOUNDARIES:  # Few (long documents): slices are cheapest.
      for row, column in zip(at[rows].tolist(), columns.tolist()):
        out["segment_ids"][row, column:] += 1
        out["positions"][row, column:] = ramp[:self._length - column]
    else:  # Many (short documents): a scatter and a scan over the rows they fall in.
      first_in_row = np.concatenate([[True], rows[1:] != rows[:-1]])  # `rows` is sorted.
      hit, local_rows = rows[first_in_row], np.cumsum(first_in_row) - 1
      new_segment = np.zeros((len(hit), self._length), np.int32)
      new_segment[local_rows, columns] = 1
      restart = np.zeros((len(hit), self._length), np.int32)
      restart[local_rows, columns] = columns
      out["segment_ids"][at[hit]] = 1 + np.cumsum(new_segment, axis=1, dtype=np.int32)
      out["positions"][at[hit]] = ramp - np.maximum.accumulate(restart, axis=1)
    if end > self._starts[-1]:
      real = (start + self._stride * np.arange(count)[:, None] + ramp) < self._starts[-1]
      out["segment_ids"][at] *= real
      out["positions"][at] *= real


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
