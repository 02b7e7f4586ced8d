"""Test set-up: 8 emulated CPU devices, fixed before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the flags above)

# Compiled programs are reused across tests and end-to-end subprocesses.
_CACHE_DIR = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax_compilation")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
