"""Which source each row of a stage's row stream comes from: weights as exact token shares.

A stage's global row stream (row g is row g % B of global batch g // B) is split among its
sources by weight. Weights are rounded to multiples of 1 / RESOLUTION and laid out in a fixed
pattern of RESOLUTION rows, repeated: each source's rows are spread evenly over the pattern
(source s's k-th row sits at time (k + 1/2) / share_s), so every batch holds its share to
within two rows and every RESOLUTION rows hold it exactly. Any row's source, and how many rows
of each source precede it, are closed-form, so processes agree on the mixture without
talking, and a resumed stage needs no saved counts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESOLUTION = 10_000  # Weights are realised to 1e-4.


class RowMixture:

  def __init__(self, weights: Sequence[float]):
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 1 or not len(weights) or (weights < 0).any() or weights.sum() <= 0:
      raise ValueError(f"mixture weights {weights.tolist()}: expected non-negative weights "
                       "with a positive sum")
    exact = weights / weights.sum() * RESOLUTION
    shares = np.floor(exact).astype(np.int64)
    # Largest remainders get the rows that rounding down left over (ties: the earlier source).
    leftover = RESOLUTION - int(shares.sum())
    shares[np.argsort(-(exact - shares), kind="stable")[:leftover]] += 1
    self.shares = shares  # Rows of each source per RESOLUTION rows.
    sources = np.repeat(np.arange(len(shares)), shares)
    times = np.concatenate([(np.arange(n) + 0.5) / n for n in shares if n])
    self._pattern = sources[np.lexsort((sources, times))]
    self._preceding = np.zeros((len(shares), RESOLUTION + 1), np.int64)
    self._preceding[:, 1:] = np.cumsum(self._pattern[None, :] == np.arange(len(shares))[:, None],
                                       axis=1)

  def sources(self, first: int, count: int) -> np.ndarray:
    """The source index of rows `first` .. `first + count - 1`."""
    return self._pattern[(first + np.arange(count)) % RESOLUTION]

  def rows_before(self, row: int) -> np.ndarray:
    """Rows of each source among rows 0 .. `row - 1`."""
    periods, offset = divmod(row, RESOLUTION)
    return periods * self.shares + self._preceding[:, offset]
