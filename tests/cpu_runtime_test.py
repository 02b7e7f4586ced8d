"""Tests for cpt_jax/cpu_runtime.py."""

import os
import platform
import subprocess
import sys

import pytest

from cpt_jax import cpu_runtime

_HUGE_PAGES_APPLY = cpu_runtime.environment_with_huge_pages({}) is not None
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
  flags = cpu_runtime.xla_flags_with_onednn({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert flags == " ".join(["--xla_force_host_platform_device_count=2",
                            *cpu_runtime.ONEDNN_FLAGS])
  monkeypatch.setattr(cpu_runtime, "_jaxlib_version", lambda: (0, 8, 0))  # Aborts on them.
  assert cpu_runtime.xla_flags_with_onednn({"XLA_FLAGS": "--a=1"}) == "--a=1"


@pytest.mark.parametrize("flags", ["--xla_cpu_use_onednn=false",
                                   "--xla_cpu_experimental_ynn_fusion_type=dot"])
def test_a_library_choice_in_xla_flags_is_kept(flags):
  assert cpu_runtime.xla_flags_with_onednn({"XLA_FLAGS": flags}) == flags


def test_the_tunable_is_added_to_the_ones_already_set():
  if not _HUGE_PAGES_APPLY:
    pytest.skip("no glibc or no transparent huge pages on this machine")
  environ = cpu_runtime.environment_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/home/x"})
  assert environ == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
                     "HOME": "/home/x"}


@pytest.mark.parametrize("environ", [{"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                     {"CPT_JAX_HUGE_PAGES": "0"}])
def test_a_huge_page_choice_already_made_is_kept(environ):
  assert cpu_runtime.environment_with_huge_pages(environ) is None


@pytest.mark.parametrize("onednn", [False, True], ids=["default", "CPT_JAX_ONEDNN=1"])
def test_a_command_reexecutes_itself_once_with_the_same_pid_and_arguments(onednn):
  if not _HUGE_PAGES_APPLY or (onednn and not _ONEDNN_APPLIES):
    pytest.skip("no huge pages (or oneDNN flags) on this machine")
  environ = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", "CPT_JAX_HUGE_PAGES", "XLA_FLAGS", "CPT_JAX_ONEDNN")}
  environ.update({"CPT_JAX_ONEDNN": "1"} if onednn else {})
  lines = subprocess.run([sys.executable, "-c", _CONFIGURE_AND_REPORT, "a", "--b=c"],
                         env=environ, capture_output=True, text=True,
                         check=True).stdout.splitlines()
  pid = lines[0].split()[1]
  flags = " ".join(cpu_runtime.ONEDNN_FLAGS) if onednn else None
  assert lines == [f"before {pid} ['a', '--b=c'] None None",
                   f"before {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1 {flags}",
                   f"after {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1 {flags}"]
