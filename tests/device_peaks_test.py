"""Tests for cpt_jax/device_peaks.py: the peak that MFU divides by, by device kind."""

import types

import jax
import pytest

from cpt_jax import device_peaks


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),  # Not the SXM part's peak, though its name holds "H100".
    ("NVIDIA H200", 989e12),
    ("TPU v5 lite", 197e12),
    ("cpu", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_the_peak_is_the_datasheets_for_the_device_kind(kind, peak, monkeypatch):
  monkeypatch.setattr(jax, "devices", lambda: [types.SimpleNamespace(device_kind=kind)])
  assert device_peaks.peak_flops_per_device() == peak
