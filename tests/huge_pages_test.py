"""Tests for cpt_jax/huge_pages.py."""

import os
import subprocess
import sys

import pytest

from cpt_jax import huge_pages

_APPLIES = huge_pages.environment_with_huge_pages({}) is not None
_REEXEC_AND_REPORT = """
import os, sys
print("before", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"), flush=True)
from cpt_jax import huge_pages
huge_pages.reexec_with_huge_pages()
print("after", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"))
"""


def test_the_tunable_is_added_to_the_ones_already_set():
  if not _APPLIES:
    pytest.skip("no glibc or no transparent huge pages on this machine")
  environ = huge_pages.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2",
                                                    "HOME": "/home/x"})
  assert environ == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
                     "HOME": "/home/x"}


@pytest.mark.parametrize("environ", [{"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                     {"CPT_JAX_HUGE_PAGES": "0"}])
def test_a_choice_already_made_is_kept(environ):
  assert huge_pages.environment_with_huge_pages(environ) is None


def test_a_command_reexecutes_itself_once_with_the_same_pid_and_arguments():
  if not _APPLIES:
    pytest.skip("no glibc or no transparent huge pages on this machine")
  environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                               "CPT_JAX_HUGE_PAGES")}
  lines = subprocess.run([sys.executable, "-c", _REEXEC_AND_REPORT, "a", "--b=c"], env=environ,
                         capture_output=True, text=True, check=True).stdout.splitlines()
  pid = lines[0].split()[1]
  assert lines == [f"before {pid} ['a', '--b=c'] None",
                   f"before {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1",
                   f"after {pid} ['a', '--b=c'] glibc.malloc.hugetlb=1"]
