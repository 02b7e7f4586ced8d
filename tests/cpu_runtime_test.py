"""Tests for cpt_jax/cpu_runtime.py."""

import os
import platform
import subprocess
import sys

import pytest

from cpt_jax import cpu_runtime

_HUGE_PAGES_APPLY = "glibc.malloc.hugetlb" in cpu_runtime.tunables_to_add({})
_CPU_ONLY = {"JAX_PLATFORMS": "cpu"}  # Memory reuse applies whatever plugins are installed.
_ALL_TUNABLES = ":".join(f"{name}={value}" for name, value in
                         {**cpu_runtime.HUGE_PAGES, **cpu_runtime.MEMORY_REUSE}.items())
_ONEDNN_APPLIES = cpu_runtime.xla_flags_with_onednn({}) != ""
_CONFIGURE_AND_REPORT = """
import os, sys
def report(when):
  print(when, os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"),
        os.environ.get("XLA_FLAGS"), flush=True)
report("before")
from cpt_jax import cpu_runtime
cpu_runtime.configure()
report("after")
"""


def test_onednn_flags_are_added_on_x86_linux_from_jaxlib_0_8_1(monkeypatch):
  if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
    pytest.skip("oneDNN flags are for x86-64 Linux")
  flags = cpu_runtime.xla_flags_with_onednn(
      {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert flags == " ".join(["--xla_force_host_platform_device_count=2",
                            *cpu_runtime.ONEDNN_FLAGS])
  monkeypatch.setattr(cpu_runtime, "_jaxlib_version", lambda: (0, 8, 0))  # Aborts on them.
  assert cpu_runtime.xla_flags_with_onednn({"XLA_FLAGS": "--a=1"}) == "--a=1"


@pytest.mark.parametrize("flags", ["--xla_cpu_use_onednn=false",
                                   "--xla_cpu_experimental_ynn_fusion_type=dot"])
def test_a_library_choice_in_xla_flags_is_kept(flags):
  assert cpu_runtime.xla_flags_with_onednn({"XLA_FLAGS": flags}) == flags


def test_the_tunables_are_added_to_the_ones_already_set():
  if not _HUGE_PAGES_APPLY:
    pytest.skip("no glibc or no transparent huge pages on this machine")
  environ = cpu_runtime.environment_with_tunables(
      {"GLIBC_TUNABLES": "glibc.rtld.nns=8", "HOME": "/home/x", **_CPU_ONLY})
  assert environ == {"GLIBC_TUNABLES": f"glibc.rtld.nns=8:{_ALL_TUNABLES}", "HOME": "/home/x",
                     **_CPU_ONLY}


@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0", "CPT_JAX_HUGE_PAGES": "0"},
    {"CPT_JAX_HUGE_PAGES": "0", "CPT_JAX_REUSE_MEMORY": "0"}])
def test_an_allocator_choice_already_made_is_kept(environ):
  assert cpu_runtime.environment_with_tunables({**environ, **_CPU_ONLY}) is None


def test_a_user_choice_keeps_out_only_its_own_setting():
  if not _HUGE_PAGES_APPLY:
    pytest.skip("no glibc or no transparent huge pages on this machine")
  assert cpu_runtime.tunables_to_add(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4", **_CPU_ONLY}) == cpu_runtime.HUGE_PAGES
  assert cpu_runtime.tunables_to_add(
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", **_CPU_ONLY}) == cpu_runtime.MEMORY_REUSE


@pytest.mark.parametrize("platforms, plugins, libtpu, on_cpu", [
    ("cpu", ["xla_cuda12"], True, True),  # JAX_PLATFORMS decides.
    ("cuda", [], False, False),
    ("tpu,cpu", [], False, False),
    ("", [], False, True),
    ("", ["xla_cuda12"], False, False),
    ("", [], True, False)])
def test_memory_is_kept_for_reuse_only_where_xla_runs_on_the_cpu(monkeypatch, platforms,
                                                                  plugins, libtpu, on_cpu):
  monkeypatch.setattr(cpu_runtime.importlib.metadata, "entry_points",
                      lambda group: [f"{name} = plugin" for name in plugins])
  monkeypatch.setattr(cpu_runtime.importlib.util, "find_spec",
                      lambda name: object() if libtpu and name == "libtpu" else None)
  added = cpu_runtime.tunables_to_add({"JAX_PLATFORMS": platforms})
  assert (cpu_runtime.MEMORY_REUSE.items() <= added.items()) == on_cpu


@pytest.mark.parametrize("onednn", [False, True], ids=["default", "CPT_JAX_ONEDNN=1"])
def test_a_command_reexecutes_itself_once_with_the_same_pid_and_arguments(onednn):
  if not _HUGE_PAGES_APPLY or (onednn and not _ONEDNN_APPLIES):
    pytest.skip("no huge pages (or oneDNN flags) on this machine")
  environ = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", "CPT_JAX_HUGE_PAGES", "CPT_JAX_REUSE_MEMORY",
                          "XLA_FLAGS", "CPT_JAX_ONEDNN")}
  environ.update({"CPT_JAX_ONEDNN": "1"} if onednn else {}, **_CPU_ONLY)
  lines = subprocess.run([sys.executable, "-c", _CONFIGURE_AND_REPORT, "a", "--b=c"],
                         env=environ, capture_output=True, text=True,
                         check=True).stdout.splitlines()
  pid = lines[0].split()[1]
  flags = " ".join(cpu_runtime.ONEDNN_FLAGS) if onednn else None
  assert lines == [f"before {pid} ['a', '--b=c'] None None",
                   f"before {pid} ['a', '--b=c'] {_ALL_TUNABLES} {flags}",
                   f"after {pid} ['a', '--b=c'] {_ALL_TUNABLES} {flags}"]


_FAULTS_PER_EXECUTION = """
import resource, statistics
from cpt_jax import cpu_runtime
cpu_runtime.configure()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 64))
product = jax.jit(lambda x: (x @ x.T) @ x)  # A 64 MiB temporary in every execution.
product(x).block_until_ready()
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  product(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def test_an_executions_temporaries_reuse_the_memory_the_last_one_freed():
  if not cpu_runtime.tunables_to_add(_CPU_ONLY):
    pytest.skip("not glibc")

  def median_faults_per_execution(**settings):
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return float(subprocess.run([sys.executable, "-c", _FAULTS_PER_EXECUTION],
                                env={**environ, **_CPU_ONLY, **settings}, capture_output=True,
                                text=True, check=True).stdout.split()[-1])

  # Mapped afresh, the 64 MiB fault in as at least 32 huge pages (16,384 small ones). Reused,
  # they fault in only when an execution allocates before the last one has freed (the median
  # hides those few; the process then holds one more block).
  assert median_faults_per_execution(CPT_JAX_REUSE_MEMORY="0") >= 32
  assert median_faults_per_execution() < 8


def test_a_command_without_steps_gets_huge_pages_only():
  if not _HUGE_PAGES_APPLY:
    pytest.skip("no glibc or no transparent huge pages on this machine")
  assert cpu_runtime.tunables_to_add(_CPU_ONLY, reuse_memory=False) == cpu_runtime.HUGE_PAGES
