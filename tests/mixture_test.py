"""Tests for cpt_jax/mixture.py."""

import numpy as np
import pytest

from cpt_jax import mixture


@pytest.mark.parametrize("weights", [[0.95, 0.05], [0.75, 0.25], [1 / 3, 1 / 3, 1 / 3], [1.0]])
def test_every_batch_holds_its_share_to_within_two_rows(weights):
  mix = mixture.RowMixture(weights)
  sources = mix.sources(0, 32 * 400).reshape(400, 32)
  for index, weight in enumerate(weights):
    per_batch = (sources == index).sum(axis=1)
    assert np.abs(per_batch - weight * 32).max() < 2


def test_rows_before_counts_the_pattern_at_any_row():
  mix = mixture.RowMixture([0.6, 0.3, 0.1])
  sources = mix.sources(0, 25_000)
  for row in (0, 1, 17, 9_999, 10_000, 10_001, 24_999):
    np.testing.assert_array_equal(mix.rows_before(row), np.bincount(sources[:row], minlength=3))


def test_sources_are_random_access():
  mix = mixture.RowMixture([0.95, 0.05])
  np.testing.assert_array_equal(mix.sources(12_345, 100), mix.sources(0, 12_445)[12_345:])


def test_bad_weights_are_refused():
  with pytest.raises(ValueError, match="non-negative"):
    mixture.RowMixture([0.5, -0.5])
