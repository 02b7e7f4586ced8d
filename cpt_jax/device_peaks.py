"""Peak dense bf16 FLOP/s of known accelerators (vendor datasheets): the denominator of MFU."""

import jax

# Matched in order, by substring of the device kind: a variant before its family's name.
_PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops_per_device() -> float | None:
  """None on CPUs and unknown devices: MFU is then not reported."""
  kind = jax.devices()[0].device_kind
  for name, peak in _PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None
